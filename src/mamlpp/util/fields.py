"""Checked dataclass fields: a value against its annotation and the bounds in its field metadata.

A configuration dataclass states each field's range once, beside its default::

    num_inner_steps: int = field(default=5, metadata={"min": 1})
    bn_momentum: float = field(default=0.1, metadata={"gt": 0, "max": 1})

Bounds: ``min`` (>=), ``gt`` (>), ``max`` (<=), ``lt`` (<); ``finite`` also refuses inf (NaN
is outside every bound); ``why`` is said in brackets after the range. :func:`check_fields`
checks every field of an instance, :func:`check_field` one value (the configuration readers call
it on TOML values). Errors are one line naming the key: ``meta.num_inner_steps must be >= 1, got
0``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from mamlpp.errors import ConfigError


@functools.cache
def field_types(cls: type) -> Mapping[str, Any]:
    """The resolved annotation of every field of the dataclass ``cls``, by field name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_bounds(cls: type) -> Mapping[str, Mapping[str, Any]]:
    """The metadata (the range) of every field of the dataclass ``cls``, by field name."""
    return {f.name: f.metadata for f in dataclasses.fields(cls)}


# How a type reads in an error message: to a Python caller, and to someone writing TOML/--set.
_TYPE_WORDS: dict[type, tuple[str, str]] = {
    bool: ("bool", "true or false"),
    int: ("int", "an integer"),
    float: ("float", "a number"),
    str: ("str", "a string"),
}


def check_field(
    key: str,
    value: Any,
    hint: Any,
    *,
    toml: bool = False,
    bounds: Mapping[str, Any] | None = None,
) -> Any:
    """Check ``value`` against the field annotation ``hint`` and then ``bounds`` (a field's
    metadata, see the module doc); raise a one-line ConfigError naming ``key``. Returns the
    value, an int given for a float converted to float.

    Understood annotations: ``bool``, ``int``, ``float`` (an int is accepted), ``str``,
    ``Literal[...]`` and ``X | None``. ``bool`` is never taken for a number, nor a number for a
    ``bool``. With ``toml`` (values read from TOML or ``--set``) the messages use TOML's words
    (``true or false``, ``an integer``, ...), the string ``"none"`` means None (TOML has no
    null), and a float must be finite; a Python caller's values get Python's type names.
    """
    value = _check_type(key, value, hint, toml)
    if bounds and value is not None:
        _check_bounds(key, value, bounds, optional=_is_optional(hint), toml=toml)
    return value


def check_fields(instance: Any, prefix: str = "") -> None:
    """:func:`check_field` on every field of the dataclass ``instance``, keys ``prefix + name``;
    a field that holds a dataclass (a section of a configuration) is checked field by field,
    its keys ``prefix + name + "."``."""
    cls: type = type(instance)
    types_ = field_types(cls)
    for f in dataclasses.fields(instance):
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_fields(value, f"{prefix}{f.name}.")
        else:
            check_field(prefix + f.name, value, types_[f.name], bounds=f.metadata)


def _literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The choices of ``Literal[...]``, or of a union of Literals (``Literal["auto"] |
    Execution``: a setting that adds choices to a type named elsewhere); None otherwise."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if all(typing.get_origin(a) is Literal for a in args):
            return tuple(c for a in args for c in typing.get_args(a))
    return None


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _check_type(key: str, value: Any, hint: Any, toml: bool) -> Any:
    origin = typing.get_origin(hint)
    literals = _literal_choices(hint)
    if literals is not None:
        choices = literals
        if value not in choices:
            options = ", ".join(repr(c) for c in choices)
            raise ConfigError(f"{key} must be one of {options}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None or (toml and isinstance(value, str) and value.lower() == "none"):
            return None
        return _check_type(key, value, args[0], toml)
    if hint not in _TYPE_WORDS:
        raise TypeError(f"unsupported config field type {hint!r} for {key}")  # programming error
    expected = _TYPE_WORDS[hint][1 if toml else 0]
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint)
    if not ok:
        raise ConfigError(f"{key} must be {expected}, got {value!r}")
    if hint is float:
        if toml and not math.isfinite(value):
            raise ConfigError(f"{key} must be finite, got {value!r}")
        return float(value)
    return value


def _check_bounds(
    key: str, value: Any, bounds: Mapping[str, Any], optional: bool, toml: bool = False
) -> None:
    low = ("min", bounds["min"]) if "min" in bounds else ("gt", bounds.get("gt"))
    high = ("max", bounds["max"]) if "max" in bounds else ("lt", bounds.get("lt"))
    # Written as "not inside" so that NaN, which compares False with everything, is outside.
    inside = (
        (low[1] is None or (value >= low[1] if low[0] == "min" else value > low[1]))
        and (high[1] is None or (value <= high[1] if high[0] == "max" else value < high[1]))
        and (not bounds.get("finite") or math.isfinite(value))
    )
    if inside:
        return
    if low[1] is not None and high[1] is not None:
        if low[0] == "gt" and high[0] == "lt":
            rule = f"be between {low[1]} and {high[1]}"
        else:
            left, right = "[" if low[0] == "min" else "(", "]" if high[0] == "max" else ")"
            rule = f"lie in {left}{low[1]}, {high[1]}{right}"
    elif low[1] is not None:
        rule = f"be {'>=' if low[0] == 'min' else '>'} {low[1]}"
    else:
        rule = f"be {'<=' if high[0] == 'max' else '<'} {high[1]}"
    if optional:  # spelled as the caller writes it: "none" in TOML and --set, None in Python
        rule += ', or "none"' if toml else " or None"
        rule += f" for {bounds['none']}" if "none" in bounds else ""
    why = f" ({bounds['why']})" if "why" in bounds else ""
    raise ConfigError(f"{key} must {rule}{why}, got {value}")

"""Each configuration range is stated once, in its field's metadata, and read by one checker
(mamlpp.util.fields): every bounded field of every section is refused just outside its range,
with one line naming its TOML key, from a Python caller and from --set alike."""

from __future__ import annotations

import dataclasses
import math

import pytest

from mamlpp.core.config import MetaConfig
from mamlpp.errors import ConfigError
from mamlpp.run.experiment import SECTIONS, ExperimentConfig, validate
from mamlpp.run.presets import resolve_config
from mamlpp.util.fields import check_field
from mamlpp.util.format import did_you_mean


def _bounded() -> list[tuple[str, str, dict]]:
    return [
        (section, f.name, dict(f.metadata))
        for section, cls in SECTIONS.items()
        for f in dataclasses.fields(cls)
        if f.metadata and not (section == "meta" and f.name == "total_epochs")
    ]


def _just_outside(bounds: dict, hint: type) -> float:
    if "min" in bounds:
        return bounds["min"] - 1
    step = 1 if hint is int else 0.5
    return bounds["gt"] - step if "gt" in bounds else bounds["max"] + step


def test_the_sections_state_their_ranges() -> None:
    keys = {f"{s}.{n}" for s, n, _ in _bounded()}
    assert {"data.ways", "meta.num_inner_steps", "train.epochs", "eval.top_k"} <= keys
    assert len(keys) >= 25


@pytest.mark.parametrize(("section", "name", "bounds"), _bounded(), ids=lambda v: str(v))
def test_every_bounded_field_is_refused_outside_its_range(section, name, bounds) -> None:
    hint = type(getattr(getattr(ExperimentConfig(), section), name) or 1.0)
    bad = _just_outside(bounds, hint)
    with pytest.raises(ConfigError) as info:
        resolve_config("quickstart", None, [f"{section}.{name}={bad}"])
    message = str(info.value)
    assert message.startswith(f"{section}.{name} must ") and message.endswith(f", got {bad}")
    assert "\n" not in message
    if section != "meta":  # a Python caller's config (dataclasses.replace) gets the same line
        config = ExperimentConfig()
        changed = dataclasses.replace(getattr(config, section), **{name: bad})
        with pytest.raises(ConfigError, match=f"^{section}.{name} must "):
            validate(dataclasses.replace(config, **{section: changed}))


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (0, {"min": 1}, "k must be >= 1, got 0"),
        (1, {"min": 2, "why": "a task needs two classes"}, "k must be >= 2 (a task needs two"),
        (0.0, {"gt": 0}, "k must be > 0, got 0.0"),
        (1.5, {"gt": 0, "max": 1}, "k must lie in (0, 1], got 1.5"),
        (1.0, {"gt": 0, "lt": 1}, "k must be between 0 and 1, got 1.0"),
        (math.nan, {"gt": 0}, "k must be > 0, got nan"),
        (math.inf, {"gt": 0, "finite": True}, "k must be > 0, got inf"),
    ],
)
def test_bound_messages(value, bounds, message) -> None:
    with pytest.raises(ConfigError) as info:
        check_field("k", value, float, bounds=bounds)
    assert str(info.value).startswith(message)


def test_an_optional_bounded_field_accepts_none() -> None:
    assert check_field("k", None, float | None, bounds={"gt": 0}) is None
    with pytest.raises(ConfigError, match=r"^k must be > 0 or None, got -1.0$"):
        check_field("k", -1.0, float | None, bounds={"gt": 0})


def test_meta_config_messages_name_bare_fields_for_python_callers() -> None:
    with pytest.raises(ConfigError, match=r"^num_inner_steps must be >= 1, got 0$"):
        MetaConfig(num_inner_steps=0)
    with pytest.raises(ConfigError, match=r"^first_order_epochs must be >= 0 \(0 = second"):
        MetaConfig(first_order_epochs=-1)
    with pytest.raises(ConfigError, match=r"^meta_lr must be > 0, got nan$"):
        MetaConfig(meta_lr=math.nan)  # NaN is outside every range


def test_one_did_you_mean() -> None:
    assert did_you_mean("wayz", ["ways", "shots"]) == " (did you mean 'ways'?)"
    assert did_you_mean("zzz", ["ways", "shots"]) == ""
    spelled = {"miniimagenet": "mini-imagenet"}
    assert did_you_mean("miniimagnet", spelled, shown=spelled) == " (did you mean 'mini-imagenet'?)"

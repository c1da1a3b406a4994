"""Package attributes loaded on first use (PEP 562), written once for the packages that need it
(``mamlpp`` and ``mamlpp.data``): importing them, and so ``mamlpp --help``, stays free of torch."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(
    package: str, exports: Mapping[str, str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a public name to the module
    that defines it; a loaded value is stored in ``namespace`` (the package's globals), so later
    look-ups do not come back here."""

    def getattr_(name: str) -> Any:
        module = exports.get(name)
        if module is None:  # a subpackage, as `mamlpp.data` after a plain `import mamlpp`
            if name.startswith("_") or importlib.util.find_spec(f"{package}.{name}") is None:
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            return importlib.import_module(f"{package}.{name}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(namespace.get("__all__", exports))

    return getattr_, dir_

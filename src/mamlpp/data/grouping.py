"""How a folder of the user's images groups its classes and where each image comes from
(``data.groups``, ``data.sources``, ``data.source_pattern``; the layouts are in
:mod:`mamlpp.data.folder`). The rules are written here once, without torch, so that the
``[data]`` section of a configuration checks them before anything is loaded."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mamlpp.errors import DataError


@dataclass(frozen=True)
class Grouping:
    """How a folder's classes are grouped and where each image comes from (the module docstring
    gives the layouts); ``Grouping("none", "none", "")`` is the plain folder."""

    groups: str = "none"  # "none" | "folders"
    sources: str = "none"  # "none" | "subfolders" | "pattern"
    source_pattern: str = ""  # sources="pattern": a regex whose one group is the source

    def __post_init__(self) -> None:
        if self.groups not in ("none", "folders"):
            raise DataError(f'data.groups must be "none" or "folders", got {self.groups!r}')
        if self.sources not in ("none", "subfolders", "pattern"):
            raise DataError(
                f'data.sources must be "none", "subfolders" or "pattern", got {self.sources!r}'
            )
        if self.sources != "pattern":
            if self.source_pattern:
                raise DataError(
                    'data.source_pattern applies to data.sources="pattern" only, got '
                    f"data.sources={self.sources!r}"
                )
            return
        if not self.source_pattern:
            raise DataError(
                'data.sources="pattern" needs data.source_pattern, a regex whose one group is '
                'the source in each file name (e.g. "^(.+?)_": the text before the first "_")'
            )
        try:
            groups = re.compile(self.source_pattern).groups
        except re.error as error:
            raise DataError(
                f"data.source_pattern {self.source_pattern!r} is not a regex: {error}"
            ) from None
        if groups != 1:
            raise DataError(
                "data.source_pattern needs exactly one group (the source), "
                f"{self.source_pattern!r} has {groups}"
            )

    def describe(self) -> str:
        """``", groups: folders, sources: subfolders"`` (the parts in use; "" when plain)."""
        parts = [f"groups: {self.groups}"] if self.groups != "none" else []
        if self.sources == "pattern":
            parts.append(f"sources: pattern {self.source_pattern!r}")
        elif self.sources != "none":
            parts.append(f"sources: {self.sources}")
        return "".join(f", {part}" for part in parts)

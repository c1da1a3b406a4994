"""Text formatting shared by reports, tables and messages: durations, percentages, Markdown.

One place for each rule, so every table and message of the project writes a number the same way.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping, Sequence


def duration(seconds: float | None) -> str:
    """``42 s``, ``12.3 min`` or ``1.52 h``; ``-`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def percent(fraction: float | None, digits: int = 2) -> str:
    """A fraction as a percentage without the sign (``0.9123`` -> ``91.23``); ``-`` if unknown."""
    if fraction is None or not math.isfinite(fraction):
        return "-"
    return f"{100 * fraction:.{digits}f}"


def file_size(size: int) -> str:
    """Bytes as ``812 bytes``, ``43.2 KB``, ``12.5 MB`` or ``1.20 GB`` (decimal units): a small
    file never shows as ``0.0 MB``."""
    if size < 1000:
        return plural(size, "byte")
    for unit, scale, digits in (("KB", 1e3, 1), ("MB", 1e6, 1), ("GB", 1e9, 2)):
        if size < 1000 * scale or unit == "GB":
            return f"{size / scale:.{digits}f} {unit}"
    raise AssertionError("unreachable")


def plural(count: int, noun: str) -> str:
    """``1 checkpoint``, ``3 checkpoints``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def columns(rows: Sequence[Sequence[str]], gap: int = 2) -> list[str]:
    """Rows of cells as lines whose columns line up: each column but the last is as wide as its
    longest cell (so no cell pushes the rest of its line out of place), then ``gap`` spaces."""
    widths = [
        max(len(row[i]) for row in rows if len(row) > i)
        for i in range(max(map(len, rows), default=0))
    ]
    pad = " " * gap
    return [
        pad.join(cell if i == len(row) - 1 else cell.ljust(widths[i]) for i, cell in enumerate(row))
        for row in rows
    ]


def did_you_mean(name: str, options: Iterable[str], shown: Mapping[str, str] | None = None) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``name``, or ``""`` when none is close.
    ``shown`` maps an option to the name to suggest (an alias to its dataset, say)."""
    close = difflib.get_close_matches(name, list(options), n=1)
    if not close:
        return ""
    return f" (did you mean {(shown or {}).get(close[0], close[0])!r}?)"

"""A tiny dependency-free progress bar for downloads, preprocessing and training loops.

On a terminal it redraws one line with ``\\r`` at most ~10 times a second; when the stream is not
a terminal (CI logs, files) it writes a plain line only every ``log_every`` seconds and at the
end, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_UNITS = ["", "k", "M", "G", "T"]


def format_amount(value: float, unit: str) -> str:
    """``1536, "B"`` -> ``"1.5 kB"``; other units print as plain counts (``"37 it"``)."""
    if unit != "B":
        return f"{value:.0f} {unit}" if value == int(value) else f"{value:.1f} {unit}"
    scale = 0
    while abs(value) >= 1000 and scale < len(_UNITS) - 1:
        value /= 1000
        scale += 1
    return f"{value:.0f} B" if scale == 0 else f"{value:.1f} {_UNITS[scale]}B"


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """``Progress(total, desc)``; ``update(n, **postfix)``; ``close()`` (also a context manager).

    ``total`` may be None (unknown size: no percentage or ETA). Postfix values are shown as
    ``key=value`` after the rate, e.g. ``update(1, loss=0.31)``.
    """

    def __init__(
        self,
        total: float | None,
        desc: str = "",
        unit: str = "it",
        *,
        file: TextIO | None = None,
        enabled: bool = True,
        initial: float = 0,
        interactive: bool | None = None,
        log_every: float = 30.0,
        clock=time.monotonic,
    ) -> None:
        self.total = total
        self.desc = desc
        self.unit = unit
        self.file = file if file is not None else sys.stderr
        self.enabled = enabled
        self.count = initial
        self.postfix: dict[str, object] = {}
        self._clock = clock
        self._start = clock()
        self._start_count = initial  # rate counts only this session's progress (resumed downloads)
        self._closed = False
        if interactive is None:
            isatty = getattr(self.file, "isatty", None)
            interactive = bool(isatty and isatty())
        self.interactive = interactive
        self._min_interval = 0.1 if interactive else log_every
        # A terminal shows the bar at once; a log gets its first line after log_every seconds,
        # so short tasks write just the final line.
        self._last_draw = float("-inf") if interactive else self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1, **postfix: object) -> None:
        self.count += n
        if postfix:
            self.postfix.update(postfix)
        now = self._clock()
        if self.enabled and now - self._last_draw >= self._min_interval:
            self._draw(now, final=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.enabled:
            self._draw(self._clock(), final=True)

    def line(self, now: float | None = None) -> str:
        """The current status text (without ``\\r`` or newline)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._start, 1e-9)
        rate = (self.count - self._start_count) / elapsed
        parts = [self.desc] if self.desc else []
        if self.total:
            fraction = min(self.count / self.total, 1.0)
            parts.append(f"{100 * fraction:3.0f}%")
            if self.interactive:
                width = 20
                filled = int(width * fraction)
                parts.append("[" + "#" * filled + "." * (width - filled) + "]")
            parts.append(
                f"{format_amount(self.count, self.unit)}/{format_amount(self.total, self.unit)}"
            )
        else:
            parts.append(format_amount(self.count, self.unit))
        parts.append(f"{format_amount(rate, self.unit)}/s")
        if self.total and rate > 0 and self.count < self.total:
            parts.append(f"ETA {format_duration((self.total - self.count) / rate)}")
        else:
            parts.append(f"in {format_duration(elapsed)}")
        parts.extend(f"{key}={_short(value)}" for key, value in self.postfix.items())
        return " ".join(parts)

    def _draw(self, now: float, final: bool) -> None:
        self._last_draw = now
        text = self.line(now)
        if self.interactive:
            # Pad so a shorter line fully overwrites the previous one.
            self.file.write("\r" + text.ljust(getattr(self, "_width", 0)) + ("\n" if final else ""))
            self._width = len(text)
        else:
            self.file.write(text + "\n")
        self.file.flush()


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)

"""Progress bars for downloads, preprocessing and training: tqdm, configured in one place.

On a terminal the bar redraws in place up to ten times a second. When the stream is not a
terminal (CI logs, files, pipes) it is drawn in plain ASCII at most every
:data:`LOG_INTERVAL` seconds and once at the end, so a log stays short and ends with the
final state (100%, total time, rate).
"""

from __future__ import annotations

import sys
from typing import TextIO

from tqdm import tqdm

LOG_INTERVAL = 30.0  # seconds between two bar lines when the output is not a terminal


def progress_bar(
    total: float | None,
    desc: str,
    unit: str = "it",
    *,
    initial: float = 0,
    enabled: bool = True,
    file: TextIO | None = None,
) -> tqdm:
    """A tqdm bar on ``file`` (default stderr); ``unit="B"`` counts bytes as kB, MB, ..."""
    stream = file if file is not None else sys.stderr
    interactive = bool(getattr(stream, "isatty", lambda: False)())
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        initial=initial,
        disable=not enabled,
        file=stream,
        unit_scale=unit == "B",
        mininterval=0.1 if interactive else LOG_INTERVAL,
        ascii=not interactive,
        dynamic_ncols=interactive,
    )

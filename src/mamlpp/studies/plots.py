"""Line charts and heatmaps with matplotlib (the optional ``plot`` extra), for reports.

Every chart has a title, labelled axes and a legend or a colour bar. Line charts switch the y axis
to a log scale when the values span more than :data:`LOG_SPAN` (a diverged run at loss 1e6
would otherwise flatten every other run onto the floor); series with identical values are drawn
once with a joint label (MSL weights of the non-final steps are equal by construction).
Epochs are 1-based everywhere, as in the files and messages of the project.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mamlpp.errors import MamlppError

LOG_SPAN = 1e3  # max/min of the positive values above which a line chart uses a log y axis


@dataclass(frozen=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    dashed: bool = False
    markers: bool = False


def _pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or a one-line error naming the extra."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MamlppError(
            "plots need matplotlib, which is not installed: pip install 'mamlpp[plot]' "
            "(or pip install matplotlib)"
        ) from None
    return plt


def needs_log_axis(series: Sequence[Series]) -> bool:
    """True when all finite values are positive and span more than :data:`LOG_SPAN`."""
    values = [y for s in series for y in s.ys if math.isfinite(y)]
    return bool(values) and min(values) > 0 and max(values) / min(values) > LOG_SPAN


def merge_equal(series: Sequence[Series], joint_label: str) -> list[Series]:
    """Series with equal values drawn once: ``joint_label.format(first, last)`` for a group
    of consecutive ones (labels must end in their 1-based number, e.g. ``step 3``)."""
    merged: list[list[Series]] = []
    for item in series:
        if merged and list(merged[-1][0].ys) == list(item.ys):
            merged[-1].append(item)
        else:
            merged.append([item])
    out = []
    for group in merged:
        if len(group) == 1:
            out.append(group[0])
            continue
        first, last = group[0].label.split()[-1], group[-1].label.split()[-1]
        out.append(Series(joint_label.format(first, last), group[0].xs, group[0].ys, markers=True))
    return out


def line_figure(series: Sequence[Series], title: str, xlabel: str, ylabel: str) -> Any:
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5), dpi=110)
    for item in series:  # an empty series (a run that failed at once) still gets its legend entry
        style = "--" if item.dashed else "-"
        marker = "o" if item.markers and len(item.xs) <= 40 else None
        axes.plot(item.xs, item.ys, style, marker=marker, markersize=3, label=item.label)
    if all(float(x).is_integer() for item in series for x in item.xs):  # epochs: 1, 2, 3
        from matplotlib.ticker import MaxNLocator

        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if needs_log_axis(series):
        axes.set_yscale("log")
        ylabel += " (log scale)"
    if not any(item.xs for item in series):
        axes.text(0.5, 0.5, "no data", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, alpha=0.3)
    if series:
        axes.legend(fontsize="small", loc="best", ncol=2 if len(series) > 8 else 1)
    figure.tight_layout()
    return figure


def heatmap_figure(
    matrix: Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    colorbar_label: str,
    center: float | None = None,
) -> Any:
    """Labelled cells and a colour bar; colours diverge around ``center`` when given."""
    plt = _pyplot()
    values = np.asarray(matrix, dtype=float)
    finite = values[np.isfinite(values)]
    height = max(2.5, 0.35 * len(rows) + 1.5)
    figure, axes = plt.subplots(figsize=(max(6.5, 1.1 * len(columns) + 4.0), height), dpi=110)
    options: dict[str, Any] = {"cmap": "viridis"}
    if center is not None and finite.size:
        spread = float(np.abs(finite - center).max()) or abs(center) * 0.1 or 1.0
        options = {"cmap": "RdBu", "vmin": center - spread, "vmax": center + spread}
    image = axes.imshow(np.ma.masked_invalid(values), aspect="auto", **options)
    bar = figure.colorbar(image, ax=axes)
    bar.set_label(colorbar_label)
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows, fontsize="small")
    if values.size <= 200:
        for (i, j), value in np.ndenumerate(values):
            text = "-" if not math.isfinite(value) else f"{value:.3g}"
            red, green, blue, _ = (
                image.cmap(image.norm(value)) if math.isfinite(value) else (1,) * 4
            )
            dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.5  # white text on dark cells
            colour = "white" if dark else "black"
            axes.text(j, i, text, ha="center", va="center", fontsize="x-small", color=colour)
    axes.set_title(title)
    figure.tight_layout()
    return figure


def save(figure: Any, path: Path) -> Path:
    """Write ``figure`` as a PNG and free it."""
    plt = _pyplot()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def line_chart(path: Path, series: Sequence[Series], title: str, xlabel: str, ylabel: str) -> Path:
    return save(line_figure(series, title, xlabel, ylabel), path)


def heatmap(
    path: Path,
    matrix: Sequence[Sequence[float]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    colorbar_label: str,
    center: float | None = None,
) -> Path:
    figure = heatmap_figure(matrix, rows, columns, title, colorbar_label, center)
    return save(figure, path)

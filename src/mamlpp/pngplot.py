"""Line charts and heatmaps drawn with Pillow alone, so `mamlpp report` needs no matplotlib.

Deliberately small: nice axis ticks, a legend, labelled heatmap cells. Every chart is a PNG of
fixed size with a white background.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PALETTE = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


@dataclass(frozen=True)
class Series:
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    dashed: bool = False
    markers: bool = False


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About ``count`` round tick values covering [low, high] (steps of 1, 2 or 5 x 10^k)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return [0.0, 1.0]
    if high <= low:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / max(count - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks, value = [], first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    if ticks[-1] < high:
        ticks.append(round(value, 12))
    return ticks


def _label(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


def line_chart(
    path: Path,
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    size: tuple[int, int] = (900, 540),
) -> Path:
    """Draw ``series`` on shared axes and save a PNG at ``path``."""
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font, small = _font(16), _font(12)
    left, right, top, bottom = 80, 190, 44, 60  # margins; the legend sits on the right
    plot = (left, top, width - right, height - bottom)

    points = [(x, y) for s in series for x, y in zip(s.xs, s.ys, strict=False)]
    points = [(x, y) for x, y in points if math.isfinite(x) and math.isfinite(y)]
    xs = [p[0] for p in points] or [0.0, 1.0]
    ys = [p[1] for p in points] or [0.0, 1.0]
    xticks, yticks = nice_ticks(min(xs), max(xs)), nice_ticks(min(ys), max(ys))
    x0, x1, y0, y1 = xticks[0], xticks[-1], yticks[0], yticks[-1]

    def to_pixel(x: float, y: float) -> tuple[float, float]:
        px = plot[0] + (x - x0) / (x1 - x0) * (plot[2] - plot[0])
        py = plot[3] - (y - y0) / (y1 - y0) * (plot[3] - plot[1])
        return px, py

    draw.text((width / 2, 12), title, fill="black", font=font, anchor="mt")
    for tick in yticks:
        _, py = to_pixel(x0, tick)
        draw.line([(plot[0], py), (plot[2], py)], fill=(230, 230, 230))
        draw.text((plot[0] - 6, py), _label(tick), fill="black", font=small, anchor="rm")
    for tick in xticks:
        px, _ = to_pixel(tick, y0)
        draw.line([(px, plot[1]), (px, plot[3])], fill=(230, 230, 230))
        draw.text((px, plot[3] + 6), _label(tick), fill="black", font=small, anchor="mt")
    draw.rectangle(plot, outline="black")
    draw.text(((plot[0] + plot[2]) / 2, height - 20), xlabel, fill="black", font=small, anchor="mm")
    draw.text((8, top - 22), ylabel, fill="black", font=small, anchor="lt")

    for index, s in enumerate(series):
        color = PALETTE[index % len(PALETTE)]
        pixels = [
            to_pixel(x, y)
            for x, y in zip(s.xs, s.ys, strict=False)
            if math.isfinite(x) and math.isfinite(y)
        ]
        if len(pixels) > 1:
            if s.dashed:
                for a, b in zip(pixels[:-1], pixels[1:], strict=True):
                    _dashed(draw, a, b, color)
            else:
                draw.line(pixels, fill=color, width=2)
        if s.markers or len(pixels) == 1:
            for px, py in pixels:
                draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=color)
        ly = top + 10 + 20 * index
        lx = width - right + 12
        if s.dashed:
            _dashed(draw, (lx, ly), (lx + 24, ly), color)
        else:
            draw.line([(lx, ly), (lx + 24, ly)], fill=color, width=3)
        draw.text((lx + 30, ly), s.label[:22], fill="black", font=small, anchor="lm")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _dashed(draw: ImageDraw.ImageDraw, a, b, color, dash: float = 6.0) -> None:
    length = math.dist(a, b)
    if length == 0:
        return
    pieces = max(int(length / dash), 1)
    for i in range(0, pieces, 2):
        t0, t1 = i / pieces, min((i + 1) / pieces, 1.0)
        p0 = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
        p1 = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
        draw.line([p0, p1], fill=color, width=2)


def _diverging(value: float, low: float, high: float) -> tuple[int, int, int]:
    """Blue below the midpoint, white at it, red above (for values around a reference)."""
    mid = (low + high) / 2
    half = max((high - low) / 2, 1e-12)
    t = max(-1.0, min(1.0, (value - mid) / half))
    if t < 0:
        return (int(255 + t * 196), int(255 + t * 150), 255)
    return (255, int(255 - t * 170), int(255 - t * 196))


def heatmap(
    path: Path,
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    center: float | None = None,
) -> Path:
    """A labelled cell grid; colours diverge around ``center`` (default: the mean value)."""
    rows, cols = len(matrix), len(matrix[0]) if matrix else 0
    font, small = _font(16), _font(12)
    cell_w, cell_h, left, top = 84, 28, 170, 70
    width, height = left + cols * cell_w + 20, top + rows * cell_h + 30
    image = Image.new("RGB", (max(width, 420), height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((image.width / 2, 12), title, fill="black", font=font, anchor="mt")
    values = [v for row in matrix for v in row if math.isfinite(v)] or [0.0]
    mid = sum(values) / len(values) if center is None else center
    spread = max(abs(v - mid) for v in values) or 1.0
    for j, label in enumerate(col_labels):
        draw.text(
            (left + j * cell_w + cell_w / 2, top - 8), label, fill="black", font=small, anchor="mb"
        )
    for i, row in enumerate(matrix):
        y = top + i * cell_h
        draw.text((left - 8, y + cell_h / 2), row_labels[i], fill="black", font=small, anchor="rm")
        for j, value in enumerate(row):
            x = left + j * cell_w
            color = _diverging(value, mid - spread, mid + spread)
            draw.rectangle([x, y, x + cell_w - 2, y + cell_h - 2], fill=color)
            draw.text(
                (x + cell_w / 2, y + cell_h / 2),
                f"{value:.4g}",
                fill="black",
                font=small,
                anchor="mm",
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path

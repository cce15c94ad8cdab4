"""Line charts as PNG with numpy alone (no matplotlib on cluster head nodes, no fonts).

``render(panels, title=..., marks=...)`` draws a title row, then one panel per ``Panel``
stacked vertically: gridlines with labelled y ticks, epochs on x (labelled), one coloured
polyline with markers per series and a legend in the panel's title row, and a dashed
vertical line at each mark (where a resumed attempt began). A series keeps its colour
across panels (train blue, validation red), and workers' throughput has colours of its own.
Text uses a built-in 3x5 pixel font (upper case, digits and ``.-/()%:``), drawn at twice
its size.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from launcher.data import png

_GLYPHS = {
    "0": "###,#.#,#.#,#.#,###", "1": ".#.,##.,.#.,.#.,###", "2": "###,..#,###,#..,###", "3": "###,..#,.##,..#,###",
    "4": "#.#,#.#,###,..#,..#", "5": "###,#..,###,..#,###", "6": "###,#..,###,#.#,###", "7": "###,..#,.#.,.#.,.#.",
    "8": "###,#.#,###,#.#,###", "9": "###,#.#,###,..#,###", ".": "...,...,...,...,.#.", "-": "...,...,###,...,...",
    "/": "..#,..#,.#.,#..,#..", "(": ".#.,#..,#..,#..,.#.", ")": ".#.,..#,..#,..#,.#.", " ": "...,...,...,...,...",
    ":": "...,.#.,...,.#.,...", "%": "#.#,..#,.#.,#..,#.#",
    "A": ".#.,#.#,###,#.#,#.#", "B": "##.,#.#,##.,#.#,##.", "C": "###,#..,#..,#..,###", "D": "##.,#.#,#.#,#.#,##.",
    "E": "###,#..,##.,#..,###", "F": "###,#..,##.,#..,#..", "G": "###,#..,#.#,#.#,###", "H": "#.#,#.#,###,#.#,#.#",
    "I": "###,.#.,.#.,.#.,###", "J": "..#,..#,..#,#.#,###", "K": "#.#,#.#,##.,#.#,#.#", "L": "#..,#..,#..,#..,###",
    "M": "#.#,###,###,#.#,#.#", "N": "##.,#.#,#.#,#.#,#.#", "O": "###,#.#,#.#,#.#,###", "P": "###,#.#,###,#..,#..",
    "Q": "###,#.#,#.#,###,..#", "R": "##.,#.#,##.,#.#,#.#", "S": "###,#..,###,..#,###", "T": "###,.#.,.#.,.#.,.#.",
    "U": "#.#,#.#,#.#,#.#,###", "V": "#.#,#.#,#.#,#.#,.#.", "W": "#.#,#.#,###,###,#.#", "X": "#.#,#.#,.#.,#.#,#.#",
    "Y": "#.#,#.#,.#.,.#.,.#.", "Z": "###,..#,.#.,#..,###",
}
COLORS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]
TRAIN, VAL, TOTAL = COLORS[0], COLORS[1], (60, 60, 60)
WORKER_COLORS = [(148, 103, 189), (255, 127, 14), (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207)]
MARK = (120, 120, 120)
_SCALE = 2
WIDTH, PANEL_HEIGHT, TITLE_HEIGHT = 720, 240, 30
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 24, 34, 40


@dataclasses.dataclass(frozen=True)
class Series:
    name: str
    points: tuple[tuple[float, float], ...]      # (epoch, value)
    color: tuple[int, int, int] | None = None    # None: the palette's, by the series' place in its panel


@dataclasses.dataclass(frozen=True)
class Mark:
    """A vertical line across every panel at ``epoch`` (e.g. 3.5: between epochs 3 and 4), with its label."""

    epoch: float
    label: str


@dataclasses.dataclass(frozen=True)
class Panel:
    title: str
    series: tuple[Series, ...]
    y_range: tuple[float, float] | None = None   # None: 0 to a little above the largest value


def text_width(text: str) -> int:
    return len(text) * 4 * _SCALE


def _text(canvas: np.ndarray, x: int, y: int, text: str, color=(0, 0, 0)) -> None:
    for i, char in enumerate(text.upper()):
        rows = _GLYPHS.get(char, _GLYPHS[" "]).split(",")
        for r, row in enumerate(rows):
            for c, bit in enumerate(row):
                if bit == "#":
                    top, left = y + r * _SCALE, x + (i * 4 + c) * _SCALE
                    canvas[max(top, 0):top + _SCALE, max(left, 0):left + _SCALE] = color


_HIGHEST = 1e15  # the top of a panel's axis at most: a larger value is drawn off the panel, clipped


def _clipped(a: tuple[float, float], b: tuple[float, float], wide: int, height: int):
    """The part of the segment a-b inside the canvas (Liang-Barsky), or None: a point far off the panel (a
    value no axis expected) costs no more to draw than one on it.

    >>> _clipped((0.0, 5.0), (1e9, 5.0), 100, 10)
    ((0.0, 5.0), (100.0, 5.0))
    >>> _clipped((-5.0, -5.0), (-1.0, -1.0), 100, 10) is None
    True
    """
    dx, dy = b[0] - a[0], b[1] - a[1]
    low, high = 0.0, 1.0
    for p, q in ((-dx, a[0]), (dx, wide - a[0]), (-dy, a[1]), (dy, height - a[1])):
        if p == 0:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            low = max(low, t)
        else:
            high = min(high, t)
        if low > high:
            return None
    return (a[0] + low * dx, a[1] + low * dy), (a[0] + high * dx, a[1] + high * dy)


def _line(canvas: np.ndarray, a: tuple[float, float], b: tuple[float, float], color, width: int = 2) -> None:
    clipped = _clipped(a, b, canvas.shape[1], canvas.shape[0])
    if clipped is None:
        return
    a, b = clipped
    steps = int(max(abs(b[0] - a[0]), abs(b[1] - a[1]))) + 1
    xs = np.rint(np.linspace(a[0], b[0], steps)).astype(int)
    ys = np.rint(np.linspace(a[1], b[1], steps)).astype(int)
    height, wide = canvas.shape[:2]
    for dx in range(width):
        for dy in range(width):
            keep = (xs + dx < wide) & (ys + dy < height) & (xs + dx >= 0) & (ys + dy >= 0)
            canvas[ys[keep] + dy, xs[keep] + dx] = color


def _nice_step(span: float, ticks: int = 5) -> float:
    raw = span / ticks
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def _label(value: float, step: float) -> str:
    if step >= 1:
        return f"{value:.0f}"
    return f"{value:.{max(0, -math.floor(math.log10(step)))}f}"


def _panel(panel: Panel, epochs: tuple[float, float], marks: Sequence[Mark] = ()) -> np.ndarray:
    canvas = np.full((PANEL_HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    values = [v for s in panel.series for _, v in s.points if math.isfinite(v)]
    low, high = panel.y_range or (0.0, (min(max(values) * 1.1, _HIGHEST) if values and max(values) > 0 else 1.0))
    step = _nice_step(high - low)
    x0, x1, y0, y1 = _LEFT, WIDTH - _RIGHT, PANEL_HEIGHT - _BOTTOM, _TOP
    first, last = epochs
    to_x = lambda e: x0 + (e - first) / max(last - first, 1) * (x1 - x0)  # noqa: E731
    to_y = lambda v: y0 - (v - low) / max(high - low, 1e-12) * (y0 - y1)  # noqa: E731
    tick = low
    while tick <= high + 1e-9:
        y = int(round(to_y(tick)))
        canvas[y, x0:x1] = (225, 225, 225)
        label = _label(tick, step)
        _text(canvas, x0 - 6 - text_width(label), y - 5, label, (90, 90, 90))
        tick += step
    every = max(1, math.ceil((last - first + 1) / 16))
    for epoch in range(int(first), int(last) + 1, every):
        x = int(round(to_x(epoch)))
        canvas[y0:y0 + 4, x] = (90, 90, 90)
        _text(canvas, x - text_width(str(epoch)) // 2, y0 + 8, str(epoch), (90, 90, 90))
    canvas[y1:y0 + 1, x0] = canvas[y0, x0:x1 + 1] = (90, 90, 90)
    _text(canvas, x1 - text_width("epoch"), y0 + 24, "epoch", (90, 90, 90))
    for mark in marks:
        x = int(round(to_x(mark.epoch)))
        if x0 < x < x1:
            for y in range(y1, y0, 8):  # dashed
                canvas[y:y + 4, x] = MARK
            _text(canvas, min(x + 4, x1 - text_width(mark.label)), y1 + 2, mark.label, MARK)
    _text(canvas, x0, 8, panel.title)
    legend_x = x0 + text_width(panel.title) + 24
    for place, series in enumerate(panel.series):
        color = series.color or COLORS[place % len(COLORS)]
        canvas[10:18, legend_x:legend_x + 14] = color
        _text(canvas, legend_x + 20, 9, series.name, color)
        legend_x += 20 + text_width(series.name) + 18
        points = [(to_x(e), to_y(v)) for e, v in series.points if math.isfinite(v)]
        for a, b in zip(points, points[1:]):
            _line(canvas, a, b, color)
        for x, y in points:
            if 0 <= x < WIDTH and 0 <= y < PANEL_HEIGHT:
                canvas[max(int(y) - 2, 0):int(y) + 4, max(int(x) - 2, 0):int(x) + 4] = color
    return canvas


def draw(panels: Sequence[Panel], *, title: str = "", marks: Sequence[Mark] = ()) -> np.ndarray:
    """The title row and the panels stacked, as an RGB array."""
    epochs = [e for p in panels for s in p.series for e, _ in s.points] or [1.0]
    span = (min(epochs), max(epochs))
    head = np.full((TITLE_HEIGHT, WIDTH, 3), 255, dtype=np.uint8)
    _text(head, _LEFT, 10, title)
    return np.concatenate([head, *(_panel(panel, span, marks) for panel in panels)], axis=0)


def render(panels: Sequence[Panel], *, title: str = "", marks: Sequence[Mark] = ()) -> bytes:
    """``draw``, as PNG bytes."""
    return png.encode(draw(panels, title=title, marks=marks), level=9)

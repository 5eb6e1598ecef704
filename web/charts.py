"""Small server-rendered SVG line charts for the status page.

Geometry only: the template draws the SVG from what ``chart`` returns, so the page needs
no script and no CDN, and the strict CSP holds (SVG attributes, not inline styles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.history import WINDOW_S, Series

WIDTH, HEIGHT = 360, 120
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 40, 18, 8


@dataclass(frozen=True)
class Chart:
    """One series laid out in a ``WIDTH`` x ``HEIGHT`` box."""

    name: str
    unit: str
    points: str  # the polyline's "x,y x,y ..."
    y_max: float
    latest: float | None
    samples: int
    width: int = WIDTH
    height: int = HEIGHT
    left: int = PAD_LEFT
    top: int = PAD_TOP
    bottom: int = HEIGHT - PAD_BOTTOM


def _nice_ceiling(value: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``value`` (and at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= value)


def chart(series: Series, window_s: float = WINDOW_S) -> Chart:
    """Lay a series out: time runs left (an hour ago) to right (now)."""
    y_max = _nice_ceiling(max((v for _, v in series.points), default=0.0))
    span_x = WIDTH - PAD_LEFT
    span_y = HEIGHT - PAD_BOTTOM - PAD_TOP

    def xy(ago: float, value: float) -> str:
        x = PAD_LEFT + span_x * (1 - min(max(ago, 0.0), window_s) / window_s)
        y = PAD_TOP + span_y * (1 - value / y_max)
        return f"{x:.1f},{y:.1f}"

    points = " ".join(xy(ago, value) for ago, value in series.points)
    latest = series.points[-1][1] if series.points else None
    return Chart(series.name, series.unit, points, y_max, latest, len(series.points))

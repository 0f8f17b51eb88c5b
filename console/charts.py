"""Server-rendered SVG charts: geometry computed here, drawn by ``templates/_chart.html``.

No JavaScript and nothing loaded from elsewhere: a chart is a few polylines, a nice
y-axis and time labels, styled by ``static/console.css`` through the series' names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from worker.ops.activity import OUTCOMES, Minute

WIDTH, HEIGHT = 720, 200
LEFT, RIGHT, TOP, BOTTOM = 48, 12, 12, 24


@dataclass(frozen=True)
class Series:
    name: str
    points: str  # "x,y x,y ..." for <polyline points>
    total: float
    # Where a value stands alone (neighbours missing): a dot, since a line needs two points.
    dots: list[tuple[float, float]]


@dataclass(frozen=True)
class Tick:
    position: float
    label: str
    anchor: str = "middle"


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    series: list[Series]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^n at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    return next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= value)


def _chart(title: str, unit: str, minutes: Sequence[Minute], columns: dict[str, list[float | None]]) -> Chart:
    top_value = nice_ceiling(max((v for values in columns.values() for v in values if v is not None), default=0))
    span_x = (WIDTH - RIGHT - LEFT) / max(1, len(minutes) - 1)
    span_y = HEIGHT - BOTTOM - TOP

    def y(value: float) -> float:
        return round(HEIGHT - BOTTOM - span_y * value / top_value, 1)

    def x(index: int) -> float:
        return round(LEFT + index * span_x, 1)

    def alone(values: list[float | None], index: int) -> bool:
        neighbours = [values[i] for i in (index - 1, index + 1) if 0 <= i < len(values)]
        return all(value is None for value in neighbours)

    series = [
        Series(
            name=name,
            points=" ".join(f"{x(i)},{y(v)}" for i, v in enumerate(values) if v is not None),
            total=sum(v for v in values if v is not None),
            dots=[(x(i), y(v)) for i, v in enumerate(values) if v is not None and alone(values, i)],
        )
        for name, values in columns.items()
    ]
    y_ticks = [Tick(y(top_value * share), f"{top_value * share:g}") for share in (0, 0.5, 1)]
    last = len(minutes) - 1
    x_ticks = [
        Tick(x(i), minute.start.strftime("%H:%M"), "end" if i == last else "middle")
        for i, minute in enumerate(minutes)
        if i % 15 == 0 or i == last
    ]
    return Chart(title=title, unit=unit, series=series, y_ticks=y_ticks, x_ticks=x_ticks)


def outcomes_chart(minutes: Sequence[Minute]) -> Chart:
    columns: dict[str, list[float | None]] = {
        name: [float(getattr(minute, name)) for minute in minutes] for name in OUTCOMES
    }
    return _chart("Outcomes per minute, last hour", "events", minutes, columns)


def lag_chart(minutes: Sequence[Minute]) -> Chart:
    columns: dict[str, list[float | None]] = {
        "median": [minute.lag_p50 for minute in minutes],
        "max": [minute.lag_max for minute in minutes],
    }
    return _chart("End-to-end lag (Svix timestamp to applied), last hour", "seconds", minutes, columns)

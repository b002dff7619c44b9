"""The overview's two small charts, computed here as coordinates and drawn as inline SVG by
templates/office/overview.html: no chart library and no script (the CSP allows none inline), and every
label goes through the template's escaping. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from watcher.lag_history import Sample

WIDTH, HEIGHT = 600, 170
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 10, 24  # the plot's margins: room for the axes' labels
COLORS = ("#2563eb", "#d97706", "#7c3aed", "#0891b2", "#be185d", "#4d7c0f")
DELIVERED_COLOR, FAILED_COLOR = "#16a34a", "#dc2626"


@dataclass(frozen=True, slots=True)
class Tick:
    at: float  # x or y in the SVG's coordinates
    label: str


@dataclass(frozen=True, slots=True)
class Line:
    name: str
    color: str
    segments: tuple[str, ...]  # polyline `points` values; a gap where the lag was not known
    last: int | None
    dot: tuple[float, float] | None  # the newest known point, drawn as a dot (a single sample shows too)


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    delivered_y: float
    delivered_h: float
    failed_y: float
    failed_h: float
    title: str


@dataclass(frozen=True, slots=True)
class Frame:
    """The drawing area and the axes' ticks, shared by both charts."""

    width: int
    height: int
    left: int
    top: int
    plot_w: int
    plot_h: int
    bottom_y: int
    x_ticks: tuple[Tick, ...]
    y_ticks: tuple[Tick, ...]


@dataclass(frozen=True, slots=True)
class LagChart:
    frame: Frame
    lines: tuple[Line, ...]
    samples: int


@dataclass(frozen=True, slots=True)
class DeliveryChart:
    frame: Frame
    bars: tuple[Bar, ...]
    delivered: int
    failed: int


def nice_max(value: int) -> int:
    """The y axis's top: 1, 2 or 5 times a power of ten, at least `value` and at least 1."""
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def _frame(span_s: float, y_max: int) -> Frame:
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    hours = max(1, round(span_s / 3600))
    x_ticks = tuple(
        Tick(LEFT + plot_w * (hours - h) / hours, "now" if h == 0 else f"-{h} h")
        for h in range(hours, -1, -1)
    )
    # Lags and counts are whole numbers: a middle line only where it falls on one.
    steps = (0, y_max // 2, y_max) if y_max % 2 == 0 else (0, y_max)
    y_ticks = tuple(Tick(TOP + plot_h * (1 - n / y_max), str(n)) for n in steps)
    return Frame(WIDTH, HEIGHT, LEFT, TOP, plot_w, plot_h, TOP + plot_h, x_ticks, y_ticks)


def lag_chart(series: Mapping[str, Sequence[Sample]], now: float, span_s: float) -> LagChart:
    """Each chain's lag (blocks) over the `span_s` before `now`, one line a chain."""
    start = now - span_s
    shown = {name: [(t, lag) for t, lag in samples if start <= t <= now] for name, samples in series.items()}
    y_max = nice_max(max((lag for s in shown.values() for _, lag in s if lag is not None), default=1))
    frame = _frame(span_s, y_max)
    lines = []
    for i, (name, samples) in enumerate(sorted(shown.items())):
        segments: list[str] = []
        current: list[str] = []
        dot = None
        for t, lag in samples:
            if lag is None:
                if current:
                    segments.append(" ".join(current))
                current = []
                continue
            x = frame.left + frame.plot_w * (t - start) / span_s
            y = frame.top + frame.plot_h * (1 - lag / y_max)
            current.append(f"{x:.1f},{y:.1f}")
            dot = (round(x, 1), round(y, 1))
        if current:
            segments.append(" ".join(current))
        last = samples[-1][1] if samples else None
        lines.append(Line(name, COLORS[i % len(COLORS)], tuple(segments), last, dot))
    return LagChart(frame, tuple(lines), sum(len(s) for s in shown.values()))


def delivery_chart(
    buckets: Mapping[int, tuple[int, int]], since: float, bucket_s: int, count: int
) -> DeliveryChart:
    """Stacked bars of the callback attempts delivered and failed per bucket: `buckets` maps a bucket's
    number (0 = the one starting at `since`) to (delivered, failed)."""
    y_max = nice_max(max((ok + bad for ok, bad in buckets.values()), default=1))
    frame = _frame(bucket_s * count, y_max)
    slot = frame.plot_w / count
    bars = []
    for n in range(count):
        ok, bad = buckets.get(n, (0, 0))
        if ok + bad == 0:
            continue
        ok_h, bad_h = frame.plot_h * ok / y_max, frame.plot_h * bad / y_max
        minutes_ago = round((count - n) * bucket_s / 60)
        when = f"{minutes_ago} to {minutes_ago - bucket_s // 60} min ago"
        bars.append(
            Bar(
                x=round(frame.left + n * slot + 1, 1),
                width=round(max(1.0, slot - 2), 1),
                delivered_y=round(frame.bottom_y - ok_h, 1),
                delivered_h=round(ok_h, 1),
                failed_y=round(frame.bottom_y - ok_h - bad_h, 1),
                failed_h=round(bad_h, 1),
                title=f"{when}: {ok} delivered, {bad} failed",
            )
        )
    delivered = sum(ok for ok, _ in buckets.values())
    failed = sum(bad for _, bad in buckets.values())
    return DeliveryChart(frame, tuple(bars), delivered, failed)

"""Plots as data for inline SVG templates (rendered server-side, escaped like any template; no CDN,
no JS).

Every plot has a time axis with ticks and labels; bar charts also have a
value axis, and their title names the bin width, so a rate means the same
wherever it is shown. Run states use the Okabe–Ito palette (safe for the
common colour-vision deficiencies), with the legend outside the plot.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

WIDTH = 1000
"""Width of the SVG coordinate system; the CSS scales every plot to the page's width."""
HEIGHT = 190
MARGIN_LEFT = 100
MARGIN_RIGHT = 12
MARGIN_TOP = 22
MARGIN_BOTTOM = 26
PLOT_W = WIDTH - MARGIN_LEFT - MARGIN_RIGHT

TICK_LABEL_HALF_W = 30
TARGET_BINS = 60
NICE_STEPS_S = (
    0.001,
    0.002,
    0.005,
    0.01,
    0.02,
    0.05,
    0.1,
    0.2,
    0.5,
    1,
    2,
    5,
    10,
    15,
    30,
    60,
    120,
    300,
    600,
    900,
    1800,
    3600,
    7200,
    10800,
    21600,
    43200,
    86400,
)

# Okabe & Ito, "Color Universal Design" (2008)
STATE_COLOURS = {
    "off": "#bbbbbb",
    "no_beam": "#999999",
    "beam": "#0072b2",
    "calib": "#f0e442",
    "test": "#d55e00",
    "ended": "#444444",
}
SUBSTATE_COLOURS = {
    "physics": "#009e73",
    "standby": "#e69f00",
    "ready": "#56b4e9",
    "not_ready": "#cc79a7",
}
OTHER_COLOUR = "#882255"
LEGEND = [
    ("physics", SUBSTATE_COLOURS["physics"]),
    ("standby", SUBSTATE_COLOURS["standby"]),
    ("ready", SUBSTATE_COLOURS["ready"]),
    ("not ready", SUBSTATE_COLOURS["not_ready"]),
    ("beam", STATE_COLOURS["beam"]),
    ("no beam", STATE_COLOURS["no_beam"]),
    ("off", STATE_COLOURS["off"]),
    ("calib", STATE_COLOURS["calib"]),
    ("test", STATE_COLOURS["test"]),
    ("ended", STATE_COLOURS["ended"]),
]
MIN_SEGMENT_W = 3.0
"""A state lasting a moment (a short standby) still shows."""


def seconds_text(seconds: float) -> str:
    """A bin width or duration as people write it: '0.5 s', '10 s', '2 min', '1 h'."""
    if seconds < 60:
        return f"{seconds:g} s" if seconds >= 0.1 else f"{seconds * 1000:.0f} ms"
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 3600:g} h"


def nice_step(span_s: float, target: int) -> float:
    """The smallest of :data:`NICE_STEPS_S` that splits ``span_s`` in ``target`` parts or fewer."""
    for step in NICE_STEPS_S:
        if span_s / step <= target:
            return float(step)
    return float(math.ceil(span_s / target / 86400) * 86400)


@dataclass(frozen=True)
class Tick:
    pos: float
    label: str


def time_ticks(start: datetime, end: datetime, target: int = 8) -> list[Tick]:
    """Ticks at round times (multiples of a nice step since midnight) across [start, end]."""
    span = max((end - start).total_seconds(), 1e-6)
    step = nice_step(span, target)
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    first = math.ceil((start - midnight).total_seconds() / step) * step
    fmt = "%H:%M:%S.%f" if step < 1 else ("%H:%M:%S" if step < 60 else "%H:%M")
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step < 1 else 0
    ticks = []
    k = 0
    while True:
        when = midnight + timedelta(seconds=round(first + k * step, 6))
        if when > end:
            break
        label = when.strftime(fmt)[: 9 + decimals] if step < 1 else when.strftime(fmt)
        pos = MARGIN_LEFT + PLOT_W * (when - start).total_seconds() / span
        if pos <= WIDTH - TICK_LABEL_HALF_W:  # a label cut off at the right edge is not readable
            ticks.append(Tick(pos, label))
        k += 1
    return ticks


def value_ticks(peak: float, plot_h: float, target: int = 4) -> list[Tick]:
    """0 and round values up to ``peak``, at their height in the plot area."""
    if peak <= 0:
        return [Tick(MARGIN_TOP + plot_h, "0")]
    raw = peak / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(k * magnitude for k in (1, 2, 2.5, 5, 10) if k * magnitude >= raw)
    ticks = []
    value = 0.0
    while value <= peak * 1.0001:
        text = (
            f"{value:.0f}"
            if step >= 1
            else f"{value:.{max(0, -math.floor(math.log10(step)) + 1)}f}".rstrip("0").rstrip(".")
        )
        ticks.append(Tick(MARGIN_TOP + plot_h * (1 - value / peak), text or "0"))
        value += step
    return ticks


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    w: float
    h: float
    title: str


@dataclass(frozen=True)
class BarChart:
    title: str
    bars: list[Bar]
    peak: float
    unit: str
    start: datetime | None
    end: datetime | None
    bin_s: float = 0.0
    x_ticks: list[Tick] = field(default_factory=list)
    y_ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    left: int = MARGIN_LEFT
    right: int = WIDTH - MARGIN_RIGHT
    top: int = MARGIN_TOP
    bottom: int = HEIGHT - MARGIN_BOTTOM

    @property
    def empty(self) -> bool:
        return not any(b.h > 0 for b in self.bars)

    @property
    def bin_text(self) -> str:
        return seconds_text(self.bin_s)


def rate_chart(
    times: Iterable[datetime],
    title: str,
    unit: str = "/s",
    start: datetime | None = None,
    end: datetime | None = None,
) -> BarChart:
    """A histogram of event times as rates per second over [start, end], in bins of a round width.

    The bin width depends only on the span (about :data:`TARGET_BINS` bins), so the
    same events over the same span give the same rates on every page.
    """
    stamps = sorted(times)
    if not stamps:
        return BarChart(title, [], 0.0, unit, start, end)
    start = start or stamps[0]
    end = end or stamps[-1]
    if end <= start:
        end = start + timedelta(seconds=1)
    bin_s = nice_step((end - start).total_seconds(), TARGET_BINS)
    buckets = max(1, math.ceil((end - start).total_seconds() / bin_s))
    counts = [0] * buckets
    for t in stamps:
        index = int((t - start).total_seconds() // bin_s)
        if 0 <= index < buckets:
            counts[index] += 1
    return counts_chart(counts, title, start, start + timedelta(seconds=bin_s * buckets), unit)


def counts_chart(
    counts: Sequence[int], title: str, start: datetime, end: datetime, unit: str = "/s"
) -> BarChart:
    """Event counts of equal bins over [start, end] (counted by the caller, e.g. in SQL) as rates
    per second."""
    bin_s = max((end - start).total_seconds(), 1e-9) / max(len(counts), 1)
    if not any(counts):
        return BarChart(title, [], 0.0, unit, start, end, bin_s)
    rates = [c / bin_s for c in counts]
    peak = max(rates)
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    y_ticks = value_ticks(peak, plot_h)
    axis_top = peak  # the highest tick may sit just below the peak: scale to the peak
    bar_w = PLOT_W / len(counts)
    bars = []
    for i, (count, rate) in enumerate(zip(counts, rates, strict=True)):
        h = plot_h * rate / axis_top
        when = start + timedelta(seconds=i * bin_s)
        bars.append(
            Bar(
                MARGIN_LEFT + i * bar_w,
                MARGIN_TOP + plot_h - h,
                max(bar_w - 1, 1),
                h,
                f"{when:%H:%M:%S}: {count} in {seconds_text(bin_s)} = {rate:.3g}{unit}",
            )
        )
    return BarChart(title, bars, peak, unit, start, end, bin_s, time_ticks(start, end), y_ticks)


@dataclass(frozen=True)
class Segment:
    x: float
    w: float
    colour: str
    label: str
    title: str


@dataclass(frozen=True)
class TimelineRow:
    label: str
    y: float
    segments: list[Segment]


@dataclass(frozen=True)
class Timeline:
    title: str
    rows: list[TimelineRow]
    start: datetime | None
    end: datetime | None
    x_ticks: list[Tick] = field(default_factory=list)
    width: int = WIDTH
    row_h: int = 24
    left: int = MARGIN_LEFT
    right: int = WIDTH - MARGIN_RIGHT
    legend: list[tuple[str, str]] = field(default_factory=lambda: list(LEGEND))

    @property
    def axis_y(self) -> int:
        return max(1, len(self.rows)) * self.row_h + 4

    @property
    def height(self) -> int:
        return self.axis_y + MARGIN_BOTTOM

    @property
    def empty(self) -> bool:
        return not self.rows


def state_colour(state: str, substate: str) -> str:
    if state == "run":
        return SUBSTATE_COLOURS.get(substate, OTHER_COLOUR)
    return STATE_COLOURS.get(state, OTHER_COLOUR)


def state_timeline(
    runs: Sequence[tuple[str, Sequence[tuple[datetime, str, str]]]],
    end: datetime,
    title: str = "Run state",
) -> Timeline:
    """One row per run; each state change starts a segment lasting until the next (or ``end``).

    The caller passes ``("ended", "")`` for an ``end_run``: what comes after it is not
    the run's last DAQ state, even when late slices keep the plot going.
    """
    all_times = [t for _, events in runs for t, _, _ in events]
    if not all_times:
        return Timeline(title, [], None, None)
    start = min(all_times)
    stop = max(max(all_times), end)
    span = max((stop - start).total_seconds(), 1e-3)
    rows = []
    for row_index, (label, events) in enumerate(runs):
        segments = []
        ordered = sorted(events)
        for i, (t, state, substate) in enumerate(ordered):
            t_next = ordered[i + 1][0] if i + 1 < len(ordered) else stop
            x = MARGIN_LEFT + PLOT_W * (t - start).total_seconds() / span
            w = min(
                max(PLOT_W * (t_next - t).total_seconds() / span, MIN_SEGMENT_W),
                WIDTH - MARGIN_RIGHT - x,
            )
            name = f"{state}/{substate}" if substate else state
            segments.append(
                Segment(
                    x,
                    max(w, 0.0),
                    state_colour(state, substate),
                    name,
                    f"{name} from {t:%H:%M:%S} for "
                    f"{seconds_text(round((t_next - t).total_seconds(), 1))}",
                )
            )
        rows.append(TimelineRow(label, row_index * Timeline.row_h, segments))
    return Timeline(title, rows, start, stop, time_ticks(start, start + timedelta(seconds=span)))

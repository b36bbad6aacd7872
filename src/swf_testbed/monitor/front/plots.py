"""Plots as data for inline SVG templates (rendered server-side, escaped like any template)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

WIDTH = 600
HEIGHT = 120
LABEL_H = 16

STATE_COLOURS = {
    "off": "#9e9e9e", "no_beam": "#bdbdbd", "beam": "#64b5f6", "run": "#43a047", "calib": "#ffb300",
    "test": "#ab47bc",
}
SUBSTATE_COLOURS = {"physics": "#2e7d32", "standby": "#fdd835", "ready": "#90caf9", "not_ready": "#b0bec5"}


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
    width: int = WIDTH
    height: int = HEIGHT
    label_h: int = LABEL_H

    @property
    def empty(self) -> bool:
        return not any(b.h > 0 for b in self.bars)


def rate_chart(times: Iterable[datetime], title: str, unit: str = "/s", buckets: int = 60,
               start: datetime | None = None, end: datetime | None = None) -> BarChart:
    """A histogram of event times as rates per second, over [start, end]."""
    stamps = sorted(times)
    if not stamps:
        return BarChart(title, [], 0.0, unit, start, end)
    start = start or stamps[0]
    end = end or stamps[-1]
    if end <= start:
        end = start + timedelta(seconds=1)
    width_s = (end - start).total_seconds() / buckets
    counts = [0] * buckets
    for t in stamps:
        index = int((t - start).total_seconds() / width_s)
        if 0 <= index < buckets:
            counts[index] += 1
        elif index == buckets:
            counts[-1] += 1
    return counts_chart(counts, title, start, end, unit)


def counts_chart(counts: Sequence[int], title: str, start: datetime, end: datetime, unit: str = "/s") -> BarChart:
    """Event counts of equal buckets over [start, end] (counted by the caller, e.g. in SQL) as rates per second."""
    if not any(counts):
        return BarChart(title, [], 0.0, unit, start, end)
    width_s = max((end - start).total_seconds(), 1e-9) / len(counts)
    rates = [c / width_s for c in counts]
    peak = max(rates) or 1.0
    bar_w = WIDTH / len(counts)
    bars = []
    for i, rate in enumerate(rates):
        h = (HEIGHT - LABEL_H) * rate / peak
        when = start + timedelta(seconds=i * width_s)
        bars.append(Bar(i * bar_w, HEIGHT - h, max(bar_w - 1, 1), h, f"{when:%H:%M:%S}: {rate:.2f}{unit}"))
    return BarChart(title, bars, peak, unit, start, end)


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
    width: int = WIDTH
    row_h: int = 22

    @property
    def height(self) -> int:
        return max(1, len(self.rows)) * self.row_h

    @property
    def empty(self) -> bool:
        return not self.rows


def state_timeline(runs: Sequence[tuple[str, Sequence[tuple[datetime, str, str]]]], end: datetime,
                   title: str = "Run state") -> Timeline:
    """One row per run; each state change starts a segment lasting until the next (or ``end``)."""
    all_times = [t for _, events in runs for t, _, _ in events]
    if not all_times:
        return Timeline(title, [], None, None)
    start = min(all_times)
    stop = max(max(all_times), end)
    span = max((stop - start).total_seconds(), 1.0)
    rows = []
    for row_index, (label, events) in enumerate(runs):
        segments = []
        ordered = sorted(events)
        for i, (t, state, substate) in enumerate(ordered):
            t_next = ordered[i + 1][0] if i + 1 < len(ordered) else stop
            x = WIDTH * (t - start).total_seconds() / span
            w = max(WIDTH * (t_next - t).total_seconds() / span, 1.5)
            colour = SUBSTATE_COLOURS.get(substate) if state == "run" else STATE_COLOURS.get(state, "#78909c")
            segments.append(Segment(x, w, colour or "#78909c", f"{state}/{substate}",
                                    f"{state}/{substate} from {t:%H:%M:%S} for {(t_next - t).total_seconds():.1f} s"))
        rows.append(TimelineRow(label, row_index * Timeline.row_h, segments))
    return Timeline(title, rows, start, stop)

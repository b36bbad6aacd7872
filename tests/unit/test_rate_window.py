"""The CLI's live rates are over a recent window: they fall to 0 when production stops."""

from __future__ import annotations

import pytest

from swf_testbed.orchestrator.session import RateWindow


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rates_follow_production_and_fall_to_zero_when_it_stops() -> None:
    clock = Clock()
    window = RateWindow(10.0, min_interval_s=0.5, clock=clock)
    assert window.rates() == ()
    start, produced = clock.now, 0
    for _ in range(100):  # 2 STFs/s for 20 s, sampled every 0.2 s
        produced = int((clock.now - start) * 2 + 1e-9)
        window.add((produced, produced // 2))
        clock.now += 0.2
    rate, half = window.rates()
    assert rate == pytest.approx(2.0, rel=0.1) and half == pytest.approx(1.0, rel=0.15)
    # an average since the start would stay at 2/s from here; a window falls to 0
    for _ in range(30):  # production stopped: 6 more seconds
        window.add((produced, produced // 2))
        clock.now += 0.2
    assert 0 < window.rates()[0] < 2.0
    for _ in range(30):  # 12 s after the stop: nothing moved within the window
        window.add((produced, produced // 2))
        clock.now += 0.2
    assert window.rates() == (0.0, 0.0)


def test_one_sample_or_a_long_pause_is_no_rate() -> None:
    clock = Clock()
    window = RateWindow(10.0, clock=clock)
    window.add((5,))
    assert window.rates() == (0.0,)
    clock.now += 60  # nothing sampled for a minute: the old sample is out of the window
    window.add((500,))
    assert window.rates() == (0.0,)
    clock.now += 2
    window.add((510,))
    assert window.rates() == (pytest.approx(5.0),)

"""The one backoff policy: its schedule, its cap, its jitter bounds and its stop event."""

import threading

import pytest

from swf_testbed.retry import Backoff


def test_delays_double_up_to_the_cap_and_reset_starts_again():
    backoff = Backoff(initial=0.1, maximum=0.5)
    assert [backoff.next_delay() for _ in range(5)] == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5])
    backoff.reset()
    assert backoff.next_delay() == pytest.approx(0.1)


def test_for_attempt_is_the_same_schedule_without_state():
    backoff = Backoff(initial=0.5, maximum=3.0)
    assert [backoff.for_attempt(n) for n in (1, 2, 3, 4)] == pytest.approx([0.5, 1.0, 2.0, 3.0])
    assert backoff.upcoming == 0.5
    with pytest.raises(ValueError, match="attempt counts from 1"):
        backoff.for_attempt(0)


def test_jitter_stays_within_half_and_whole_of_each_delay():
    backoff = Backoff(initial=1.0, maximum=8.0, jitter=True)
    for expected in (1.0, 2.0, 4.0, 8.0, 8.0):
        assert expected / 2 <= backoff.next_delay() <= expected


def test_wait_returns_true_at_once_when_stopped():
    stop = threading.Event()
    stop.set()
    assert Backoff(initial=30.0, maximum=60.0).wait(stop) is True


def test_wait_returns_false_after_the_delay():
    assert Backoff(initial=0.01, maximum=0.01).wait(threading.Event()) is False


@pytest.mark.parametrize(("initial", "maximum", "factor"), [(0, 1, 2), (2, 1, 2), (1, 2, 0.5)])
def test_nonsense_parameters_are_refused_with_their_values(initial, maximum, factor):
    with pytest.raises(ValueError, match=f"initial={initial}"):
        Backoff(initial=initial, maximum=maximum, factor=factor)

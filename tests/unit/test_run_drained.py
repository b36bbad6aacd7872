"""When `swf-testbed run` counts a run as drained, judged by its own counts or by the monitor's
record.
"""

from __future__ import annotations

from typing import Any

from swf_testbed.cli.orchestrator import _drained


def _snap(**over: Any) -> dict[str, Any]:
    return {
        "stf_produced": 24,
        "stf_count": 24,
        "stf_processed": 24,
        "slices": 360,
        "slices_done": 360,
        "slices_failed": 0,
        **over,
    }


def _recorded(**over: int) -> dict[str, int]:
    return {
        "stf_processed": 24,
        "samples_unsliced": 0,
        "slices": 345,
        "slices_done": 345,
        "slices_failed": 0,
        **over,
    }


def test_every_stf_processed_and_every_slice_settled_is_drained() -> None:
    assert _drained(_snap())
    assert _drained(_snap(slices_done=350, slices_failed=10))
    assert not _drained(_snap(slices_done=359))
    assert not _drained(_snap(stf_processed=23))
    assert not _drained(_snap(stf_produced=20, stf_count=25))  # the DAQ's own count wins


def test_a_sample_never_sliced_is_not_drained_by_the_monitors_record() -> None:
    """A sample lost on its way to fast processing has no slices, so no slice count can show it
    missing.
    """
    assert _drained(_snap(), _recorded())
    assert not _drained(_snap(), _recorded(samples_unsliced=1))


def test_unsliced_samples_do_not_count_in_a_testbed_without_slicing() -> None:
    assert _drained(
        _snap(slices=0, slices_done=0), _recorded(slices=0, slices_done=0, samples_unsliced=24)
    )

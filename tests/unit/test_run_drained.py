"""When `swf-testbed run` counts a run as drained: by its own counts, or by the monitor's record."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from swf_testbed.orchestrator.follow import drained
from swf_testbed.orchestrator.monitor_api import ExecutionFigures
from swf_testbed.orchestrator.session import ProgressSnapshot, ProgressStatus

SNAP = ProgressSnapshot(
    execution_id="e1",
    workflow_name="w",
    status=ProgressStatus.COMPLETED,
    error="",
    run_id=1,
    daq_state="",
    stf_produced=24,
    stf_ready=24,
    stf_processed=24,
    samples=24,
    slices=360,
    slices_done=360,
    slices_failed=0,
    end_run=True,
    stf_count=24,
    elapsed_s=1.0,
)
RECORDED = ExecutionFigures(
    stf_processed=24, slices=345, slices_done=345, slices_failed=0, samples_unsliced=0
)


def _snap(**over: Any) -> ProgressSnapshot:
    return replace(SNAP, **over)


def _recorded(**over: int) -> ExecutionFigures:
    return replace(RECORDED, **over)


def test_every_stf_processed_and_every_slice_settled_is_drained() -> None:
    assert drained(_snap())
    assert drained(_snap(slices_done=350, slices_failed=10))
    assert not drained(_snap(slices_done=359))
    assert not drained(_snap(stf_processed=23))
    assert not drained(_snap(stf_produced=20, stf_count=25))  # the DAQ's own count wins


def test_a_sample_never_sliced_is_not_drained_by_the_monitors_record() -> None:
    """A sample lost on its way to fast processing has no slices, so no slice count can show it."""
    assert drained(_snap(), _recorded())
    assert not drained(_snap(), _recorded(samples_unsliced=1))


def test_unsliced_samples_do_not_count_in_a_testbed_without_slicing() -> None:
    assert drained(
        _snap(slices=0, slices_done=0), _recorded(slices=0, slices_done=0, samples_unsliced=24)
    )

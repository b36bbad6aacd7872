"""The slice and slice-result projections, column by column: what a slice row and a worker row
hold after slices, results and retries in any order, and what the runs' counters say of them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api import run_counters

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STF = "swf.000001.000001.stf"
SAMPLE = "swf.000001.000001.tf.1"


def _slice(make_message: Any, slice_id: int = 1, **fields: Any) -> bytes:
    values = {
        "slice_id": slice_id,
        "tf_filename": SAMPLE,
        "stf_filename": STF,
        "tf_first": 10,
        "tf_last": 19,
        "tf_count": 10,
        **fields,
    }
    return make_message("slice", **values)


def _result(make_message: Any, slice_id: int = 1, **fields: Any) -> bytes:
    values = {
        "slice_id": slice_id,
        "tf_filename": SAMPLE,
        "worker_id": "w1",
        "status": "completed",
        "processing_time_s": 1.5,
        **fields,
    }
    return make_message("slice_result", **values)


def _sample(make_message: Any) -> bytes:
    return make_message(
        "tf_file_registered",
        tf_filename=SAMPLE,
        stf_filename=STF,
        tf_first=0,
        tf_last=99,
        tf_count=100,
        size_bytes=10,
    )


def _counters(run_number: int = 1) -> tuple[int, int, int, int]:
    state = m.RunState.objects.get(run_number=run_number)
    held = run_counters.counted(run_number)
    assert {name: getattr(state, name) for name in held} == held  # kept = an exact count
    return (state.slices_created, state.slices_queued, state.slices_completed, state.slices_failed)


def test_a_result_for_an_unknown_slice_makes_it_with_the_known_sample(
    record: Any, make_message: Any
) -> None:
    record(_sample(make_message))
    record(_result(make_message, status="failed", error="boom", timestamp=T0))
    item = m.TFSlice.objects.get()
    assert (item.tf_filename, item.slice_id, item.run_number) == (SAMPLE, 1, 1)
    assert (item.tf_first, item.tf_last, item.tf_count, item.stf_filename) == (0, 0, 0, "")
    assert item.sample == m.FastMonFile.objects.get()
    assert (item.status, item.retries, item.assigned_worker) == ("failed", 0, "w1")
    assert (item.completed_at, item.processing_time_s, item.error) == (T0, 1.5, "boom")
    assert item.assigned_at is None and item.metadata == {}
    assert _counters() == (1, 0, 0, 1)

    record(_slice(make_message, retries=0))  # its slice, late: the ranges, not the status
    item = m.TFSlice.objects.get()
    assert (item.tf_first, item.tf_last, item.tf_count, item.stf_filename) == (10, 19, 10, STF)
    assert (item.status, item.error, item.assigned_worker) == ("failed", "boom", "w1")
    assert _counters() == (1, 0, 0, 1)


def test_a_slice_before_its_sample_has_none_and_keeps_a_known_one(
    record: Any, make_message: Any
) -> None:
    record(_slice(make_message))
    assert m.TFSlice.objects.get().sample is None
    record(_sample(make_message))  # links the orphan
    sample = m.FastMonFile.objects.get()
    assert m.TFSlice.objects.get().sample == sample
    record(_slice(make_message, tf_first=11))
    item = m.TFSlice.objects.get()
    assert item.sample == sample and item.tf_first == 11


def test_retries_requeue_and_counters_follow(record: Any, make_message: Any) -> None:
    record(_slice(make_message, slice_id=1), _slice(make_message, slice_id=2))
    assert _counters() == (2, 2, 0, 0)
    record(
        _result(make_message, slice_id=1, status="failed"),
        _result(make_message, slice_id=2, status="failed"),
    )
    assert _counters() == (2, 0, 0, 2)
    record(_slice(make_message, slice_id=1, retries=2))  # re-queued
    item = m.TFSlice.objects.get(slice_id=1)
    assert (item.status, item.retries) == ("queued", 2)
    assert _counters() == (2, 1, 0, 1)
    record(_result(make_message, slice_id=1, status="failed"))
    record(_slice(make_message, slice_id=1, retries=1))  # an older retry: changes nothing
    item = m.TFSlice.objects.get(slice_id=1)
    assert (item.status, item.retries) == ("failed", 2)
    assert _counters() == (2, 0, 0, 2)
    # a retry and its result in one batch; then a late copy of the retry: completed is final
    record(
        _slice(make_message, slice_id=2, retries=1),
        _result(make_message, slice_id=2, status="completed"),
    )
    record(_slice(make_message, slice_id=2, retries=1))
    record(_result(make_message, slice_id=2, status="failed", error="late"))
    item = m.TFSlice.objects.get(slice_id=2)
    assert (item.status, item.retries, item.error) == ("completed", 1, "late")
    assert _counters() == (2, 0, 1, 1)


def test_a_write_moves_updated_at_and_only_a_write(record: Any, make_message: Any) -> None:
    record(_slice(make_message))
    first = m.TFSlice.objects.get()
    assert first.updated_at is not None and first.created_at is not None
    record(_result(make_message))
    second = m.TFSlice.objects.get()
    assert second.updated_at > first.updated_at and second.created_at == first.created_at


def test_workers_count_their_results_across_batches(record: Any, make_message: Any) -> None:
    record(
        _result(make_message, slice_id=1, worker_id="w1", timestamp=T0 + timedelta(seconds=2)),
        _result(
            make_message,
            slice_id=2,
            worker_id="w1",
            status="failed",
            tf_filename="other.tf",
            timestamp=T0 + timedelta(seconds=1),
        ),
        _result(make_message, slice_id=3, worker_id="w2", run_id=2, timestamp=T0),
    )
    w1 = m.Worker.objects.get(worker_id="w1")
    assert (w1.slices_completed, w1.slices_failed, w1.run_number) == (1, 1, 1)
    assert (w1.last_heartbeat, w1.tf_filename, w1.status) == (
        T0 + timedelta(seconds=2),
        SAMPLE,
        "active",
    )
    assert w1.current_slice_id is None and w1.started_at == T0 + timedelta(seconds=1)
    assert w1.namespace_id == "ns1"
    w2 = m.Worker.objects.get(worker_id="w2")
    assert (w2.slices_completed, w2.slices_failed, w2.run_number) == (1, 0, 2)
    m.Worker.objects.filter(worker_id="w1").update(current_slice_id=7, status="idle")
    record(
        _result(
            make_message,
            slice_id=4,
            worker_id="w1",
            run_id=2,
            tf_filename="late.tf",
            timestamp=T0 + timedelta(seconds=5),
        )
    )
    w1 = m.Worker.objects.get(worker_id="w1")
    assert (w1.slices_completed, w1.slices_failed, w1.run_number) == (2, 1, 2)
    assert (w1.current_slice_id, w1.status, w1.tf_filename) == (None, "active", "late.tf")
    assert w1.last_heartbeat == T0 + timedelta(seconds=5)
    assert w1.started_at == T0 + timedelta(seconds=1)  # set once, when it first appears
    # w1 left run 1 for run 2: both runs' active workers are counted again
    assert m.RunState.objects.get(run_number=1).active_worker_count == 0
    assert m.RunState.objects.get(run_number=2).active_worker_count == 2

"""The runs' slice and sample counters, kept by differences (run_counters): after every batch of
the ingest and every REST or admin write, they equal an exact count of the tables, and keeping
them costs the same whatever the size of the run."""

from __future__ import annotations

import random
from io import StringIO
from typing import Any

from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api import run_counters

RUNS = (501, 502)


def _assert_counted(run_numbers: tuple[int, ...] = RUNS) -> None:
    for number in run_numbers:
        state = m.RunState.objects.filter(run_number=number).first()
        exact = run_counters.counted(number)
        if state is None:
            assert exact["slices_created"] == exact["stf_samples_received"] == 0, number
            continue
        held = {name: getattr(state, name) for name in exact}
        assert held == exact, f"run {number}"


def _stf(run: int) -> str:
    return f"swf.{run}.000001.stf"


def _sample(run: int, n: int) -> str:
    return f"swf.{run}.000001.tf.{n}"


def _random_message(rng: random.Random, make_message: Any) -> bytes:
    run = rng.choice(RUNS)
    sample = _sample(run, rng.randrange(2))
    slice_id = rng.randrange(5)
    kind = rng.choice(["slice", "slice", "result", "result", "sample"])
    if kind == "sample":
        return make_message(
            "tf_file_registered",
            run_id=run,
            stf_filename=_stf(rng.choice(RUNS)),  # a sample may name another run's STF
            tf_filename=sample,
            tf_first=0,
            tf_last=9,
            tf_count=10,
            size_bytes=1,
        )
    if kind == "slice":
        return make_message(
            "slice",
            run_id=run,
            slice_id=slice_id,
            tf_filename=sample,
            stf_filename=_stf(run),
            tf_first=0,
            tf_last=9,
            tf_count=10,
            retries=rng.randrange(2),
        )
    return make_message(
        "slice_result",
        run_id=run,
        slice_id=slice_id,
        tf_filename=sample,
        worker_id=f"w{rng.randrange(3)}",
        status=rng.choice(["completed", "failed"]),
        processing_time_s=0.1,
    )


def _random_orm_write(rng: random.Random) -> None:
    """What the REST API and the admin do: a save or a delete of one row through the ORM."""
    slices = list(m.TFSlice.objects.order_by("id"))
    samples = list(m.FastMonFile.objects.order_by("tf_filename"))
    action = rng.choice(["status", "move", "delete", "delete_sample", "create"])
    if action == "create":
        run = rng.choice(RUNS)
        m.TFSlice.objects.get_or_create(
            tf_filename=_sample(run, 9),
            slice_id=rng.randrange(100),
            defaults={"run_number": run, "tf_first": 0, "tf_last": 1, "tf_count": 2},
        )
    elif action == "delete_sample" and samples:
        rng.choice(samples).delete()
    elif slices:
        item = rng.choice(slices)
        if action == "status":
            item.status = rng.choice(m.SliceStatus.values)
            item.save()
        elif action == "move":
            item.run_number = rng.choice(RUNS)
            item.save()
        else:
            item.delete()


def test_counters_equal_an_exact_count_after_every_batch_and_every_rest_write(
    record: Any, make_message: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """Random streams (slices, results, samples, retries, repeats, in any order, in batches of
    any size), with ORM writes between the batches: never a difference from the count."""
    for seed in range(25):
        rng = random.Random(seed)
        for _ in range(rng.randrange(3, 9)):
            bodies = [_random_message(rng, make_message) for _ in range(rng.randrange(1, 12))]
            record(*bodies)
            _assert_counted()
            if rng.random() < 0.5:
                with django_capture_on_commit_callbacks(execute=True):
                    _random_orm_write(rng)
                _assert_counted()
        assert m.TFSlice.objects.exists()  # the stream did make slices
        m.Run.objects.all().delete()
        m.TFSlice.objects.all().delete()
        m.RunState.objects.all().delete()
        m.Worker.objects.all().delete()


def _slices(run: int, make_message: Any, ids: range, status: str | None = None) -> list[bytes]:
    if status is None:
        return [
            make_message(
                "slice",
                run_id=run,
                slice_id=i,
                tf_filename=f"swf.{run}.tf.{i // 15}",
                stf_filename=_stf(run),
                tf_first=0,
                tf_last=9,
                tf_count=10,
            )
            for i in ids
        ]
    return [
        make_message(
            "slice_result",
            run_id=run,
            slice_id=i,
            tf_filename=f"swf.{run}.tf.{i // 15}",
            worker_id="w1",
            status=status,
            processing_time_s=0.1,
        )
        for i in ids
    ]


def test_a_batch_costs_the_same_queries_in_a_long_run_as_in_a_new_one(
    record: Any, make_message: Any
) -> None:
    """The same batch (15 slices, their 15 results) into a run of 15 slices and into one of
    3,000: the same number of queries, and none of them counts the run's slices."""
    costs = []
    for run, before in ((601, 15), (602, 3000)):
        record(*_slices(run, make_message, range(before)))
        record(*_slices(run, make_message, range(before), "completed"))
        batch = [
            *_slices(run, make_message, range(before, before + 15)),
            *_slices(run, make_message, range(before, before + 15), "completed"),
        ]
        with CaptureQueriesContext(connection) as queries:
            record(*batch)
        counts = [q["sql"] for q in queries if "COUNT(" in q["sql"].upper()]
        assert not [sql for sql in counts if "tfslice" in sql.lower()], counts
        costs.append(len(queries))
        state = m.RunState.objects.get(run_number=run)
        assert (state.slices_created, state.slices_completed) == (before + 15, before + 15)
    assert costs[0] == costs[1], costs


def test_end_run_counts_exactly_and_recount_runs_repairs_a_drift(
    record: Any, make_message: Any
) -> None:
    record(*_slices(701, make_message, range(20)), *_slices(702, make_message, range(5)))
    m.RunState.objects.filter(run_number=701).update(slices_created=3, slices_queued=0)
    m.RunState.objects.filter(run_number=702).update(slices_queued=99)
    record(make_message("end_run", run_id=701, total_stf_files=1))
    state = m.RunState.objects.get(run_number=701)
    assert (state.phase, state.slices_created, state.slices_queued) == ("ended", 20, 20)

    out = StringIO()
    call_command("recount_runs", stdout=out)
    assert "run 702: slices_queued 99 → 5" in out.getvalue()
    assert "2 runs counted, 1 had drifted" in out.getvalue()
    _assert_counted((701, 702))


def test_a_drifted_counter_that_would_go_below_zero_is_counted_again(
    record: Any, make_message: Any
) -> None:
    """Differences applied to a counter that had drifted low would make it negative: the run is
    counted instead, and the batch goes on."""
    record(*_slices(801, make_message, range(4)))
    m.RunState.objects.filter(run_number=801).update(slices_queued=0)
    result = record(*_slices(801, make_message, range(4), "completed"))
    assert result.stored == 4
    _assert_counted((801,))


def test_a_run_state_saved_from_a_stale_read_keeps_the_counters(
    record: Any, make_message: Any
) -> None:
    """A run state read, then saved after the counters moved (the REST API's PATCH of its phase,
    the ingest's state change), does not write the counters it read back."""
    record(*_slices(901, make_message, range(3)))
    stale = m.RunState.objects.get(run_number=901)
    record(*_slices(901, make_message, range(3, 10)))
    stale.phase = "paused"
    stale.save()
    state = m.RunState.objects.get(run_number=901)
    assert (state.phase, state.slices_created) == ("paused", 10)

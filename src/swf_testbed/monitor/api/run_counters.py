"""A run's slice and sample counters (the figures of RunState), kept by differences.

Every batch of the ingest adds what its slice and sample writes changed to the runs'
counters (a slice created, a slice moved from queued to completed, a sample
registered), with one ``UPDATE … SET n = n + d`` per run. The cost of keeping
them is the size of the write, not of the run: counting the run's slices
again after every batch grew with the run, and made a long run quadratic.

Where the counts come from:

* the ingest's projections (:mod:`bulk_projections`) collect them in the
  batch and apply them once, at the end of the batch (:func:`apply`), in the
  batch's transaction: after the slice writes, so that the ingest always
  takes the run state's lock last;
* every other save or delete of a slice or sample through the ORM (the REST
  API, the admin) is seen by the signals of :mod:`signals`, which count its
  run exactly once the write has committed, in a transaction of their own.
  Not a difference there: applied after the commit, it would race with an
  exact count made in between (which already sees the committed row) and
  count the row twice; an exact count that locks the run state first is
  right whatever ran before it. (So a v28 agent's REST writes still cost a
  count of their run each, as before.)

What the differences cannot see is made right by an exact count
(:func:`recount`): when a run state is first created by a write, at
``end_run``, and by ``manage.py recount_runs`` (a repair). The counters are
never written by anyone else: the REST API shows them read-only (a v28
agent's read-then-PATCH of them is accepted and ignored; the tables are
their source).
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter, defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field

from django.db import (
    DatabaseError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    transaction,
)
from django.db.models import Count, F
from django.utils import timezone

from swf_testbed.monitor.api import models as m

log = logging.getLogger(__name__)

SliceKey = tuple[int, str]
"""What a slice counts as: its run number and its status."""

STATUS_COUNTERS: dict[str, str] = {
    m.SliceStatus.QUEUED: "slices_queued",
    m.SliceStatus.PROCESSING: "slices_processing",
    m.SliceStatus.COMPLETED: "slices_completed",
    m.SliceStatus.FAILED: "slices_failed",
}

COUNTERS = sorted(m.RunState.COUNTED_FIELDS)
"""The fields of RunState that are counted, never set."""


@dataclass
class Changes:
    """Differences to a set of runs' counters, not applied yet."""

    by_run: defaultdict[int, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def slice_moved(self, old: SliceKey | None, new: SliceKey) -> None:
        """A slice was created (``old`` None) or changed."""
        if old == new:
            return
        if old is not None:
            self._add(old, -1)
        self._add(new, +1)

    def _add(self, key: SliceKey, sign: int) -> None:
        run_number, status = key
        counts = self.by_run[run_number]
        counts["slices_created"] += sign
        if status in STATUS_COUNTERS:
            counts[STATUS_COUNTERS[status]] += sign

    def sample_moved(self, old_run: int | None, new_run: int | None) -> None:
        """A sample was registered (``old_run`` None), moved to another run's STF, or deleted."""
        if old_run == new_run:
            return
        if old_run is not None:
            self.by_run[old_run]["stf_samples_received"] -= 1
        if new_run is not None:
            self.by_run[new_run]["stf_samples_received"] += 1

    def workers_changed(self, run_number: int) -> None:
        """The run's active workers are counted again (there are few: it does not grow)."""
        self.by_run[run_number]  # noqa: B018 -- the run is touched, with no difference of its own

    def merge(self, other: Changes) -> None:
        for run_number, counts in other.by_run.items():
            self.by_run[run_number].update(counts)


def apply(changes: Changes, *, recounted: set[int] | frozenset[int] = frozenset()) -> None:
    """Add the differences to the run states, in run order, in the caller's transaction.

    A run state that does not exist yet is created and counted exactly (its
    run's rows, this write's included, are all there is). Runs in
    ``recounted`` are counted exactly instead.
    """
    for run_number in sorted(changes.by_run):
        if run_number in recounted:
            continue
        try:
            with transaction.atomic():
                _add(run_number, changes.by_run[run_number])
        except (OperationalError, InterfaceError):
            raise  # the database is away: the caller retries
        except DatabaseError as exc:  # a counter below zero: they had drifted
            log.warning(
                "run %s: its counters could not take %s (%s); counted again",
                run_number,
                dict(changes.by_run[run_number]),
                exc,
            )
            recount(run_number)
    for run_number in sorted(recounted):
        recount(run_number)


def _add(run_number: int, counts: Counter[str]) -> None:
    fields = {name: F(name) + delta for name, delta in counts.items() if delta}
    updated = m.RunState.objects.filter(run_number=run_number).update(
        **fields, active_worker_count=_active_workers(run_number), updated_at=timezone.now()
    )
    if not updated:
        recount(run_number)


def recount_alone(run_numbers: set[int]) -> None:
    """:func:`recount` of these runs in a transaction of their own (after a REST or admin write
    has committed).

    A run state created at the same moment by the ingest is a unique conflict: counted again then.
    """
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                for run_number in sorted(run_numbers):
                    recount(run_number)
            return
        except IntegrityError:
            if attempt == 2:
                raise


def _active_workers(run_number: int) -> int:
    return m.Worker.objects.filter(run_number=run_number, status="active").count()


def recount(run_number: int) -> None:
    """The counters of a run counted from the tables they summarise (creates its run state).

    The run state's row is locked before counting (PostgreSQL; SQLite has one
    writer at a time), so a count made by a transaction that commits later
    sees what the earlier ones wrote. Only the counters are written, never a
    phase or state set meanwhile.
    """
    state = m.RunState.objects.select_for_update().filter(run_number=run_number).first()
    if state is None:
        state, _ = m.RunState.objects.get_or_create(
            run_number=run_number,
            defaults={"run": m.Run.objects.filter(run_number=run_number).first()},
        )
        state = m.RunState.objects.select_for_update().get(pk=state.pk)
    for name, value in counted(run_number).items():
        setattr(state, name, value)
    state.save(update_fields=[*COUNTERS, "updated_at"])


def counted(run_number: int) -> dict[str, int]:
    """What an exact count of the run would give, without writing it (for checks and tests)."""
    by_status = dict(
        m.TFSlice.objects.filter(run_number=run_number)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    figures = {name: by_status.get(status, 0) for status, name in STATUS_COUNTERS.items()}
    return {
        "slices_created": sum(by_status.values()),
        **figures,
        "stf_samples_received": m.FastMonFile.objects.filter(
            stf_file__run__run_number=run_number
        ).count(),
        "active_worker_count": _active_workers(run_number),
    }


def runs_of_stf_files(file_ids: Collection[uuid.UUID | None]) -> dict[uuid.UUID | None, int]:
    """The run number of each of these STF files (by file id)."""
    return dict(
        m.StfFile.objects.filter(pk__in=[f for f in file_ids if f is not None]).values_list(
            "pk", "run__run_number"
        )
    )

"""Keep the counts right when rows are written through the ORM (the REST API, the admin,
retention): the facet counts of deleted messages, and the runs' slice and sample counters.

The ingest's bulk writes send no signals; its projections apply their own
differences (:mod:`run_counters`).
"""

from __future__ import annotations

from typing import Any

from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from swf_testbed.monitor.api import facets, run_counters
from swf_testbed.monitor.api.models import FastMonFile, TFSlice, WorkflowMessage


@receiver(post_delete, sender=WorkflowMessage)
def _uncount_deleted_message(
    sender: type[WorkflowMessage], instance: WorkflowMessage, **kwargs: Any
) -> None:
    facets.add_counts([instance], sign=-1)


def _recount_after_commit(runs: set[int | None]) -> None:
    """Count these runs exactly once the write has committed, in a transaction of its own.

    Not a difference: one applied after the commit would race with an exact
    count made in between by the ingest (a new run state, ``end_run``), which
    already sees the committed row, and count it twice. An exact count that
    locks the run state first is right whatever ran before it. Only the
    ingest's own differences are applied in the transaction of its writes.
    """
    wanted = {run for run in runs if run is not None}
    if wanted:
        transaction.on_commit(lambda: run_counters.recount_alone(wanted))


@receiver(post_save, sender=TFSlice)
def _recount_saved_slice(
    sender: type[TFSlice], instance: TFSlice, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    if raw:
        return  # loaddata: counted by recount_runs
    before = instance.counted_run
    instance.counted_run = instance.run_number
    _recount_after_commit({before, instance.run_number})


@receiver(post_delete, sender=TFSlice)
def _recount_deleted_slice(sender: type[TFSlice], instance: TFSlice, **kwargs: Any) -> None:
    _recount_after_commit({instance.run_number})


@receiver(post_save, sender=FastMonFile)
def _recount_saved_sample(
    sender: type[FastMonFile],
    instance: FastMonFile,
    created: bool,
    raw: bool = False,
    **kwargs: Any,
) -> None:
    if raw:
        return
    run_of = run_counters.runs_of_stf_files({instance.counted_stf, instance.stf_file_id})
    instance.counted_stf = instance.stf_file_id
    _recount_after_commit(set(run_of.values()))


@receiver(post_delete, sender=FastMonFile)
def _recount_deleted_sample(
    sender: type[FastMonFile], instance: FastMonFile, **kwargs: Any
) -> None:
    _recount_after_commit(set(run_counters.runs_of_stf_files({instance.stf_file_id}).values()))

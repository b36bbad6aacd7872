"""Keep the counts right when rows are written through the ORM (the REST API, the admin,
retention): the facet counts of deleted messages, and the runs' slice and sample counters.

The ingest's bulk writes send no signals; its projections give their own
differences to :mod:`run_counters`.
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


def _after_commit(changes: run_counters.Changes, recount: set[int]) -> None:
    """Apply once the write has committed, in a transaction of its own (see run_counters)."""
    if changes or recount:
        transaction.on_commit(lambda: run_counters.apply_alone(changes, recounted=recount))


@receiver(post_save, sender=TFSlice)
def _count_saved_slice(
    sender: type[TFSlice], instance: TFSlice, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    if raw:
        return  # loaddata: counted by recount_runs
    now = (instance.run_number, instance.status)
    changes, recount = run_counters.Changes(), set()
    if created or instance.counted_as is not None:
        changes.slice_moved(None if created else instance.counted_as, now)
    else:  # saved without having been read: what it was counted as is not known
        recount.add(instance.run_number)
    instance.counted_as = now
    _after_commit(changes, recount)


@receiver(post_delete, sender=TFSlice)
def _uncount_deleted_slice(sender: type[TFSlice], instance: TFSlice, **kwargs: Any) -> None:
    changes = run_counters.Changes()
    changes.slice_moved(instance.counted_as or (instance.run_number, instance.status), None)
    _after_commit(changes, set())


@receiver(post_save, sender=FastMonFile)
def _count_saved_sample(
    sender: type[FastMonFile],
    instance: FastMonFile,
    created: bool,
    raw: bool = False,
    **kwargs: Any,
) -> None:
    if raw:
        return
    before = None if created else instance.counted_stf
    changes, recount = run_counters.Changes(), set()
    run_of = run_counters.runs_of_stf_files({before, instance.stf_file_id})
    if created or before is not None:
        changes.sample_moved(run_of.get(before), run_of.get(instance.stf_file_id))
    elif instance.stf_file_id in run_of:
        recount.add(run_of[instance.stf_file_id])
    instance.counted_stf = instance.stf_file_id
    _after_commit(changes, recount)


@receiver(post_delete, sender=FastMonFile)
def _uncount_deleted_sample(
    sender: type[FastMonFile], instance: FastMonFile, **kwargs: Any
) -> None:
    stf = instance.counted_stf or instance.stf_file_id
    run_of = run_counters.runs_of_stf_files({stf})
    changes = run_counters.Changes()
    changes.sample_moved(run_of.get(stf), None)
    _after_commit(changes, set())

"""The set-wise projections: a batch's messages of one high-volume type in a few queries.

Each has a one-message form in :mod:`projections` (the fallback that finds a culprit).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.utils import timezone

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.fastinsert import (
    fields_named,
    insert_dicts,
    new_row,
    update_dicts,
    update_objects,
    update_rows,
)
from swf_testbed.monitor.api.projection_support import Batch, ensure_run
from swf_testbed.monitor.api.run_counters import Changes, SliceKey, runs_of_stf_files

# --------------------------------------------------------------------------- set-wise projections


def _stf_gen_values(msg: msgs.StfGen) -> dict[str, Any]:
    """What an stf_gen says about its file.

    What it does not say (v28: size, checksum, ...) is left out.
    """
    values = {
        "file_size_bytes": msg.size_bytes,
        "checksum": msg.checksum,
        "daq_state": msg.state.value,
        "daq_substate": msg.substate.value,
        "machine_state": msg.substate.value,
        "sequence": msg.sequence,
        "tf_count": msg.tf_count,
        "generated_at": msg.timestamp,
    }
    times = {k: v.isoformat() for k, v in (("start", msg.start), ("end", msg.end)) if v is not None}
    if times:
        values["metadata"] = times
    return {k: v for k, v in values.items() if v is not None}


def _stf_ready_values(msg: msgs.StfReady) -> dict[str, Any]:
    values: dict[str, Any] = {
        "url": msg.url,
        "file_size_bytes": msg.size_bytes,
        "checksum": msg.checksum,
        "sequence": msg.sequence,
        "daq_state": msg.state.value,
        "daq_substate": msg.substate.value,
    }
    if msg.tf_count:
        values["tf_count"] = msg.tf_count
    return {k: v for k, v in values.items() if v is not None}


StfRow = dict[str, Any]
"""An STF file as plain values by attname (``file_id``, ``run_id``, ``status``, ...): as read, or
new (:func:`fastinsert.new_row`), as the slice projections do."""

_STF_FIELDS = [
    "file_size_bytes",
    "checksum",
    "daq_state",
    "daq_substate",
    "machine_state",
    "sequence",
    "tf_count",
    "generated_at",
    "metadata",
    "url",
    "status",
]
"""What stf_gen and stf_ready write to a file that exists (what they say, merged into what was
read; ``processing_complete`` writes its status and metadata only)."""

_STF_READ = ("file_id", "stf_filename", *_STF_FIELDS)
"""What the STF projections read of a file: its keys and what they may write."""


def _stf_rows_for_update(names: set[str]) -> dict[str, StfRow]:
    """The STF files of these names, by name, locked until the batch commits (PostgreSQL).

    So that a REST update of the same files, committed between this read and the batch's write,
    is not overwritten with what was read (an STF's status never moves back). NO KEY: the REST
    inserts of samples that refer to these files (a foreign-key check) are not blocked, which
    would deadlock.
    """
    locked = (
        m.StfFile.objects.select_for_update(no_key=True)
        .filter(stf_filename__in=names)
        .order_by()
        .values(*_STF_READ)
    )
    return {row["stf_filename"]: row for row in locked}


def _project_stfs(
    messages: list[Any],
    batch: Batch,
    status: str,
    merge: Callable[[StfRow, Any], None],
    fields: list[str],
) -> None:
    """A batch's messages about STF files: one locked read, one insert, one update.

    A file not known yet is made with ``status``; ``merge`` then applies what
    the message says, to a new row or to the row as read, and ``fields`` (with
    ``updated_at``) are what is written to a file that exists.
    """
    existing = _stf_rows_for_update({msg.filename for msg in messages})
    new: dict[str, StfRow] = {}
    changed: dict[str, StfRow] = {}
    now = timezone.now()
    for msg in messages:
        run = ensure_run(msg, batch)
        name = msg.filename
        row = existing.get(name) or new.get(name)
        if row is None:
            row = new[name] = new_row(m.StfFile, stf_filename=name, run_id=run.pk, status=status)
        elif name in existing:
            changed[name] = row
        merge(row, msg)
        row["updated_at"] = now
    insert_dicts(m.StfFile, new.values())  # their keys (UUIDs) are set already
    update_dicts(m.StfFile, changed.values(), [*fields, "updated_at"])


def _merge_gen(row: StfRow, msg: msgs.StfGen) -> None:
    for name, value in _stf_gen_values(msg).items():
        if name == "metadata":
            value = {**(row.get("metadata") or {}), **value}
        row[name] = value


def _merge_ready(row: StfRow, msg: msgs.StfReady) -> None:
    row.update(_stf_ready_values(msg))
    if row["status"] == m.FileStatus.GENERATED:
        row["status"] = m.FileStatus.REGISTERED


def _merge_processed(row: StfRow, msg: msgs.ProcessingComplete) -> None:
    row["status"] = m.FileStatus.PROCESSED
    row["metadata"] = {
        **(row.get("metadata") or {}),
        "outputs": msg.outputs,
        "processing_time_s": msg.processing_time_s,
    }


def bulk_stf_gen(messages: list[msgs.StfGen], batch: Batch) -> None:
    _project_stfs(messages, batch, m.FileStatus.GENERATED, _merge_gen, _STF_FIELDS)


def bulk_stf_ready(messages: list[msgs.StfReady], batch: Batch) -> None:
    _project_stfs(messages, batch, m.FileStatus.REGISTERED, _merge_ready, _STF_FIELDS)


def bulk_processing_complete(messages: list[msgs.ProcessingComplete], batch: Batch) -> None:
    _project_stfs(messages, batch, m.FileStatus.PROCESSED, _merge_processed, ["status", "metadata"])


SliceName = tuple[str, int]
"""A slice's natural key: its sample's name and its number in the sample."""

SliceRow = dict[str, Any]
"""A slice as plain values by attname (``id``, ``sample_id``, ``status``, ...): as read, or new
(:func:`fastinsert.new_row`). The slice projections read, merge and write these, not model
instances: building and saving instances cost them more than the database's work."""

_SLICE_FIELDS = [
    "sample_id",
    "tf_first",
    "tf_last",
    "tf_count",
    "stf_filename",
    "run_number",
    "status",
    "retries",
    "assigned_worker",
    "completed_at",
    "processing_time_s",
    "error",
    "updated_at",
]
"""What the slice projections write to a slice that exists (by attname)."""

_SLICE_READ = ("id", "tf_filename", "slice_id", *_SLICE_FIELDS[:-1])
"""What they read of it: its keys and what they may merge into."""


def _existing_slices(messages: list[Any]) -> dict[SliceName, SliceRow]:
    samples = {msg.tf_filename for msg in messages}
    ids = {msg.slice_id for msg in messages}
    rows = (
        m.TFSlice.objects.filter(tf_filename__in=samples, slice_id__in=ids)
        .order_by()
        .values_list(*_SLICE_READ)
    )
    return {(row[1], row[2]): dict(zip(_SLICE_READ, row, strict=True)) for row in rows}


def _sample_keys(names: set[str]) -> dict[str, Any]:
    """The primary keys of the samples (FastMonFile) of these names, by name."""
    if not names:
        return {}
    return dict(
        m.FastMonFile.objects.filter(tf_filename__in=names)
        .order_by()
        .values_list("tf_filename", "pk")
    )


def _counted_as(row: SliceRow) -> SliceKey:
    return (row["run_number"], row["status"])


def _slice_changes(
    before: dict[SliceName, SliceKey],
    changed: dict[SliceName, SliceRow],
    new: dict[SliceName, SliceRow],
) -> Changes:
    """What a batch's slice writes change in the runs' counters (``before``: as read)."""
    changes = Changes()
    for key, row in changed.items():
        changes.slice_moved(before[key], _counted_as(row))
    for row in new.values():
        changes.slice_moved(None, _counted_as(row))
    return changes


def _write_slices(new: dict[SliceName, SliceRow], changed: dict[SliceName, SliceRow]) -> None:
    """One insert of the new slices (their auto keys are not read back: not used after) and one
    update of the changed ones."""
    insert_dicts(m.TFSlice, new.values())
    update_dicts(m.TFSlice, changed.values(), _SLICE_FIELDS)


def bulk_slice(messages: list[msgs.Slice], batch: Batch) -> None:
    samples = _sample_keys({msg.tf_filename for msg in messages})
    existing = _existing_slices(messages)
    before = {key: _counted_as(row) for key, row in existing.items()}
    new: dict[SliceName, SliceRow] = {}
    changed: dict[SliceName, SliceRow] = {}
    now = timezone.now()
    for msg in messages:
        ensure_run(msg, batch)
        key = (msg.tf_filename, msg.slice_id)
        values = {
            "sample_id": samples.get(msg.tf_filename),
            "tf_first": msg.tf_first,
            "tf_last": msg.tf_last,
            "tf_count": msg.tf_count,
            "stf_filename": msg.stf_filename,
            "run_number": msg.run_id,
        }
        row = existing.get(key) or new.get(key)
        if row is None:
            new[key] = new_row(
                m.TFSlice,
                tf_filename=msg.tf_filename,
                slice_id=msg.slice_id,
                status=m.SliceStatus.QUEUED,
                retries=msg.retries,
                **values,
            )
            continue
        _merge_slice(row, msg, values)
        row["updated_at"] = now
        if key in existing:
            changed[key] = row
    _write_slices(new, changed)
    batch.counters.merge(_slice_changes(before, changed, new))


def _merge_slice(row: SliceRow, msg: msgs.Slice, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is not None:
            row[name] = value
    # a retry re-queues a slice that has not completed; an older copy changes nothing
    if (
        msg.retries >= row["retries"]
        and row["status"] != m.SliceStatus.COMPLETED
        and msg.retries > 0
    ):
        row["status"] = m.SliceStatus.QUEUED
        row["retries"] = msg.retries


def _apply_result(row: SliceRow, msg: msgs.SliceResult) -> None:
    if row["status"] != m.SliceStatus.COMPLETED:  # completed is final
        row["status"] = msg.status
    row["assigned_worker"] = msg.worker_id[:255]
    row["completed_at"] = msg.timestamp
    row["processing_time_s"] = msg.processing_time_s
    row["error"] = msg.error


def bulk_slice_result(messages: list[msgs.SliceResult], batch: Batch) -> None:
    existing = _existing_slices(messages)
    before = {key: _counted_as(row) for key, row in existing.items()}
    # the samples of the slices made here, for results that come before their slice
    samples = _sample_keys(
        {msg.tf_filename for msg in messages if (msg.tf_filename, msg.slice_id) not in existing}
    )
    new: dict[SliceName, SliceRow] = {}
    changed: dict[SliceName, SliceRow] = {}
    now = timezone.now()
    for msg in messages:
        ensure_run(msg, batch)
        key = (msg.tf_filename, msg.slice_id)
        row = existing.get(key) or new.get(key)
        if row is None:
            row = new[key] = new_row(
                m.TFSlice,
                tf_filename=msg.tf_filename,
                slice_id=msg.slice_id,
                run_number=msg.run_id,
                tf_first=0,
                tf_last=0,
                tf_count=0,
                sample_id=samples.get(msg.tf_filename),
            )
        elif key in existing:
            changed[key] = row
        _apply_result(row, msg)
        row["updated_at"] = now
    _write_slices(new, changed)
    changes = _slice_changes(before, changed, new)
    for run_number in _count_for_workers(messages):
        changes.workers_changed(run_number)
    batch.counters.merge(changes)


_WORKER_SET = ["run_number", "last_heartbeat", "current_slice_id", "tf_filename", "status"]
_WORKER_ADDED = ["slices_completed", "slices_failed"]


def _count_for_workers(messages: list[msgs.SliceResult]) -> set[int]:
    """Workers' own counts; returns the runs whose active workers changed (joined or left).

    One read, an insert of the workers not known yet and one ``executemany`` that adds each
    worker's results to its counts (relative: a concurrent write is not lost).
    """
    by_worker: dict[str, list[msgs.SliceResult]] = {}
    for msg in messages:
        by_worker.setdefault(msg.worker_id[:255], []).append(msg)
    runs_before = dict(
        m.Worker.objects.filter(worker_id__in=by_worker)
        .order_by()
        .values_list("worker_id", "run_number")
    )
    unknown = [
        m.Worker(
            worker_id=wid,
            namespace_id=results[0].namespace,
            run_number=results[0].run_id,
            started_at=min(r.timestamp for r in results),
        )
        for wid, results in by_worker.items()
        if wid not in runs_before
    ]
    if unknown:
        m.Worker.objects.bulk_create(unknown, ignore_conflicts=True)
    rows = []
    for wid, results in by_worker.items():
        last = max(results, key=lambda r: r.timestamp)
        done = sum(1 for r in results if r.status == "completed")
        # in the order of _WORKER_ADDED, _WORKER_SET, then the key
        rows.append(
            (
                done,
                len(results) - done,
                last.run_id,
                last.timestamp,
                None,
                last.tf_filename[:255],
                "active",
                wid,
            )
        )
    update_rows(
        m.Worker,
        fields_named(m.Worker, _WORKER_SET),
        rows,
        increments=fields_named(m.Worker, _WORKER_ADDED),
    )
    left = {run for run in runs_before.values() if run is not None}
    return left | {msg.run_id for msg in messages}


def bulk_tf_file_registered(messages: list[msgs.TfFileRegistered], batch: Batch) -> None:
    stf_names = {msg.stf_filename for msg in messages}
    stfs = {s.stf_filename: s for s in m.StfFile.objects.filter(stf_filename__in=stf_names)}
    missing = [msg for msg in messages if msg.stf_filename not in stfs]
    created: dict[str, m.StfFile] = {}
    for msg in missing:
        if msg.stf_filename not in created:
            created[msg.stf_filename] = m.StfFile(
                stf_filename=msg.stf_filename,
                run=ensure_run(msg, batch),
                status=m.FileStatus.REGISTERED,
            )
    m.StfFile.objects.bulk_create(list(created.values()))
    stfs.update(created)
    names = {msg.tf_filename for msg in messages}
    existing = {s.tf_filename: s for s in m.FastMonFile.objects.filter(tf_filename__in=names)}
    stf_before = {name: sample.stf_file_id for name, sample in existing.items()}
    new: dict[str, m.FastMonFile] = {}
    changed: dict[str, m.FastMonFile] = {}
    now = timezone.now()
    for msg in messages:
        ensure_run(msg, batch)
        values = {
            "stf_file": stfs[msg.stf_filename],
            "tf_first": msg.tf_first,
            "tf_last": msg.tf_last,
            "tf_count": msg.tf_count,
            "file_size_bytes": msg.size_bytes,
        }
        sample = existing.get(msg.tf_filename) or new.get(msg.tf_filename)
        if sample is None:
            new[msg.tf_filename] = m.FastMonFile(
                tf_filename=msg.tf_filename, status=m.FileStatus.REGISTERED, **values
            )
        else:
            for name, value in values.items():
                setattr(sample, name, value)
            sample.updated_at = now
            if msg.tf_filename in existing:
                changed[msg.tf_filename] = sample
    m.FastMonFile.objects.bulk_create(list(new.values()))
    if changed:
        update_objects(
            list(changed.values()),
            ["stf_file", "tf_first", "tf_last", "tf_count", "file_size_bytes", "updated_at"],
        )
    run_of = runs_of_stf_files(
        {*stf_before.values(), *(s.stf_file_id for s in [*changed.values(), *new.values()])}
    )
    changes = Changes()
    for name, sample in changed.items():
        changes.sample_moved(run_of.get(stf_before[name]), run_of.get(sample.stf_file_id))
    for sample in new.values():
        changes.sample_moved(None, run_of.get(sample.stf_file_id))
    orphans = list(m.TFSlice.objects.filter(tf_filename__in=names, sample__isnull=True))
    if orphans:  # slices that arrived before their sample
        samples = {**existing, **new}
        for item in orphans:
            item.sample = samples[item.tf_filename]
        update_objects(orphans, ["sample"])
    batch.counters.merge(changes)


# --------------------------------------------------------------------------- agents' own logs


def _text(value: str) -> str:
    return value.replace("\x00", "\ufffd")  # PostgreSQL refuses NUL in text and in JSON


def _log_rows(msg: msgs.LogBatch) -> list[m.AppLog]:
    common = {
        "namespace_id": msg.namespace,
        "source_msg_id": msg.msg_id,
        "app_name": _text(msg.agent_type)[:100],
        "instance_name": msg.agent_name,
        "process": msg.pid,
    }
    rows = []
    for rec in msg.records:
        extra: dict[str, Any] = {
            "logger": _text(rec.logger),
            "thread": _text(rec.thread),
            "instance_id": _text(msg.instance_id),
            "hostname": _text(msg.hostname),
        }
        if rec.exception:
            extra["exception"] = _text(rec.exception)
        if rec.execution_id:
            extra["execution_id"] = rec.execution_id
        if rec.run_id is not None:
            extra["run_id"] = rec.run_id
        rows.append(
            m.AppLog(
                **common,
                timestamp=rec.timestamp,
                level=rec.level,
                levelname=_text(rec.levelname),
                message=_text(rec.message),
                module=_text(rec.module),
                funcname=_text(rec.funcname),
                lineno=rec.lineno,
                extra_data=extra,
                execution_id=rec.execution_id or "",
                run_id=rec.run_id,
            )
        )
    if msg.dropped:
        # the gap is shown where it happened, in the agent's own log
        rows.append(
            m.AppLog(
                **common,
                timestamp=msg.timestamp,
                level=logging.WARNING,
                levelname="WARNING",
                message=(
                    f"{msg.dropped} log record{'s' if msg.dropped != 1 else ''} dropped: "
                    f"the agent's log buffer ({msg.buffer_size} records) was full "
                    f"({msg.dropped_total} dropped since it started)"
                ),
                module="logship",
                funcname="",
                lineno=0,
                extra_data={
                    "logger": m.AppLog.DROPPED_LOGGER,
                    "dropped": msg.dropped,
                    "dropped_total": msg.dropped_total,
                    "instance_id": _text(msg.instance_id),
                    "hostname": _text(msg.hostname),
                },
            )
        )
    return rows


def on_log_batch(msg: msgs.LogBatch, batch: Batch) -> None:
    m.AppLog.objects.bulk_create(_log_rows(msg))


def bulk_log_batch(messages: list[msgs.LogBatch], batch: Batch) -> None:
    m.AppLog.objects.bulk_create(
        [row for msg in messages for row in _log_rows(msg)], batch_size=500
    )

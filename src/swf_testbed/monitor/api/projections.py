"""Projecting the message stream into the bookkeeping tables.

Each new message (seen for the first time: recording is idempotent, so each
is projected exactly once) updates the tables it concerns:

* ``heartbeat`` → SystemAgent
* run lifecycle (``run_imminent``, ``start_run``, ``pause_run``,
  ``resume_run``, ``end_run``) → Run, RunState, SystemStateEvent
* ``stf_gen`` / ``stf_ready`` / ``processing_complete`` → StfFile
* ``tf_file_registered`` → FastMonFile
* ``slice`` / ``slice_result`` → TFSlice, Worker; ``run_imminent_worker`` → RunState
* ``workflow_started`` / ``workflow_completed`` / ``workflow_failed`` → WorkflowExecution

Messages may arrive out of order (different destinations, redeliveries): a
projection never moves state backwards in time, and creates what it refers
to when that is not there yet. The slice and sample counters of RunState are
recounted per batch from TFSlice / FastMonFile, so they cannot drift.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.db import DatabaseError, IntegrityError, InterfaceError, OperationalError, transaction
from django.db.models import Count, F
from django.utils import timezone

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.fastinsert import insert_objects, update_objects

if TYPE_CHECKING:  # recording imports this module
    from swf_testbed.monitor.api.recording import MessageRow

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """What one batch touched, and caches valid for its transaction."""

    runs_to_recount: set[int] = field(default_factory=set)
    runs: dict[int, m.Run] = field(default_factory=dict)
    executions: dict[str, m.WorkflowExecution] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop caches (after a rolled-back savepoint they may hold rows that no longer exist)."""
        self.runs.clear()
        self.executions.clear()


ORDER = (
    "workflow_started",
    "run_imminent",
    "start_run",
    "pause_run",
    "resume_run",
    "stf_gen",
    "stf_ready",
    "processing_complete",
    "tf_file_registered",
    "slice",
    "slice_result",
    "run_imminent_worker",
    "end_run",
    "workflow_completed",
    "workflow_failed",
    "heartbeat",
    "log_batch",
)
"""The order in which a batch's messages are projected, by type (each type keeps the stream's
order).

Every projection tolerates any order anyway (messages of different destinations
have none); this one only makes the common case cheap.
"""


def project_batch(
    pairs: Sequence[tuple[MessageRow, msgs.Message | None]],
) -> list[tuple[MessageRow, str]]:
    """Project the new messages of a batch; returns those whose projection failed, with why.

    High-volume types are projected set-wise (a few queries per batch); when
    that fails, their messages are projected one by one to find the culprit.
    A failing projection is rolled back alone (savepoint) and does not stop
    the others.
    """
    batch = Batch()
    failed: list[tuple[MessageRow, str]] = []
    groups: dict[str, list[tuple[MessageRow, msgs.Message]]] = {}
    for row, msg in pairs:
        if msg is not None and msg.msg_type in HANDLERS:
            groups.setdefault(msg.msg_type, []).append((row, msg))
    for msg_type in ORDER:
        items = groups.get(msg_type)
        if not items:
            continue
        bulk = BULK_HANDLERS.get(msg_type)
        if bulk is not None:
            try:
                with transaction.atomic():
                    bulk([msg for _, msg in items], batch)
                continue
            except (OperationalError, InterfaceError):
                raise
            except Exception as exc:  # noqa: BLE001 - find the culprit one by one
                log.info(
                    "set-wise projection of %d %s failed (%s); one by one",
                    len(items),
                    msg_type,
                    exc,
                )
                batch.forget()
        for row, msg in items:
            try:
                with transaction.atomic():
                    HANDLERS[msg_type](msg, batch)
            except (OperationalError, InterfaceError):
                raise  # the database is away: the whole batch is retried
            except Exception as exc:  # noqa: BLE001 - one message's bookkeeping must not stop the stream
                log.warning("projection of %s %s failed: %s", msg.msg_type, msg.msg_id, exc)
                batch.forget()
                failed.append((row, f"{type(exc).__name__}: {exc}"))
    for run_number in sorted(batch.runs_to_recount):
        try:
            with transaction.atomic():
                recount_run(run_number)
        except (OperationalError, InterfaceError):
            raise
        except DatabaseError as exc:  # pragma: no cover - defensive
            log.warning("recounting run %s failed: %s", run_number, exc)
    return failed


# --------------------------------------------------------------------------- helpers


def ensure_execution(
    execution_id: str, namespace: str | None, at: datetime, batch: Batch
) -> m.WorkflowExecution:
    cached = batch.executions.get(execution_id)
    if cached is not None:
        return cached
    execution, created = m.WorkflowExecution.objects.get_or_create(
        execution_id=execution_id,
        defaults={"namespace_id": namespace, "status": m.ExecutionStatus.RUNNING, "start_time": at},
    )
    if not created and execution.namespace_id is None and namespace:
        execution.namespace_id = namespace  # posted without one (or made by a message without one)
        execution.save(update_fields=["namespace"])
    batch.executions[execution_id] = execution
    return execution


def ensure_run(msg: msgs.RunMessage, batch: Batch) -> m.Run:
    """The run a message is about, created when unknown, and linked to its execution and namespace.

    A run may exist already without either (the v28 data agent POSTs it with
    neither); whichever source knows them fills them in, in any order.
    """
    cached = batch.runs.get(msg.run_id)
    if cached is not None:
        return cached
    execution = (
        ensure_execution(msg.execution_id, msg.namespace, msg.timestamp, batch)
        if msg.execution_id
        else None
    )
    namespace = msg.namespace or (execution.namespace_id if execution is not None else None)
    run, created = m.Run.objects.get_or_create(
        run_number=msg.run_id,
        defaults={"namespace_id": namespace, "execution": execution, "start_time": msg.timestamp},
    )
    if created:
        m.RunState.objects.filter(run_number=msg.run_id, run__isnull=True).update(run=run)
    else:
        changed = []
        if run.execution_id is None and execution is not None:
            run.execution = execution
            changed.append("execution")
        if run.namespace_id is None and namespace:
            run.namespace_id = namespace
            changed.append("namespace")
        if changed:
            run.save(update_fields=changed)
    batch.runs[msg.run_id] = run
    return run


def ensure_stf(
    msg: msgs.RunMessage, filename: str, batch: Batch, **defaults: Any
) -> tuple[m.StfFile, bool]:
    run = ensure_run(msg, batch)
    return m.StfFile.objects.get_or_create(stf_filename=filename, defaults={"run": run, **defaults})


def _state_change(msg: msgs.RunMessage, phase: str, batch: Batch, **event_data: Any) -> None:
    """RunState and a SystemStateEvent for a lifecycle message.

    A v28 ``end_run`` carries no state: it is the run's last state, when one is
    known, and stays empty otherwise (never made up).
    """
    run = ensure_run(msg, batch)
    state, _ = m.RunState.objects.get_or_create(
        run_number=msg.run_id, defaults={"run": run, "state_changed_at": msg.timestamp}
    )
    if state.run_id is None:
        state.run = run
    daq_state = msg.state.value if msg.state is not None else state.state
    daq_substate = msg.substate.value if msg.substate is not None else state.substate
    if not state.state or msg.timestamp >= state.state_changed_at:
        state.phase = phase
        state.state = daq_state
        state.substate = daq_substate
        state.state_changed_at = msg.timestamp
    state.save()
    m.SystemStateEvent.objects.create(
        timestamp=msg.timestamp,
        run_number=msg.run_id,
        namespace_id=msg.namespace or run.namespace_id,
        execution_id=msg.execution_id or "",
        event_type=msg.msg_type,
        state=daq_state,
        substate=daq_substate,
        event_data={k: v for k, v in event_data.items() if v not in (None, "", {})},
        msg_id=msg.msg_id,
    )


_RUN_COUNTERS = [
    "slices_created",
    "slices_queued",
    "slices_processing",
    "slices_completed",
    "slices_failed",
    "stf_samples_received",
    "active_worker_count",
    "updated_at",
]


def recount_run(run_number: int) -> None:
    """Slice and sample counters of a run, counted from the tables they summarise.

    Called by the ingest after a batch and by the REST writes of slices and samples. The run state's
    row is locked before counting (PostgreSQL; SQLite has one writer at a time): a count made by a
    transaction that commits later then always sees what the earlier ones wrote, so the last writer
    leaves the true figures. Only the counters are written, never a phase or state set meanwhile.
    """
    state = m.RunState.objects.select_for_update().filter(run_number=run_number).first()
    if state is None:
        state, _ = m.RunState.objects.get_or_create(
            run_number=run_number,
            defaults={"run": m.Run.objects.filter(run_number=run_number).first()},
        )
        state = m.RunState.objects.select_for_update().get(pk=state.pk)
    by_status = dict(
        m.TFSlice.objects.filter(run_number=run_number)
        .order_by()
        .values_list("status")
        .annotate(n=Count("id"))
    )
    samples = m.FastMonFile.objects.filter(stf_file__run__run_number=run_number).count()
    active = m.Worker.objects.filter(run_number=run_number, status="active").count()
    state.slices_created = sum(by_status.values())
    state.slices_queued = by_status.get(m.SliceStatus.QUEUED, 0)
    state.slices_processing = by_status.get(m.SliceStatus.PROCESSING, 0)
    state.slices_completed = by_status.get(m.SliceStatus.COMPLETED, 0)
    state.slices_failed = by_status.get(m.SliceStatus.FAILED, 0)
    state.stf_samples_received = samples
    state.active_worker_count = active
    state.save(update_fields=_RUN_COUNTERS)


def recount_run_alone(run_number: int) -> None:
    """:func:`recount_run` in a transaction of its own (after a REST write of a slice or sample).

    A run state made at the same moment by the ingest is a unique conflict: counted again then.
    """
    for attempt in (1, 2):
        try:
            with transaction.atomic():
                recount_run(run_number)
            return
        except IntegrityError:
            if attempt == 2:
                raise


# --------------------------------------------------------------------------- agents


def on_heartbeat(msg: msgs.Heartbeat, batch: Batch) -> None:
    agent = m.SystemAgent.objects.filter(
        namespace_id=msg.namespace, instance_name=msg.agent_name
    ).first()
    if agent is None:
        agent = m.SystemAgent(namespace_id=msg.namespace, instance_name=msg.agent_name)
    elif agent.last_heartbeat is not None and msg.timestamp < agent.last_heartbeat:
        return  # an older heartbeat, redelivered late: it must not undo a newer one
    agent.agent_type = msg.agent_type
    agent.instance_id = msg.instance_id
    agent.pid = msg.pid
    agent.hostname = msg.hostname
    agent.operational_state = msg.operational_state.value
    agent.status = msg.status.value
    agent.mq_connected = msg.mq_connected
    agent.heartbeat_interval = msg.interval_s
    agent.description = msg.description
    agent.counters = dict(msg.counters)
    agent.last_heartbeat = msg.timestamp
    agent.save()


def bulk_heartbeat(messages: list[msgs.Heartbeat], batch: Batch) -> None:
    """Only the newest heartbeat of each agent in the batch: projected in order, it is the one that
    would stay.

    (``on_heartbeat`` skips an older one and a newer one overwrites every
    field; of equal timestamps the later in the stream wins.) Every heartbeat
    is still recorded as a message; this saves a read and a write per beat.
    """
    newest: dict[tuple[str, str], msgs.Heartbeat] = {}
    for msg in messages:
        key = (msg.namespace, msg.agent_name)
        kept = newest.get(key)
        if kept is None or msg.timestamp >= kept.timestamp:
            newest[key] = msg
    for msg in newest.values():
        on_heartbeat(msg, batch)


# --------------------------------------------------------------------------- run lifecycle


_PHASES = {
    "run_imminent": "imminent",
    "start_run": "running",
    "pause_run": "paused",
    "resume_run": "running",
    "end_run": "ended",
}


def on_run_imminent(msg: msgs.RunImminent, batch: Batch) -> None:
    run = ensure_run(msg, batch)
    if msg.run_conditions:
        run.run_conditions = msg.run_conditions
        run.save(update_fields=["run_conditions"])
    _state_change(msg, _PHASES[msg.msg_type], batch, run_conditions=msg.run_conditions)


def on_run_transition(msg: msgs.RunMessage, batch: Batch) -> None:
    _state_change(msg, _PHASES[msg.msg_type], batch, reason=getattr(msg, "reason", None))


def on_end_run(msg: msgs.EndRun, batch: Batch) -> None:
    run = ensure_run(msg, batch)
    run.end_time = msg.timestamp
    run.total_stf_files = msg.total_stf_files
    run.save(update_fields=["end_time", "total_stf_files"])
    _state_change(msg, _PHASES[msg.msg_type], batch, total_stf_files=msg.total_stf_files)


# --------------------------------------------------------------------------- data flow


def on_stf_gen(msg: msgs.StfGen, batch: Batch) -> None:
    bulk_stf_gen([msg], batch)


def on_stf_ready(msg: msgs.StfReady, batch: Batch) -> None:
    bulk_stf_ready([msg], batch)


def on_processing_complete(msg: msgs.ProcessingComplete, batch: Batch) -> None:
    stf, _ = ensure_stf(msg, msg.filename, batch, status=m.FileStatus.PROCESSED)
    stf.status = m.FileStatus.PROCESSED
    stf.metadata = {
        **(stf.metadata or {}),
        "outputs": msg.outputs,
        "processing_time_s": msg.processing_time_s,
    }
    stf.save(update_fields=["status", "metadata", "updated_at"])


def on_tf_file_registered(msg: msgs.TfFileRegistered, batch: Batch) -> None:
    bulk_tf_file_registered([msg], batch)


def on_slice(msg: msgs.Slice, batch: Batch) -> None:
    bulk_slice([msg], batch)


def on_slice_result(msg: msgs.SliceResult, batch: Batch) -> None:
    bulk_slice_result([msg], batch)


def on_run_imminent_worker(msg: msgs.RunImminentWorker, batch: Batch) -> None:
    run = ensure_run(msg, batch)
    state, _ = m.RunState.objects.get_or_create(
        run_number=msg.run_id, defaults={"run": run, "state_changed_at": msg.timestamp}
    )
    state.target_worker_count = msg.target_worker_count
    state.save(update_fields=["target_worker_count", "updated_at"])


# --------------------------------------------------------------------------- workflow replies


def _definition_for(msg: msgs.WorkflowStarted) -> m.WorkflowDefinition:
    """The definition the execution ran: by name and version, created (once) when unknown."""
    config = msg.config
    version = str(
        msg.workflow_version or config.get("workflow_version") or config.get("version") or ""
    )[:50]
    name = msg.workflow_name[:200]
    if not version:
        found = (
            m.WorkflowDefinition.objects.filter(workflow_name=name).order_by("-created_at").first()
        )
        if found is not None:
            return found
        version = "unversioned"
    definition, _ = m.WorkflowDefinition.objects.get_or_create(
        workflow_name=name,
        version=version,
        defaults={
            "workflow_type": str(config.get("workflow_type", ""))[:100],
            "parameter_values": config,
            "definition": msg.workflow_module,
            "created_by": msg.sender,
        },
    )
    return definition


def on_workflow_started(msg: msgs.WorkflowStarted, batch: Batch) -> None:
    execution = ensure_execution(msg.execution_id, msg.namespace, msg.timestamp, batch)
    execution.workflow_definition = _definition_for(msg)
    execution.namespace_id = msg.namespace
    if execution.status in (m.ExecutionStatus.PENDING, m.ExecutionStatus.RUNNING):
        execution.status = m.ExecutionStatus.RUNNING
    provenance = {
        "workflow_name": msg.workflow_name,
        "workflow_version": msg.workflow_version,
        "workflow_module": msg.workflow_module,
        "git_commit": msg.git_commit,
        "time_scale": msg.time_scale,
    }
    execution.parameter_values = {
        **msg.config,
        **{k: v for k, v in provenance.items() if v not in ("", None)},
    }
    user = msg.config.get("user") or msg.config.get("executed_by") or msg.sender
    execution.executed_by = str(user)[:150]
    execution.start_time = msg.timestamp
    execution.save()


def on_workflow_completed(msg: msgs.WorkflowCompleted, batch: Batch) -> None:
    execution = ensure_execution(msg.execution_id, msg.namespace, msg.timestamp, batch)
    execution.status = msg.status
    execution.end_time = msg.timestamp
    execution.performance_metrics = {
        **(execution.performance_metrics or {}),
        "stf_count": msg.stf_count,
    }
    execution.save()


def on_workflow_failed(msg: msgs.WorkflowFailed, batch: Batch) -> None:
    if msg.refused or not msg.execution_id:
        return  # a refused request started nothing
    execution = ensure_execution(msg.execution_id, msg.namespace, msg.timestamp, batch)
    execution.status = m.ExecutionStatus.FAILED
    execution.end_time = msg.timestamp
    execution.error = msg.error
    execution.save()


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
    "updated_at",
]


def _stf_files_for_update(names: set[str]) -> dict[str, m.StfFile]:
    """The STF files of these names, by name, locked until the batch commits (PostgreSQL).

    So that a REST update of the same files, committed between this read and the batch's write,
    is not overwritten with what was read (an STF's status never moves back). NO KEY: the REST
    inserts of samples that refer to these files (a foreign-key check) are not blocked, which
    would deadlock.
    """
    locked = m.StfFile.objects.select_for_update(no_key=True).filter(stf_filename__in=names)
    return {stf.stf_filename: stf for stf in locked}


def _bulk_stf(messages: list[Any], batch: Batch, status: str, values_of: Any, merge: Any) -> None:
    names = {msg.filename for msg in messages}
    existing = _stf_files_for_update(names)
    new: dict[str, m.StfFile] = {}
    changed: dict[str, m.StfFile] = {}
    now = timezone.now()
    for msg in messages:
        run = ensure_run(msg, batch)
        values = values_of(msg)
        stf = existing.get(msg.filename) or new.get(msg.filename)
        if stf is None:
            new[msg.filename] = m.StfFile(
                stf_filename=msg.filename, run=run, status=status, **values
            )
            continue
        merge(stf, values)
        stf.updated_at = now
        if msg.filename in existing:
            changed[msg.filename] = stf
    insert_objects(list(new.values()))  # their keys (UUIDs) are set already
    if changed:
        update_objects(list(changed.values()), _STF_FIELDS)


def bulk_processing_complete(messages: list[msgs.ProcessingComplete], batch: Batch) -> None:
    """``on_processing_complete`` for a batch: one read, one insert and one update."""
    names = {msg.filename for msg in messages}
    existing = _stf_files_for_update(names)
    new: dict[str, m.StfFile] = {}
    changed: dict[str, m.StfFile] = {}
    now = timezone.now()
    for msg in messages:
        run = ensure_run(msg, batch)
        stf = existing.get(msg.filename) or new.get(msg.filename)
        if stf is None:
            stf = new[msg.filename] = m.StfFile(stf_filename=msg.filename, run=run, metadata={})
        elif msg.filename in existing:
            changed[msg.filename] = stf
        stf.status = m.FileStatus.PROCESSED
        stf.metadata = {
            **(stf.metadata or {}),
            "outputs": msg.outputs,
            "processing_time_s": msg.processing_time_s,
        }
        stf.updated_at = now
    insert_objects(list(new.values()))
    update_objects(list(changed.values()), ["status", "metadata", "updated_at"])


def _merge_gen(stf: m.StfFile, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if name == "metadata":
            value = {**(stf.metadata or {}), **value}
        setattr(stf, name, value)


def _merge_ready(stf: m.StfFile, values: dict[str, Any]) -> None:
    for name, value in values.items():
        setattr(stf, name, value)
    if stf.status == m.FileStatus.GENERATED:
        stf.status = m.FileStatus.REGISTERED


def bulk_stf_gen(messages: list[msgs.StfGen], batch: Batch) -> None:
    _bulk_stf(messages, batch, m.FileStatus.GENERATED, _stf_gen_values, _merge_gen)


def bulk_stf_ready(messages: list[msgs.StfReady], batch: Batch) -> None:
    _bulk_stf(messages, batch, m.FileStatus.REGISTERED, _stf_ready_values, _merge_ready)


def _existing_slices(messages: list[Any]) -> dict[tuple[str, int], m.TFSlice]:
    samples = {msg.tf_filename for msg in messages}
    ids = {msg.slice_id for msg in messages}
    return {
        (item.tf_filename, item.slice_id): item
        for item in m.TFSlice.objects.filter(tf_filename__in=samples, slice_id__in=ids)
    }


_SLICE_FIELDS = [
    "sample",
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


def bulk_slice(messages: list[msgs.Slice], batch: Batch) -> None:
    samples = {
        s.tf_filename: s
        for s in m.FastMonFile.objects.filter(tf_filename__in={msg.tf_filename for msg in messages})
    }
    existing = _existing_slices(messages)
    new: dict[tuple[str, int], m.TFSlice] = {}
    changed: dict[tuple[str, int], m.TFSlice] = {}
    now = timezone.now()
    for msg in messages:
        ensure_run(msg, batch)
        key = (msg.tf_filename, msg.slice_id)
        values = {
            "sample": samples.get(msg.tf_filename),
            "tf_first": msg.tf_first,
            "tf_last": msg.tf_last,
            "tf_count": msg.tf_count,
            "stf_filename": msg.stf_filename,
            "run_number": msg.run_id,
        }
        item = existing.get(key) or new.get(key)
        if item is None:
            new[key] = m.TFSlice(
                tf_filename=msg.tf_filename,
                slice_id=msg.slice_id,
                status=m.SliceStatus.QUEUED,
                retries=msg.retries,
                **values,
            )
            continue
        _merge_slice(item, msg, values)
        item.updated_at = now
        if key in existing:
            changed[key] = item
    batch.runs_to_recount.update(msg.run_id for msg in messages)
    insert_objects(list(new.values()))  # not used after: their auto keys are not needed
    if changed:
        update_objects(list(changed.values()), _SLICE_FIELDS)


def _merge_slice(item: m.TFSlice, msg: msgs.Slice, values: dict[str, Any]) -> None:
    for name, value in values.items():
        if value is not None:
            setattr(item, name, value)
    # a retry re-queues a slice that has not completed; an older copy changes nothing
    if msg.retries >= item.retries and item.status != m.SliceStatus.COMPLETED and msg.retries > 0:
        item.status = m.SliceStatus.QUEUED
        item.retries = msg.retries


def _apply_result(item: m.TFSlice, msg: msgs.SliceResult) -> None:
    if item.status != m.SliceStatus.COMPLETED:  # completed is final
        item.status = msg.status
    item.assigned_worker = msg.worker_id[:255]
    item.completed_at = msg.timestamp
    item.processing_time_s = msg.processing_time_s
    item.error = msg.error


def bulk_slice_result(messages: list[msgs.SliceResult], batch: Batch) -> None:
    existing = _existing_slices(messages)
    samples = {
        s.tf_filename: s
        for s in m.FastMonFile.objects.filter(tf_filename__in={msg.tf_filename for msg in messages})
    }
    new: dict[tuple[str, int], m.TFSlice] = {}
    changed: dict[tuple[str, int], m.TFSlice] = {}
    now = timezone.now()
    for msg in messages:
        ensure_run(msg, batch)
        key = (msg.tf_filename, msg.slice_id)
        item = existing.get(key) or new.get(key)
        if item is None:
            item = new[key] = m.TFSlice(
                tf_filename=msg.tf_filename,
                slice_id=msg.slice_id,
                run_number=msg.run_id,
                tf_first=0,
                tf_last=0,
                tf_count=0,
                sample=samples.get(msg.tf_filename),
            )
        elif key in existing:
            changed[key] = item
        _apply_result(item, msg)
        item.updated_at = now
        batch.runs_to_recount.add(msg.run_id)
    insert_objects(list(new.values()))  # not used after: their auto keys are not needed
    if changed:
        update_objects(list(changed.values()), _SLICE_FIELDS)
    _count_for_workers(messages)


def _count_for_workers(messages: list[msgs.SliceResult]) -> None:
    by_worker: dict[str, list[msgs.SliceResult]] = {}
    for msg in messages:
        by_worker.setdefault(msg.worker_id[:255], []).append(msg)
    known = set(
        m.Worker.objects.filter(worker_id__in=by_worker).values_list("worker_id", flat=True)
    )
    m.Worker.objects.bulk_create(
        [
            m.Worker(
                worker_id=wid,
                namespace_id=results[0].namespace,
                run_number=results[0].run_id,
                started_at=min(r.timestamp for r in results),
            )
            for wid, results in by_worker.items()
            if wid not in known
        ],
        ignore_conflicts=True,
    )
    for wid, results in by_worker.items():
        last = max(results, key=lambda r: r.timestamp)
        done = sum(1 for r in results if r.status == "completed")
        m.Worker.objects.filter(pk=wid).update(
            slices_completed=F("slices_completed") + done,
            slices_failed=F("slices_failed") + (len(results) - done),
            run_number=last.run_id,
            last_heartbeat=last.timestamp,
            current_slice_id=None,
            tf_filename=last.tf_filename[:255],
            status="active",
        )


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
        batch.runs_to_recount.add(msg.run_id)
    m.FastMonFile.objects.bulk_create(list(new.values()))
    if changed:
        update_objects(
            list(changed.values()),
            ["stf_file", "tf_first", "tf_last", "tf_count", "file_size_bytes", "updated_at"],
        )
    orphans = list(m.TFSlice.objects.filter(tf_filename__in=names, sample__isnull=True))
    if orphans:  # slices that arrived before their sample
        samples = {**existing, **new}
        for item in orphans:
            item.sample = samples[item.tf_filename]
        update_objects(orphans, ["sample"])


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


BULK_HANDLERS: dict[str, Callable[[Any, Batch], None]] = {
    "log_batch": bulk_log_batch,
    "heartbeat": bulk_heartbeat,
    "stf_gen": bulk_stf_gen,
    "stf_ready": bulk_stf_ready,
    "processing_complete": bulk_processing_complete,
    "tf_file_registered": bulk_tf_file_registered,
    "slice": bulk_slice,
    "slice_result": bulk_slice_result,
}


HANDLERS: dict[str, Callable[[Any, Batch], None]] = {
    "heartbeat": on_heartbeat,
    "run_imminent": on_run_imminent,
    "start_run": on_run_transition,
    "pause_run": on_run_transition,
    "resume_run": on_run_transition,
    "end_run": on_end_run,
    "stf_gen": on_stf_gen,
    "stf_ready": on_stf_ready,
    "processing_complete": on_processing_complete,
    "tf_file_registered": on_tf_file_registered,
    "slice": on_slice,
    "slice_result": on_slice_result,
    "run_imminent_worker": on_run_imminent_worker,
    "workflow_started": on_workflow_started,
    "workflow_completed": on_workflow_completed,
    "workflow_failed": on_workflow_failed,
    "log_batch": on_log_batch,
}

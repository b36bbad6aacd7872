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
kept by differences (:mod:`run_counters`), applied at the end of each batch,
and counted exactly when a run ends.

This module dispatches and holds the one-message handlers; the set-wise forms
of the high-volume types are in :mod:`bulk_projections`, and what both share
(the batch's caches, the rows a message refers to) in :mod:`projection_support`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import InterfaceError, OperationalError, transaction
from django.utils import timezone

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api import run_counters
from swf_testbed.monitor.api.bulk_projections import (
    bulk_log_batch,
    bulk_processing_complete,
    bulk_slice,
    bulk_slice_result,
    bulk_stf_gen,
    bulk_stf_ready,
    bulk_tf_file_registered,
    on_log_batch,
)
from swf_testbed.monitor.api.fastinsert import insert_objects, update_objects
from swf_testbed.monitor.api.projection_support import (
    Batch,
    ensure_execution,
    ensure_run,
    state_change,
)

if TYPE_CHECKING:  # recording imports this module
    from swf_testbed.monitor.api.recording import MessageRow

log = logging.getLogger(__name__)


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
    run_counters.apply(batch.counters, recounted=batch.runs_to_recount)
    return failed


# --------------------------------------------------------------------------- agents


def _apply_heartbeat(agent: m.SystemAgent, msg: msgs.Heartbeat) -> None:
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


_HEARTBEAT_FIELDS = [
    "agent_type",
    "instance_id",
    "pid",
    "hostname",
    "operational_state",
    "status",
    "mq_connected",
    "heartbeat_interval",
    "description",
    "counters",
    "last_heartbeat",
    "updated_at",
]
"""What a heartbeat writes (``updated_at``: ``update_objects`` does not apply ``auto_now``)."""


def _is_older(agent: m.SystemAgent, msg: msgs.Heartbeat) -> bool:
    """An older heartbeat, redelivered late: it must not undo a newer one."""
    return agent.last_heartbeat is not None and msg.timestamp < agent.last_heartbeat


def on_heartbeat(msg: msgs.Heartbeat, batch: Batch) -> None:
    """One heartbeat (the one-by-one fallback): the set-wise rule on a batch of one."""
    bulk_heartbeat([msg], batch)


def bulk_heartbeat(messages: list[msgs.Heartbeat], batch: Batch) -> None:
    """Only the newest heartbeat of each agent in the batch: projected in order, it is the one that
    would stay.

    (An older one than the agent's is skipped and a newer one overwrites every
    field; of equal timestamps the later in the stream wins.) Every heartbeat
    is still recorded as a message. The agents are read in one query and
    written in two statements (new ones, updated ones), not a read and a save
    each: heartbeats are a third of all messages at rest.
    """
    newest: dict[tuple[str, str], msgs.Heartbeat] = {}
    for msg in messages:
        key = (msg.namespace, msg.agent_name)
        kept = newest.get(key)
        if kept is None or msg.timestamp >= kept.timestamp:
            newest[key] = msg
    # by name, matched on the namespace here: one query whatever the namespaces of the batch
    known = {
        (agent.namespace_id, agent.instance_name): agent
        for agent in m.SystemAgent.objects.filter(instance_name__in={k[1] for k in newest})
    }
    new: list[m.SystemAgent] = []
    changed: list[m.SystemAgent] = []
    now = timezone.now()
    for key, msg in newest.items():
        agent = known.get(key)
        if agent is None:
            agent = m.SystemAgent(namespace_id=msg.namespace, instance_name=msg.agent_name)
            new.append(agent)
        elif _is_older(agent, msg):
            continue
        else:
            agent.updated_at = now
            changed.append(agent)
        _apply_heartbeat(agent, msg)
    insert_objects(new)  # not used after: their auto keys are not needed
    update_objects(changed, _HEARTBEAT_FIELDS)


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
    state_change(msg, _PHASES[msg.msg_type], batch, run_conditions=msg.run_conditions)


def on_run_transition(msg: msgs.RunMessage, batch: Batch) -> None:
    state_change(msg, _PHASES[msg.msg_type], batch, reason=getattr(msg, "reason", None))


def on_end_run(msg: msgs.EndRun, batch: Batch) -> None:
    run = ensure_run(msg, batch)
    run.end_time = msg.timestamp
    run.total_stf_files = msg.total_stf_files
    run.save(update_fields=["end_time", "total_stf_files"])
    state_change(msg, _PHASES[msg.msg_type], batch, total_stf_files=msg.total_stf_files)
    batch.runs_to_recount.add(msg.run_id)  # the end of a run: its counters are counted exactly


# --------------------------------------------------------------------------- data flow


def on_stf_gen(msg: msgs.StfGen, batch: Batch) -> None:
    bulk_stf_gen([msg], batch)


def on_stf_ready(msg: msgs.StfReady, batch: Batch) -> None:
    bulk_stf_ready([msg], batch)


def on_processing_complete(msg: msgs.ProcessingComplete, batch: Batch) -> None:
    bulk_processing_complete([msg], batch)


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

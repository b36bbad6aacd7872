"""What every projection shares: the batch's caches and the rows a message refers to.

Kept apart from :mod:`projections` (the dispatch and the one-message handlers) and
:mod:`bulk_projections` (the set-wise ones), which both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.run_counters import Changes


@dataclass
class Batch:
    """What one batch touched, and caches valid for its transaction.

    ``counters``: the differences to the runs' counters of what was projected,
    applied at the end of the batch; a projection adds its own only once its
    writes have succeeded (a rolled-back one adds none). ``runs_to_recount``:
    runs counted exactly instead (``end_run``).
    """

    counters: Changes = field(default_factory=Changes)
    runs_to_recount: set[int] = field(default_factory=set)
    runs: dict[int, m.Run] = field(default_factory=dict)
    executions: dict[str, m.WorkflowExecution] = field(default_factory=dict)

    def forget(self) -> None:
        """Drop caches (after a rolled-back savepoint they may hold rows that no longer exist)."""
        self.runs.clear()
        self.executions.clear()


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


def state_change(msg: msgs.RunMessage, phase: str, batch: Batch, **event_data: Any) -> None:
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

"""The workflow runner: one per namespace, runs workflows on request.

Listens on ``control_queue(ns)``:

``run_workflow`` {workflow_name, config, realtime / time_scale, duration, params}
    The workflow is looked up in the registry
    (:mod:`swf_testbed.workflows.registry`), its config loaded with ``params``
    as overrides. Any problem (unknown workflow or config, unknown or
    ill-typed override, …) → ``workflow_failed`` with the error,
    ``refused`` false, nothing started. Otherwise an execution id
    ``<workflow>-<namespace>-<UTC yyyymmddThhmmssZ>-<6 hex>`` and a run id are
    allocated, ``workflow_started`` (execution id, merged config, workflow
    version / module / git commit, time scale) is replied, and the workflow
    runs in a thread of its own, publishing its run messages on the run
    topic. At the end: ``workflow_completed`` (status ``completed``, or
    ``terminated`` after ``stop_workflow``) or, if the workflow raised,
    ``workflow_failed`` (after an ``end_run`` with the number of STFs
    announced, if the run had started and not ended). Then READY again.
    While an execution runs a second ``run_workflow`` is refused
    (``workflow_failed``, ``refused`` true, naming the running execution).
``stop_workflow`` {execution_id}
    Stops that execution cleanly: the simulator sends ``end_run`` with the
    true STF count, and ``workflow_completed`` status ``terminated`` follows
    (``in_reply_to`` the stop request). An execution id that is not running
    → ``workflow_failed``, ``refused`` true.

A refusal carries no ``execution_id`` (it belongs to no execution; its
error names the one running), so that nothing reading the replies can take it
for the end of that execution.

Replies go to ``replies_topic(ns)``, with ``in_reply_to`` = the request's
``msg_id`` (for ``workflow_completed``: the ``run_workflow``'s, or the
``stop_workflow``'s when it was stopped).

Time scale: ``time_scale`` when given; else 1 when ``realtime``; else 0 (as
fast as possible). ``realtime`` with a time scale other than 1 is an error.

Run ids: ``max(seconds since 2024-01-01T00:00Z, previous + 1)``: increasing
for the runner's namespace, across restarts too (as long as the clock does not
go back), and within 32-bit signed integers until 2092. Run messages carry the
namespace, so (namespace, run id) identifies a run on a shared broker.

Pacing at time scale 0: the runner also listens to the data topic and counts
``processing_complete`` of the running execution. Before each STF is announced
the simulator calls ``pace``, which blocks while ``pace_window`` or more STFs
are announced but not yet processed. So the DAQ never runs further ahead of
the slowest consumer than the window (no unbounded backlog on the broker,
nothing dropped). If nothing is processed for ``pace_timeout`` seconds (e.g.
no processing agent runs), pacing is abandoned for that execution, with a
warning and the ``pace_timeouts`` counter.

Options: ``pace_window`` (100), ``pace_timeout`` (30 s), ``workflow_modules``
(extra modules whose workflows register on import), ``daq_sender`` (sender
name of run messages; default: the agent's name).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from swf_testbed.agents.logship import logging_for
from swf_testbed.agents.runtime import Agent, Listen, handles
from swf_testbed.messages import (
    DaqState,
    DaqSubstate,
    EndRun,
    Message,
    ProcessingComplete,
    RunWorkflow,
    StopWorkflow,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from swf_testbed.mq.destinations import RUN_TOPIC, control_queue, data_topic, replies_topic
from swf_testbed.workflows.config import ConfigError, MergedConfig, load_config
from swf_testbed.workflows.registry import (
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
    WorkflowOutcome,
    get_workflow,
    import_workflow_modules,
)

log = logging.getLogger(__name__)

RUN_ID_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


def resolve_time_scale(msg: RunWorkflow) -> float:
    """The time scale a run_workflow asks for (see the module docstring)."""
    if msg.time_scale is not None:
        if msg.realtime and msg.time_scale != 1:
            raise ValueError(
                f"realtime is true but time_scale is {msg.time_scale:g}; give one or the other"
            )
        return float(msg.time_scale)
    return 1.0 if msg.realtime else 0.0


def new_execution_id(workflow: str, namespace: str, now: datetime | None = None) -> str:
    now = now or datetime.now(UTC)
    return f"{workflow[:60]}-{namespace}-{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclass
class Execution:
    """One running workflow execution."""

    request: RunWorkflow
    definition: WorkflowDefinition
    config: MergedConfig
    ctx: WorkflowContext
    thread: threading.Thread | None = None
    stop_request: StopWorkflow | None = None
    # run bookkeeping, from the messages the workflow emitted
    run_started: bool = False
    run_ended: bool = False
    stf_announced: int = 0
    processed: set[str] = field(default_factory=set)
    pacing: bool = True
    progress: threading.Condition = field(default_factory=threading.Condition)

    @property
    def execution_id(self) -> str:
        return self.ctx.execution_id


class WorkflowRunner(Agent):
    agent_type = "workflow_runner"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        pace_window: int = 100,
        pace_timeout: float = 30.0,
        workflow_modules: list[str] | None = None,
        daq_sender: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        if pace_window < 1 or pace_timeout <= 0:
            raise ValueError("pace_window must be >= 1 and pace_timeout > 0")
        self.pace_window = pace_window
        self.pace_timeout = pace_timeout
        self.daq_sender = daq_sender or name
        import_workflow_modules(workflow_modules or [])
        self.current: Execution | None = None
        self.last_run_id = 0
        self._lock = threading.Lock()

    def listens_on(self) -> list[Listen]:
        return [
            Listen(control_queue(self.namespace)),
            Listen(data_topic(self.namespace), ordered=False),
        ]

    def is_busy(self) -> bool:
        return self.current is not None

    def next_run_id(self) -> int:
        with self._lock:
            now = int((datetime.now(UTC) - RUN_ID_EPOCH).total_seconds())
            self.last_run_id = max(now, self.last_run_id + 1)
            return self.last_run_id

    # ------------------------------------------------------------------ replies

    def _reply(self, msg: Message) -> None:
        self.send(replies_topic(self.namespace), msg)

    def _fail(
        self,
        request: Message,
        workflow_name: str,
        error: str,
        *,
        refused: bool,
        execution_id: str | None = None,
        run_id: int | None = None,
    ) -> None:
        self.count("requests_refused" if refused else "workflows_failed")
        self._reply(
            self.message(
                WorkflowFailed,
                in_reply_to=request.msg_id,
                workflow_name=workflow_name or "unknown",
                error=error[:10_000],
                refused=refused,
                execution_id=execution_id,
                run_id=run_id,
            )
        )

    # ------------------------------------------------------------------ control

    @handles(RunWorkflow)
    def on_run_workflow(self, msg: RunWorkflow) -> None:
        running = self.current
        if running is not None:
            self._fail(
                msg,
                msg.workflow_name,
                f"execution {running.execution_id} of workflow "
                f"{running.definition.name!r} is running in namespace {self.namespace}; stop it "
                "(stop_workflow) or wait for it to end",
                refused=True,
            )
            return
        try:
            definition = get_workflow(msg.workflow_name)
            time_scale = resolve_time_scale(msg)
            config = load_config(msg.config, msg.params)
            definition.check(config)
        except (WorkflowError, ConfigError, ValueError) as exc:
            self._fail(msg, msg.workflow_name, str(exc), refused=False)
            return
        except Exception as exc:  # noqa: BLE001 - whatever it is, the requester gets an answer
            log.exception("%s: cannot prepare %s", self.name, msg.workflow_name)
            self._fail(msg, msg.workflow_name, f"{type(exc).__name__}: {exc}", refused=False)
            return
        execution_id = new_execution_id(definition.name, self.namespace)
        run_id = self.next_run_id()
        execution: Execution
        ctx = WorkflowContext(
            definition=definition,
            config=config,
            namespace=self.namespace,
            execution_id=execution_id,
            run_id=run_id,
            sender=self.daq_sender,
            time_scale=time_scale,
            duration=msg.duration,
            emit=lambda m: self._emit(execution, m),
            pace=(lambda: self._pace(execution)) if time_scale == 0 else None,
        )
        execution = Execution(request=msg, definition=definition, config=config, ctx=ctx)
        self.current = execution
        commit = definition.git_commit or ""
        try:
            self._reply(
                self.message(
                    WorkflowStarted,
                    in_reply_to=msg.msg_id,
                    workflow_name=definition.name,
                    execution_id=execution_id,
                    run_id=run_id,
                    config=config.to_dict(),
                    workflow_version=definition.version,
                    workflow_module=definition.module,
                    git_commit=commit,
                    time_scale=time_scale,
                )
            )
        except Exception:
            self.current = None
            raise
        self.count("workflows_started")
        self.description = f"running {execution_id} (run {run_id})"
        log.info(
            "%s: started %s (workflow %s %s, config %s, run %d, time scale %g)",
            self.name,
            execution_id,
            definition.name,
            definition.version,
            config.name,
            run_id,
            time_scale,
        )
        execution.thread = threading.Thread(
            target=self._execute, args=(execution,), name=f"{self.name}-exec", daemon=True
        )
        execution.thread.start()

    @handles(StopWorkflow)
    def on_stop_workflow(self, msg: StopWorkflow) -> None:
        running = self.current
        if running is None or running.execution_id != msg.execution_id:
            now = f"execution {running.execution_id} is" if running else "nothing is"
            self._fail(
                msg,
                running.definition.name if running else "unknown",
                f"execution {msg.execution_id} is not running in namespace {self.namespace} "
                f"({now} running)",
                refused=True,
            )
            return
        log.info(
            "%s: stopping %s%s",
            self.name,
            msg.execution_id,
            f": {msg.reason}" if msg.reason else "",
        )
        if running.stop_request is None:
            running.stop_request = msg
        self.count("stop_requests")
        running.ctx.stop()
        with running.progress:
            running.progress.notify_all()

    # ------------------------------------------------------------------ pacing

    @handles(ProcessingComplete)
    def on_processing_complete(self, msg: ProcessingComplete) -> None:
        running = self.current
        if running is None or msg.execution_id != running.execution_id or running.ctx.pace is None:
            return  # only a paced execution (time scale 0) needs to know
        with running.progress:
            running.processed.add(msg.filename)
            running.progress.notify_all()

    def _pace(self, execution: Execution) -> None:
        """Called by the simulator before each STF: block while the window is full."""
        last_done = -1
        last_change = time.monotonic()
        with execution.progress:
            while execution.pacing and not execution.ctx.stopping:
                if self._stop.is_set():  # the agent is shutting down: end the run cleanly, now
                    execution.ctx.stop()
                    return
                done = len(execution.processed)
                if execution.stf_announced - done < self.pace_window:
                    return
                now = time.monotonic()
                if done != last_done:
                    last_done, last_change = done, now
                elif now - last_change >= self.pace_timeout:
                    execution.pacing = False
                    self.count("pace_timeouts")
                    log.warning(
                        "%s: %s: no STF processed for %.0f s with %d in flight; no longer "
                        "pacing this execution (is a processing agent running?)",
                        self.name,
                        execution.execution_id,
                        self.pace_timeout,
                        execution.stf_announced - done,
                    )
                    return
                execution.progress.wait(0.25)

    # ------------------------------------------------------------------ the execution

    def _emit(self, execution: Execution, msg: Message) -> None:
        """Publish a run message of the workflow, keeping track of the run."""
        if msg.msg_type == "run_imminent":
            execution.run_started = True
        self.send(RUN_TOPIC, msg)
        if msg.msg_type == "stf_gen":
            with execution.progress:
                execution.stf_announced += 1
            self.count("stf_announced")
        elif msg.msg_type == "end_run":
            execution.run_ended = True

    def _close_run(self, execution: Execution) -> None:
        """end_run for a run the workflow left open (it raised)."""
        ctx = execution.ctx
        self._emit(
            execution,
            self.message(
                EndRun,
                sender=self.daq_sender,
                execution_id=ctx.execution_id,
                run_id=ctx.run_id,
                state=DaqState.BEAM,
                substate=DaqSubstate.NOT_READY,
                total_stf_files=execution.stf_announced,
            ),
        )

    def _execute(self, execution: Execution) -> None:
        # what this thread logs belongs to the execution (and goes to the monitor with it)
        with logging_for(execution.ctx.execution_id, execution.ctx.run_id):
            self._execute_logged(execution)

    def _execute_logged(self, execution: Execution) -> None:
        ctx = execution.ctx
        outcome: WorkflowOutcome | None = None
        error = ""
        try:
            outcome = execution.definition.run(ctx)
        except Exception as exc:  # noqa: BLE001 - reported as workflow_failed
            error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            log.exception("%s: execution %s failed", self.name, ctx.execution_id)
        if execution.run_started and not execution.run_ended:
            try:
                self._close_run(execution)
            except Exception as exc:  # noqa: BLE001 -- folded into the execution's error
                log.error("%s: could not send end_run for run %d: %s", self.name, ctx.run_id, exc)
                error = error or f"could not close run {ctx.run_id}: {exc}"
        request = execution.request
        try:
            if outcome is not None and not error:
                stopped = (
                    outcome.end_reason == "stopped"
                )  # a stop that came after the end changes nothing
                reply_to = (
                    execution.stop_request.msg_id
                    if stopped and execution.stop_request
                    else request.msg_id
                )
                self._reply(
                    self.message(
                        WorkflowCompleted,
                        in_reply_to=reply_to,
                        workflow_name=execution.definition.name,
                        execution_id=ctx.execution_id,
                        run_id=ctx.run_id,
                        status="terminated" if stopped else "completed",
                        stf_count=outcome.stf_count,
                    )
                )
                self.count("workflows_terminated" if stopped else "workflows_completed")
                log.info(
                    "%s: %s %s with %d STFs",
                    self.name,
                    ctx.execution_id,
                    "terminated" if stopped else "completed",
                    outcome.stf_count,
                )
            else:
                self._fail(
                    request,
                    execution.definition.name,
                    error or "the workflow failed",
                    refused=False,
                    execution_id=ctx.execution_id,
                    run_id=ctx.run_id,
                )
        except Exception:  # noqa: BLE001 - the runner must go back to READY whatever happens
            log.exception("%s: could not send the final reply of %s", self.name, ctx.execution_id)
        finally:
            with self._lock:
                if self.current is execution:
                    self.current = None
            self.description = f"last: {ctx.execution_id}"

    def on_stop(self) -> None:
        """Shutting down: stop a running execution cleanly (its end_run and reply still go out)."""
        running = self.current
        if running is None:
            return
        running.ctx.stop()
        if running.thread is not None:
            running.thread.join(max(1.0, self.drain_timeout))

"""Following one workflow execution: what has been seen of it, and a snapshot for the display.

A :class:`WorkflowSession` requests an execution (or attaches to a running
one) and counts what the listener hears of it: the runner's replies, the
run's state changes, STFs, samples and slices. :meth:`WorkflowSession.snapshot`
gives a :class:`ProgressSnapshot` (frozen) for the display and for the
decision that a run is over (:mod:`swf_testbed.orchestrator.follow`).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from swf_testbed.messages import (
    EndRun,
    Message,
    RunMessage,
    RunWorkflow,
    Slice,
    SliceResult,
    StopWorkflow,
    TfFileRegistered,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from swf_testbed.mq.destinations import control_queue
from swf_testbed.orchestrator.listener import Listener

SENDER = "swf-testbed-cli"


class ProgressStatus(StrEnum):
    """Where one execution stands, as this command saw it."""

    REQUESTED = "requested"
    RUNNING = "running"
    STOPPING = "stopping"
    COMPLETED = "completed"
    TERMINATED = "terminated"
    FAILED = "failed"
    REFUSED = "refused"


FOLLOWING = frozenset({ProgressStatus.REQUESTED, ProgressStatus.RUNNING, ProgressStatus.STOPPING})
"""Statuses of an execution that has not ended."""


@dataclass
class Progress:
    """What has been seen of one execution (changed under the session's lock)."""

    execution_id: str | None = None
    workflow_name: str = ""
    status: ProgressStatus = ProgressStatus.REQUESTED
    error: str = ""
    run_id: int | None = None
    daq_state: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    end_run_seen: bool = False
    stf_count: int | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class ProgressSnapshot:
    """One execution's figures at one moment, for the display and the end-of-run decision."""

    execution_id: str | None
    workflow_name: str
    status: ProgressStatus
    error: str
    run_id: int | None
    daq_state: str
    stf_produced: int
    stf_ready: int
    stf_processed: int
    samples: int
    slices: int
    slices_done: int
    slices_failed: int
    end_run: bool
    stf_count: int | None
    elapsed_s: float
    stf_gen_per_s: float = 0.0
    processed_per_s: float = 0.0
    slices_per_s: float = 0.0
    rate_window_s: float = 0.0
    samples_unsliced: int = 0  # samples registered of which no slice was seen yet

    @property
    def produced(self) -> int:
        """STFs the run produced: the DAQ's own count once known (we may miss some stf_gen)."""
        return max(self.stf_produced, self.stf_count or 0)

    @property
    def moved(self) -> int:
        """A figure that grows while the agents work on the run (to tell when nothing moves)."""
        return self.stf_ready + self.stf_processed + self.samples + self.slices + self.slices_done

    @property
    def has_chain(self) -> bool:
        """Some agent took up the run's data (a testbed without one has nothing to wait for)."""
        return bool(self.stf_ready or self.stf_processed or self.slices)


RATE_WINDOW_S = 10.0
"""The live rates are over this many recent seconds (so they fall to 0 when production stops)."""


class RateWindow:
    """Rates of a few counters over a recent window, not since the start.

    ``add`` a sample of the counters now and then; ``rates`` is the change
    between the oldest sample still in the window and the newest, per second.
    Once the counters stop moving, the rates fall to 0 within the window.
    """

    def __init__(
        self,
        window_s: float = RATE_WINDOW_S,
        *,
        min_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def add(self, counts: tuple[int, ...]) -> None:
        now = self.clock()
        if len(self._samples) >= 2 and now - self._samples[-2][0] < self.min_interval_s:
            # the newest is always now; those before it spaced out
            self._samples[-1] = (now, counts)
        else:
            self._samples.append((now, counts))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def rates(self) -> tuple[float, ...]:
        if len(self._samples) < 2:
            return tuple(0.0 for _ in (self._samples[0][1] if self._samples else ()))
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return tuple((b - a) / (t1 - t0) for a, b in zip(first, last, strict=True))


_RUN_STATE_TYPES = frozenset({"run_imminent", "start_run", "pause_run", "resume_run", "end_run"})


class WorkflowSession:
    """Requests (or attaches to) one execution and follows it to its end."""

    def __init__(self, listener: Listener, namespace: str) -> None:
        self.listener = listener
        self.namespace = namespace
        self.request_id: str | None = None
        self.progress = Progress()
        self.done = threading.Event()
        self.started = threading.Event()
        self.events: deque[str] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, Counter[str]] = {}
        self._samples: OrderedDict[str, tuple[set[str], set[str]]] = OrderedDict()
        """Per execution: the TF samples registered, and those that have slices."""
        self._stop_sent = False
        self._rates = RateWindow()
        listener.session = self

    # ------------------------------------------------------------------ requests

    def request(self, workflow: Any, params: dict[str, Any]) -> RunWorkflow:
        msg = RunWorkflow(
            namespace=self.namespace,
            sender=SENDER,
            workflow_name=workflow.name,
            config=workflow.config,
            realtime=bool(workflow.realtime),
            time_scale=workflow.time_scale,
            duration=workflow.duration,
            params=dict(params),
        )
        self.request_id = msg.msg_id
        self.progress.workflow_name = workflow.name
        self.listener.client.send(control_queue(self.namespace), msg, timeout=15.0)
        return msg

    def attach(self, execution_id: str, workflow_name: str = "") -> None:
        with self._lock:
            self.progress.execution_id = execution_id
            self.progress.workflow_name = workflow_name
            self.progress.status = ProgressStatus.RUNNING
            self._adopt_pending(execution_id)
        self.started.set()

    def stop(self, reason: str = "stopped from the command line") -> bool:
        """Send stop_workflow for the execution (once); False while its id is not known yet."""
        with self._lock:
            execution_id = self.progress.execution_id
            if execution_id is None or self._stop_sent:
                return self._stop_sent
            self._stop_sent = True
            if self.progress.status is ProgressStatus.RUNNING:
                self.progress.status = ProgressStatus.STOPPING
        self.listener.client.send(
            control_queue(self.namespace),
            StopWorkflow(
                namespace=self.namespace, sender=SENDER, execution_id=execution_id, reason=reason
            ),
            timeout=15.0,
        )
        self.events.append(f"stop_workflow sent for {execution_id}")
        return True

    @property
    def stop_sent(self) -> bool:
        return self._stop_sent

    # ------------------------------------------------------------------ messages

    def observe(self, msg: Message) -> None:
        with self._lock:
            if msg.msg_id in self._seen:
                return
            self._seen[msg.msg_id] = None
            if len(self._seen) > 100_000:
                self._seen.popitem(last=False)
            if isinstance(msg, WorkflowStarted):
                self._on_started(msg)
            elif isinstance(msg, WorkflowFailed):
                self._on_failed(msg)
            elif isinstance(msg, WorkflowCompleted):
                self._on_completed(msg)
            else:
                self._on_traffic(msg)

    def _asked_by_us(self, in_reply_to: str | None) -> bool:
        return self.request_id is not None and in_reply_to == self.request_id

    def _unaddressed_reply(self, in_reply_to: str | None) -> bool:
        """A reply naming no request, while ours has no execution yet: it may be ours."""
        return (
            self.request_id is not None
            and in_reply_to is None
            and self.progress.execution_id is None
        )

    def _on_started(self, msg: WorkflowStarted) -> None:
        p = self.progress
        ours = (
            self._asked_by_us(msg.in_reply_to)
            or p.execution_id == msg.execution_id
            or self._unaddressed_reply(msg.in_reply_to)
        )
        if not ours or p.status not in FOLLOWING:
            return
        p.execution_id = msg.execution_id
        p.workflow_name = msg.workflow_name
        if p.status is ProgressStatus.REQUESTED:
            p.status = ProgressStatus.RUNNING
        self._adopt_pending(msg.execution_id)
        self.started.set()

    def _on_failed(self, msg: WorkflowFailed) -> None:
        p = self.progress
        ours = (
            self._asked_by_us(msg.in_reply_to)
            or (p.execution_id is not None and msg.execution_id == p.execution_id)
            or (self._unaddressed_reply(msg.in_reply_to) and msg.execution_id is None)
        )
        if not ours:
            return
        p.status = ProgressStatus.REFUSED if msg.refused else ProgressStatus.FAILED
        p.error = msg.error
        if msg.execution_id and p.execution_id is None and not msg.refused:
            p.execution_id = msg.execution_id
        self.started.set()
        self.done.set()

    def _on_completed(self, msg: WorkflowCompleted) -> None:
        p = self.progress
        if p.execution_id is not None and msg.execution_id == p.execution_id:
            p.status = ProgressStatus(msg.status)
            p.stf_count = msg.stf_count
            self.done.set()

    def _on_traffic(self, msg: Message) -> None:
        """Run, data and worker traffic: counted for our execution (kept aside until we know it)."""
        p = self.progress
        execution_id = msg.execution_id
        if execution_id is None:
            return
        self._note_sample(execution_id, msg)
        if p.execution_id is None:
            counts = self._pending.setdefault(execution_id, Counter())
            if len(self._pending) > 20:
                self._pending.pop(next(iter(self._pending)))
            self._count(counts, msg)
            return
        if execution_id != p.execution_id:
            return
        self._count(p.counts, msg)
        if isinstance(msg, RunMessage):
            p.run_id = msg.run_id
            state = f"{msg.state.value}/{msg.substate.value}"
            if msg.msg_type in _RUN_STATE_TYPES and state != p.daq_state:
                # (fast processing repeats end_run to its workers: one line per change)
                p.daq_state = state
                self.events.append(f"run {msg.run_id}: {msg.msg_type} ({p.daq_state})")
            if isinstance(msg, EndRun):
                p.end_run_seen = True

    def _note_sample(self, execution_id: str, msg: Message) -> None:
        """A sample registered, or one of its slices made (kept for a few executions)."""
        if not isinstance(msg, TfFileRegistered | Slice):
            return
        if execution_id not in self._samples:
            self._samples[execution_id] = (set(), set())
            if len(self._samples) > 20:
                oldest = next(iter(self._samples))
                if oldest != self.progress.execution_id:
                    self._samples.pop(oldest)
        registered, sliced = self._samples[execution_id]
        (registered if isinstance(msg, TfFileRegistered) else sliced).add(msg.tf_filename)

    def _unsliced(self, execution_id: str | None) -> int:
        registered, sliced = self._samples.get(execution_id or "", (set(), set()))
        return len(registered - sliced)

    def _adopt_pending(self, execution_id: str) -> None:
        pending = self._pending.pop(execution_id, None)
        if pending:
            self.progress.counts.update(pending)

    @staticmethod
    def _count(counts: Counter[str], msg: Message) -> None:
        if isinstance(msg, SliceResult):
            counts["slice_done" if msg.status == "completed" else "slice_failed"] += 1
        counts[msg.msg_type] += 1

    # ------------------------------------------------------------------ display data

    def snapshot(self) -> ProgressSnapshot:
        with self._lock:
            p = self.progress
            c = p.counts
            produced, processed, slices = c["stf_gen"], c["processing_complete"], c["slice_done"]
            self._rates.add((produced, processed, slices))
            gen_rate, processed_rate, slice_rate = self._rates.rates()
            return ProgressSnapshot(
                execution_id=p.execution_id,
                workflow_name=p.workflow_name,
                status=p.status,
                error=p.error,
                run_id=p.run_id,
                daq_state=p.daq_state,
                stf_produced=produced,
                stf_ready=c["stf_ready"],
                stf_processed=processed,
                samples=c["tf_file_registered"],
                slices=c["slice"],
                slices_done=slices,
                slices_failed=c["slice_failed"],
                end_run=p.end_run_seen,
                stf_count=p.stf_count,
                elapsed_s=time.monotonic() - p.started,
                stf_gen_per_s=gen_rate,
                processed_per_s=processed_rate,
                slices_per_s=slice_rate,
                rate_window_s=self._rates.window_s,
                samples_unsliced=self._unsliced(p.execution_id),
            )

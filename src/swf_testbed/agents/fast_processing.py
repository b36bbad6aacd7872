"""The fast-processing agent: cuts TF samples into slices for a pool of workers.

Destinations (namespace ``ns``):

* run topic: ``run_imminent`` → the run's state is set up and, for a run with
  fast processing, ``run_imminent_worker`` (target worker count, ramp-up
  time in simulated seconds) is broadcast on ``worker_topic(ns)``;
  ``end_run`` → the run is marked ended and ``end_run`` is forwarded on
  ``worker_topic(ns)`` (workers ramp down; they still drain the queue);
* data topic: ``tf_file_registered`` → the sample's TFs are cut into
  ``slices_per_sample`` contiguous slices (or, with the ``tfs_per_slice``
  option, slices of that many TFs), each sent as a ``slice`` to
  ``slice_queue(ns)`` (competing consumers);
* ``slice_results_queue(ns)`` (``/queue/swf.<ns>.slice_results``):
  ``slice_result`` from the workers. A queue rather than the data topic:
  results wait there if this agent restarts, and they are not fanned out to
  every data-topic subscriber (the broker mirrors queue messages to
  ``VirtualTopic.Mirror.<queue>``, so the monitor sees them all the same).

A failed slice is sent again with ``retries`` + 1 (and a new ``msg_id``) until
it has been retried ``max_slice_retries`` times; then it counts as failed.
A result for a slice already settled counts as a duplicate, never twice.

Per run a :class:`RunState` keeps samples received, slices created / queued
/ completed / failed / retried and duplicate results; the same figures,
summed over runs, are the agent's heartbeat counters, and the heartbeat
description shows the current run's progress.

Parameters come from the run (the ``fast_processing`` section of
``run_imminent``'s conditions, and its ``time_scale``), else from the options
of the same names. A slice carries ``work_time_s`` = slice_processing_time /
time scale (0 at time scale 0), the wall time a worker spends on it.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from swf_testbed.agents.runs import RunBook, RunInfo
from swf_testbed.agents.runtime import Agent, Listen, handles
from swf_testbed.messages import (
    EndRun,
    RunImminent,
    RunImminentWorker,
    RunMessage,
    Slice,
    SliceResult,
    TfFileRegistered,
    new_msg_id,
    utcnow,
)
from swf_testbed.mq.destinations import (
    RUN_TOPIC,
    Destination,
    Queue,
    data_topic,
    slice_queue,
    worker_topic,
)

log = logging.getLogger(__name__)


def slice_results_queue(namespace: str) -> Destination:
    """Where workers send ``slice_result`` for the fast-processing agent of a namespace."""
    return Queue(f"swf.{namespace}.slice_results")


def cut(tf_first: int, tf_last: int, slices: int) -> list[tuple[int, int]]:
    """Cut the TF range into ``slices`` contiguous, nearly equal ranges (fewer if fewer TFs)."""
    n = tf_last - tf_first + 1
    if n < 1:
        raise ValueError(f"empty TF range {tf_first}..{tf_last}")
    k = max(1, min(slices, n))
    base, extra = divmod(n, k)
    out = []
    start = tf_first
    for i in range(k):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size - 1))
        start += size
    return out


@dataclass(frozen=True)
class SliceParams:
    slices_per_sample: int
    tfs_per_slice: int
    max_slice_retries: int
    work_time_s: float
    target_worker_count: int
    worker_rampup_time: float

    def slices_for(self, tf_count: int) -> int:
        if self.tfs_per_slice > 0:
            return -(-tf_count // self.tfs_per_slice)
        return self.slices_per_sample


@dataclass
class SliceRecord:
    message: Slice
    """The slice as first sent (retries 0)."""
    retries: int = 0
    status: Literal["created", "queued", "completed", "failed"] = "created"
    worker_id: str = ""


@dataclass
class RunState:
    """Fast-processing bookkeeping of one run."""

    run_id: int
    execution_id: str
    params: SliceParams
    fast: bool
    """True when the run has fast processing (workers were ramped up)."""
    ended: bool = False
    samples_received: int = 0
    slices_created: int = 0
    slices_queued: int = 0
    """Slice messages put on the queue, retries included."""
    slices_completed: int = 0
    slices_failed: int = 0
    slices_retried: int = 0
    duplicate_results: int = 0
    next_slice_id: int = 0
    samples: dict[str, list[int]] = field(default_factory=dict)
    slices: dict[int, SliceRecord] = field(default_factory=dict)

    @property
    def outstanding(self) -> int:
        return self.slices_created - self.slices_completed - self.slices_failed

    @property
    def finished(self) -> bool:
        return self.ended and self.outstanding == 0

    def counters(self) -> dict[str, int]:
        return {
            "samples_received": self.samples_received,
            "slices_created": self.slices_created,
            "slices_queued": self.slices_queued,
            "slices_completed": self.slices_completed,
            "slices_failed": self.slices_failed,
            "slices_retried": self.slices_retried,
            "duplicate_results": self.duplicate_results,
            "outstanding": self.outstanding,
        }


class FastProcessingAgent(Agent):
    agent_type = "fast_processing"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        slices_per_sample: int = 15,
        tfs_per_slice: int = 0,
        max_slice_retries: int = 3,
        slice_processing_time: float = 30.0,
        time_scale: float = 1.0,
        target_worker_count: int = 30,
        worker_rampup_time: float = 300.0,
        keep_runs: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        if slices_per_sample < 1 or tfs_per_slice < 0 or max_slice_retries < 0:
            raise ValueError(
                "slices_per_sample must be >= 1, tfs_per_slice and max_slice_retries >= 0"
            )
        if slice_processing_time < 0 or time_scale < 0:
            raise ValueError("slice_processing_time and time_scale must be >= 0")
        self.slices_per_sample = slices_per_sample
        self.tfs_per_slice = tfs_per_slice
        self.max_slice_retries = max_slice_retries
        self.slice_processing_time = slice_processing_time
        self.time_scale = time_scale
        self.target_worker_count = target_worker_count
        self.worker_rampup_time = worker_rampup_time
        self.keep_runs = keep_runs
        self.runs = RunBook()
        self.states: OrderedDict[int, RunState] = OrderedDict()
        self._lock = threading.Lock()

    def listens_on(self) -> list[Listen]:
        return [
            Listen(RUN_TOPIC),
            Listen(data_topic(self.namespace), ordered=False),
            Listen(slice_results_queue(self.namespace), ordered=False),
        ]

    def is_busy(self) -> bool:
        with self._lock:
            return any(not s.ended or s.outstanding for s in self.states.values())

    # ------------------------------------------------------------------ run state

    def params_for(self, info: RunInfo) -> SliceParams:
        def num(key: str, default: float) -> Any:
            return info.number(key, default, "fast_processing")

        seconds = float(num("slice_processing_time", self.slice_processing_time))
        scale = float(info.number("time_scale", self.time_scale))
        return SliceParams(
            slices_per_sample=max(1, int(num("slices_per_sample", self.slices_per_sample))),
            tfs_per_slice=self.tfs_per_slice,
            max_slice_retries=max(0, int(num("max_slice_retries", self.max_slice_retries))),
            work_time_s=seconds / scale if seconds and scale else 0.0,
            target_worker_count=max(0, int(num("target_worker_count", self.target_worker_count))),
            worker_rampup_time=max(0.0, float(num("worker_rampup_time", self.worker_rampup_time))),
        )

    def _state(self, msg: RunMessage, info: RunInfo) -> RunState:
        """The run's state (lock held)."""
        state = self.states.get(msg.run_id)
        if state is None:
            state = RunState(
                msg.run_id,
                msg.execution_id,
                self.params_for(info),
                fast=info.fast_processing is not None,
            )
            self.states[msg.run_id] = state
            finished = [rid for rid, s in self.states.items() if s.finished]
            for rid in finished[: max(0, len(finished) - self.keep_runs)]:
                del self.states[rid]
        return state

    def run_state(self, run_id: int) -> RunState | None:
        with self._lock:
            return self.states.get(run_id)

    def _describe(self, state: RunState) -> None:
        self.description = (
            f"run {state.run_id}: {state.samples_received} samples, {state.slices_completed}/"
            f"{state.slices_created} slices done, {state.slices_failed} failed, "
            f"{state.slices_retried} retried" + (" (run ended)" if state.ended else "")
        )

    def _copy(self, msg: RunMessage, **update: Any) -> Any:
        """A message passed on under this agent's name (new msg_id and timestamp)."""
        return msg.model_copy(
            update={"sender": self.name, "msg_id": new_msg_id(), "timestamp": utcnow(), **update}
        )

    # ------------------------------------------------------------------ handlers

    @handles(RunImminent)
    def on_run_imminent(self, msg: RunImminent) -> None:
        info = self.runs.open(msg)
        with self._lock:
            state = self._state(msg, info)
        if not state.fast:
            self.count("runs_without_fast_processing")
            return
        self.send(
            worker_topic(self.namespace),
            self.message(
                RunImminentWorker,
                execution_id=msg.execution_id,
                run_id=msg.run_id,
                state=msg.state,
                substate=msg.substate,
                target_worker_count=state.params.target_worker_count,
                rampup_time_s=state.params.worker_rampup_time,
            ),
        )
        self.count("worker_rampups")
        self._describe(state)

    @handles(EndRun)
    def on_end_run(self, msg: EndRun) -> None:
        info = self.runs.close(msg)
        with self._lock:
            state = self._state(msg, info)
            state.ended = True
            self._describe(state)
        if state.fast and msg.state is None:
            self.count("worker_rampdowns_skipped")  # an ePIC v28 end_run: no DAQ state to pass on
        elif state.fast:
            self.send(worker_topic(self.namespace), self._copy(msg))
            self.count("worker_rampdowns")

    @handles(TfFileRegistered)
    def on_tf_file_registered(self, msg: TfFileRegistered) -> None:
        info = self.runs.lookup(msg.run_id, msg.execution_id)
        with self._lock:
            state = self._state(msg, info)
            ids = state.samples.get(msg.tf_filename)
            if ids is None:
                ranges = cut(msg.tf_first, msg.tf_last, state.params.slices_for(msg.tf_count))
                ids = []
                for first, last in ranges:
                    slice_id = state.next_slice_id
                    state.next_slice_id += 1
                    state.slices[slice_id] = SliceRecord(
                        self.message(
                            Slice,
                            execution_id=msg.execution_id,
                            run_id=msg.run_id,
                            state=msg.state,
                            substate=msg.substate,
                            slice_id=slice_id,
                            tf_filename=msg.tf_filename,
                            stf_filename=msg.stf_filename,
                            tf_first=first,
                            tf_last=last,
                            tf_count=last - first + 1,
                            work_time_s=state.params.work_time_s,
                        )
                    )
                    ids.append(slice_id)
                state.samples[msg.tf_filename] = ids
                state.samples_received += 1
                state.slices_created += len(ids)
                self.count("samples_received")
                self.count("slices_created", len(ids))
            else:
                self.count("samples_duplicate")  # seen before: send only what was not sent yet
            todo = [state.slices[i] for i in ids if state.slices[i].status == "created"]
        for record in todo:
            self.send(slice_queue(self.namespace), record.message)
            with self._lock:
                if record.status == "created":
                    record.status = "queued"
                state.slices_queued += 1
            self.count("slices_queued")
        with self._lock:
            self._describe(state)

    @handles(SliceResult)
    def on_slice_result(self, msg: SliceResult) -> None:
        with self._lock:
            state = self.states.get(msg.run_id)
            record = state.slices.get(msg.slice_id) if state is not None else None
            if record is not None and record.message.tf_filename != msg.tf_filename:
                record = None  # an id of another life of this agent (restarted mid-run): not ours
            if state is None or record is None:
                self.count("slice_results_unknown")
                log.warning(
                    "%s: result for unknown slice %d of run %d from %s",
                    self.name,
                    msg.slice_id,
                    msg.run_id,
                    msg.worker_id,
                )
                return
            if record.status in ("completed", "failed"):
                state.duplicate_results += 1
                self.count("slice_results_duplicate")
                return
            if msg.status == "completed":
                record.status = "completed"
                record.worker_id = msg.worker_id
                state.slices_completed += 1
                self.count("slices_completed")
            elif record.retries < state.params.max_slice_retries:
                # sent under the lock: a failed send changes nothing, and the runtime retries
                # the result
                retry = self._copy(record.message, retries=record.retries + 1)
                self.send(slice_queue(self.namespace), retry)
                record.retries += 1
                state.slices_retried += 1
                state.slices_queued += 1
                self.count("slices_retried")
                self.count("slices_queued")
                log.info(
                    "%s: slice %d of run %d failed on %s (%s); retry %d of %d",
                    self.name,
                    msg.slice_id,
                    msg.run_id,
                    msg.worker_id,
                    msg.error,
                    record.retries,
                    state.params.max_slice_retries,
                )
            else:
                record.status = "failed"
                record.worker_id = msg.worker_id
                state.slices_failed += 1
                self.count("slices_failed")
                log.warning(
                    "%s: slice %d of run %d failed after %d retries: %s",
                    self.name,
                    msg.slice_id,
                    msg.run_id,
                    record.retries,
                    msg.error,
                )
            self._describe(state)
            if state.finished:
                log.info(
                    "%s: run %d fast processing done: %s", self.name, state.run_id, state.counters()
                )

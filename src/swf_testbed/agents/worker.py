"""A fast-processing worker: takes slices from the namespace's slice queue.

Workers are competing consumers on ``slice_queue(ns)``: the subscription has
a prefetch of 1 and client acknowledgement, so the broker hands each worker
one slice at a time and the work is shared among however many run. A slice
takes ``work_time_s`` (carried by the slice; else the options
``slice_processing_time`` / ``time_scale``) of wall time, then a
``slice_result`` goes to ``slice_results_queue(ns)``; only after that send
returns is the slice acknowledged, so a worker killed mid-slice leaves it
unacknowledged and the broker redelivers it to another worker.

``fail_rate`` (with ``seed``) makes a share of slices fail on purpose
(``slice_result`` status failed), to exercise the fast-processing agent's
retries. ``run_imminent_worker`` / ``end_run`` on ``worker_topic(ns)`` are
counted and shown in the heartbeat description (the pool is simulated: the
worker processes are already running).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from swf_testbed.agents.fast_processing import slice_results_queue
from swf_testbed.agents.runtime import Agent, Listen, handles
from swf_testbed.messages import EndRun, RunImminentWorker, Slice, SliceResult
from swf_testbed.mq.destinations import slice_queue, worker_topic


class WorkerAgent(Agent):
    agent_type = "worker"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        slice_processing_time: float = 30.0,
        time_scale: float = 1.0,
        fail_rate: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        if slice_processing_time < 0 or time_scale < 0:
            raise ValueError("slice_processing_time and time_scale must be >= 0")
        if not 0 <= fail_rate <= 1:
            raise ValueError("fail_rate must be between 0 and 1")
        self.slice_processing_time = slice_processing_time
        self.time_scale = time_scale
        self.fail_rate = fail_rate
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self.current_run: int | None = None

    def listens_on(self) -> list[Listen]:
        return [
            Listen(slice_queue(self.namespace), ordered=False, prefetch=1),
            Listen(worker_topic(self.namespace)),
        ]

    def work_time(self, msg: Slice) -> float:
        if msg.work_time_s is not None:
            return msg.work_time_s
        if self.slice_processing_time and self.time_scale:
            return self.slice_processing_time / self.time_scale
        return 0.0

    @handles(Slice)
    def on_slice(self, msg: Slice) -> None:
        started = time.perf_counter()
        wait = self.work_time(msg)
        if wait:
            time.sleep(wait)
        with self._rng_lock:
            fail = self.fail_rate > 0 and self._rng.random() < self.fail_rate
        self.send(
            slice_results_queue(self.namespace),
            self.message(
                SliceResult,
                execution_id=msg.execution_id,
                run_id=msg.run_id,
                state=msg.state,
                substate=msg.substate,
                slice_id=msg.slice_id,
                tf_filename=msg.tf_filename,
                worker_id=self.instance_id,
                status="failed" if fail else "completed",
                processing_time_s=time.perf_counter() - started,
                error=f"simulated failure of slice {msg.slice_id} (attempt {msg.retries + 1})"
                if fail
                else "",
            ),
        )
        self.count("slices_failed" if fail else "slices_done")
        self.count("tf_processed", 0 if fail else msg.tf_count)

    @handles(RunImminentWorker)
    def on_rampup(self, msg: RunImminentWorker) -> None:
        self.current_run = msg.run_id
        self.count("rampups")
        self.description = f"ramped up for run {msg.run_id} (pool target {msg.target_worker_count})"

    @handles(EndRun)
    def on_rampdown(self, msg: EndRun) -> None:
        if self.current_run == msg.run_id:
            self.current_run = None
        self.count("rampdowns")
        self.description = f"run {msg.run_id} ended"

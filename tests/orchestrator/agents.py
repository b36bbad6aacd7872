"""Small agents for the orchestrator tests, run by supervisord as real processes.

``TinyRunner`` answers ``run_workflow`` like a workflow runner: it replies
``workflow_started``, publishes a short run (``run_imminent``, ``start_run``,
``stf_gen``… , ``end_run``) on the run topic and replies
``workflow_completed``; ``stop_workflow`` ends the run early (status
``terminated``); a second request while one runs is refused. Parameters:
``stf_count`` (3), ``stf_interval`` (seconds, 0.05), ``fail`` (a message:
end with ``workflow_failed``), ``slices_per_sample`` (that many slices sent to
the worker topic after the first STF, which no one works on: a run whose
agents never catch up).
"""

from __future__ import annotations

import threading
import time
import uuid
import zlib
from datetime import UTC, datetime
from typing import Any

from swf_testbed.agents import Agent, Listen, handles
from swf_testbed.messages import (
    EndRun,
    Message,
    RunImminent,
    RunWorkflow,
    Slice,
    StartRun,
    StfGen,
    StopWorkflow,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from swf_testbed.mq.destinations import RUN_TOPIC, control_queue, replies_topic, worker_topic


class Idle(Agent):
    """Does nothing but be alive (heartbeats)."""

    agent_type = "test-idle"


class TinyRunner(Agent):
    agent_type = "test-runner"

    def __init__(self, name: str, namespace: str, **kwargs: Any) -> None:
        super().__init__(name, namespace, **kwargs)
        self._lock = threading.Lock()
        self._execution: str | None = None
        self._halt = threading.Event()

    def listens_on(self) -> list[Listen]:
        return [Listen(control_queue(self.namespace))]

    def is_busy(self) -> bool:
        return self._execution is not None

    @handles("run_workflow")
    def on_run_workflow(self, msg: Message) -> None:
        assert isinstance(msg, RunWorkflow)
        replies = replies_topic(self.namespace)
        with self._lock:
            if self._execution is not None:
                self.send(
                    replies,
                    self.message(
                        WorkflowFailed,
                        in_reply_to=msg.msg_id,
                        workflow_name=msg.workflow_name,
                        refused=True,
                        error=(
                            f"execution {self._execution} is running in namespace {self.namespace}"
                        ),
                    ),
                )
                return
            execution_id = f"tiny-{self.namespace}-{uuid.uuid4().hex[:6]}"
            self._execution = execution_id
            self._halt.clear()
        self.send(
            replies,
            self.message(
                WorkflowStarted,
                in_reply_to=msg.msg_id,
                workflow_name=msg.workflow_name,
                execution_id=execution_id,
                config={"params": msg.params},
            ),
        )
        threading.Thread(target=self._drive, args=(msg, execution_id), daemon=True).start()

    @handles("stop_workflow")
    def on_stop_workflow(self, msg: Message) -> None:
        assert isinstance(msg, StopWorkflow)
        if msg.execution_id == self._execution:
            self._halt.set()

    def _drive(self, request: RunWorkflow, execution_id: str) -> None:
        params = request.params
        run_id = int(time.time())
        common = {"execution_id": execution_id, "run_id": run_id}
        stf_count = int(params.get("stf_count", 3))
        interval = float(params.get("stf_interval", 0.05))
        sent = 0
        try:
            self.send(
                RUN_TOPIC, self.message(RunImminent, state="beam", substate="not_ready", **common)
            )
            self.send(RUN_TOPIC, self.message(StartRun, state="run", substate="physics", **common))
            for seq in range(stf_count):
                if self._halt.wait(interval):
                    break
                now = datetime.now(UTC)
                name = f"swf.{run_id}.{seq:06d}.stf"
                self.send(
                    RUN_TOPIC,
                    self.message(
                        StfGen,
                        state="run",
                        substate="physics",
                        filename=name,
                        sequence=seq,
                        size_bytes=1000,
                        checksum=f"{zlib.adler32(name.encode()):08x}",
                        tf_count=10,
                        start=now,
                        end=now,
                        **common,
                    ),
                )
                sent += 1
                if seq == 0:
                    for slice_id in range(int(params.get("slices_per_sample", 0))):
                        self.send(
                            worker_topic(self.namespace),
                            self.message(
                                Slice,
                                state="run",
                                substate="physics",
                                slice_id=slice_id,
                                tf_filename=f"{name}.tf",
                                stf_filename=name,
                                tf_first=slice_id,
                                tf_last=slice_id,
                                tf_count=1,
                                **common,
                            ),
                        )
            self.send(
                RUN_TOPIC,
                self.message(
                    EndRun, state="beam", substate="not_ready", total_stf_files=sent, **common
                ),
            )
            replies = replies_topic(self.namespace)
            if params.get("fail"):
                self.send(
                    replies,
                    self.message(
                        WorkflowFailed,
                        workflow_name=request.workflow_name,
                        execution_id=execution_id,
                        error=str(params["fail"]),
                    ),
                )
            else:
                status = "terminated" if self._halt.is_set() else "completed"
                self.send(
                    replies,
                    self.message(
                        WorkflowCompleted,
                        workflow_name=request.workflow_name,
                        execution_id=execution_id,
                        status=status,
                        stf_count=sent,
                    ),
                )
        finally:
            with self._lock:
                self._execution = None

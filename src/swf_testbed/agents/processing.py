"""The processing agent: simulated prompt processing of every ready STF."""

from __future__ import annotations

import time
from typing import Any

from swf_testbed.agents.runs import RunFollowingAgent, RunInfo
from swf_testbed.agents.runtime import handles
from swf_testbed.messages import ProcessingComplete, StfReady
from swf_testbed.mq.destinations import data_topic


class ProcessingAgent(RunFollowingAgent):
    """``stf_ready`` → (processing time / time scale) → ``processing_complete``.

    The processing time and time scale come from the run (``run_imminent``'s
    conditions ``processing_time`` and ``time_scale``), else from the options
    ``processing_time`` and ``time_scale``. A time scale of 0 means as fast as
    possible (no wait). PROCESSING from ``run_imminent`` until ``end_run``
    and while STFs are in hand; READY once the run ended and all are done.
    """

    agent_type = "processing"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        processing_time: float = 1.0,
        time_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        if processing_time < 0 or time_scale < 0:
            raise ValueError("processing_time and time_scale must be >= 0")
        self.processing_time = processing_time
        self.time_scale = time_scale

    def wall_time(self, info: RunInfo) -> float:
        """Real seconds one STF of this run takes."""
        seconds = info.number("processing_time", self.processing_time)
        scale = info.number("time_scale", self.time_scale)
        return float(seconds) / float(scale) if seconds and scale else 0.0

    @handles(StfReady)
    def on_stf_ready(self, msg: StfReady) -> None:
        started = time.perf_counter()
        wait = self.wall_time(self.runs.lookup(msg.run_id, msg.execution_id))
        if wait:
            time.sleep(wait)
        self.send(
            data_topic(self.namespace),
            self.message(
                ProcessingComplete,
                execution_id=msg.execution_id,
                run_id=msg.run_id,
                state=msg.state,
                substate=msg.substate,
                filename=msg.filename,
                outputs=[f"{msg.filename}.reco"],
                processing_time_s=time.perf_counter() - started,
            ),
        )
        self.count("stf_processed")

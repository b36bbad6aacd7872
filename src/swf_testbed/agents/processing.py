"""The processing agent: simulated prompt processing of every ready STF."""

from __future__ import annotations

import time
from typing import Any

from swf_testbed.agents.runtime import Agent, Listen, handles
from swf_testbed.messages import Message, ProcessingComplete, StfReady
from swf_testbed.mq.destinations import data_topic


class ProcessingAgent(Agent):
    """``stf_ready`` → (``processing_time`` seconds, divided by ``time_scale``) → ``processing_complete``."""

    agent_type = "processing"

    def __init__(self, name: str, namespace: str, *, processing_time: float = 1.0, time_scale: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(name, namespace, **kwargs)
        if processing_time < 0 or time_scale < 0:
            raise ValueError("processing_time and time_scale must be >= 0")
        self.processing_time = processing_time
        self.time_scale = time_scale

    def listens_on(self) -> list[Listen]:
        return [Listen(data_topic(self.namespace), ordered=False)]

    @handles("stf_ready")
    def on_stf_ready(self, msg: Message) -> None:
        assert isinstance(msg, StfReady)
        started = time.perf_counter()
        if self.processing_time and self.time_scale:
            time.sleep(self.processing_time / self.time_scale)
        self.send(data_topic(self.namespace), self.message(
            ProcessingComplete, execution_id=msg.execution_id, run_id=msg.run_id, state=msg.state,
            substate=msg.substate, filename=msg.filename, outputs=[f"{msg.filename}.reco"],
            processing_time_s=time.perf_counter() - started,
        ))
        self.count("stf_processed")

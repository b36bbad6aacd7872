"""Small agents used by the runtime tests, run in-process or as real processes."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from swf_testbed.agents import Agent, Listen, handles
from swf_testbed.messages import Message, ProcessingComplete, StfReady
from swf_testbed.mq import Queue, Topic

log = logging.getLogger(__name__)


class EchoAgent(Agent):
    """stf_ready on its topic/queue → processing_complete on its reply topic.

    ``fail_times``: how many times each file's first deliveries raise.
    ``sleep_s``: how long a handler takes.
    """

    agent_type = "test-echo"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        topic: str = "",
        queue: str = "",
        reply_topic: str = "",
        fail_times: int = 0,
        fail_always: list[str] | None = None,
        sleep_s: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        self.topic = topic
        self.queue = queue
        self.reply_topic = reply_topic
        self.fail_times = fail_times
        self.fail_always = set(fail_always or [])
        self.sleep_s = sleep_s
        self.failures: dict[str, int] = {}
        self.seen: list[str] = []
        self._lock = threading.Lock()

    def listens_on(self) -> list[Listen]:
        listens = []
        if self.topic:
            listens.append(Listen(Topic(self.topic)))
        if self.queue:
            listens.append(Listen(Queue(self.queue), ordered=False))
        return listens

    @handles("stf_ready")
    def on_stf_ready(self, msg: Message) -> None:
        assert isinstance(msg, StfReady)
        with self._lock:
            self.seen.append(msg.filename)
            failures = self.failures.get(msg.filename, 0)
            if msg.filename in self.fail_always or failures < self.fail_times:
                self.failures[msg.filename] = failures + 1
                raise RuntimeError(f"simulated failure {failures + 1} for {msg.filename}")
        if self.sleep_s:
            time.sleep(self.sleep_s)
        if self.reply_topic:
            self.send(
                Topic(self.reply_topic),
                self.message(
                    ProcessingComplete,
                    execution_id=msg.execution_id,
                    run_id=msg.run_id,
                    state=msg.state,
                    substate=msg.substate,
                    filename=msg.filename,
                    processing_time_s=self.sleep_s,
                ),
            )


def stf_ready(namespace: str, filename: str, *, sender: str = "test", run_id: int = 1) -> StfReady:
    return StfReady(
        namespace=namespace,
        sender=sender,
        execution_id="exec-1",
        run_id=run_id,
        state="run",
        substate="physics",
        filename=filename,
        url=f"file:///buffer/{filename}",
        sequence=0,
        size_bytes=100,
        checksum="0000abcd",
    )


class LoggingAgent(Agent):
    """stf_ready on its topic → a WARNING naming the file, and processing_complete on its reply
    topic.

    While its broker connection is down it logs a WARNING ``tick N`` every ``tick_s`` seconds (work
    it goes on doing, with nobody to tell), which fills its log buffer.
    """

    agent_type = "test-logging"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        topic: str = "",
        reply_topic: str = "",
        tick_s: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        self.topic = topic
        self.reply_topic = reply_topic
        self.tick_s = tick_s
        self.ticks = 0

    def listens_on(self) -> list[Listen]:
        return [Listen(Topic(self.topic))]

    def on_start(self) -> None:
        threading.Thread(target=self._tick, name=f"{self.name}-tick", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(self.tick_s):
            if not self.client.connected:
                self.ticks += 1
                log.warning("tick %d: the broker is away, work goes on", self.ticks)

    @handles("stf_ready")
    def on_stf_ready(self, msg: Message) -> None:
        assert isinstance(msg, StfReady)
        log.warning("handled %s", msg.filename)
        self.send(
            Topic(self.reply_topic),
            self.message(
                ProcessingComplete,
                execution_id=msg.execution_id,
                run_id=msg.run_id,
                state=msg.state,
                substate=msg.substate,
                filename=msg.filename,
                processing_time_s=0,
            ),
        )

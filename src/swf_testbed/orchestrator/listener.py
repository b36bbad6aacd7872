"""The orchestrator's own broker connection: heartbeats, executions, and what a session follows.

:class:`Listener` subscribes to the heartbeat topic and the namespace's
replies (and, to follow a run, its data topics). Heartbeats go to a
:class:`~swf_testbed.orchestrator.health.HeartbeatBook`, replies to an
:class:`~swf_testbed.orchestrator.health.ExecutionBook`, and every other
message of the namespace to the attached observer (a
:class:`~swf_testbed.orchestrator.session.WorkflowSession`).
"""

from __future__ import annotations

import time
from typing import Protocol

from swf_testbed.messages import Heartbeat, Message, MessageError, parse_message
from swf_testbed.mq import BrokerClient, Delivery
from swf_testbed.mq.destinations import (
    HEARTBEAT_TOPIC,
    MONITOR_TOPIC,
    RUN_TOPIC,
    data_topic,
    replies_topic,
    worker_topic,
)
from swf_testbed.orchestrator.health import ExecutionBook, HeartbeatBook, read_watch_file
from swf_testbed.orchestrator.supervisor import RuntimePaths
from swf_testbed.retry import Backoff
from swf_testbed.settings import BrokerSettings


class Observer(Protocol):
    """What the listener hands the namespace's messages to (heartbeats excepted)."""

    def observe(self, msg: Message) -> None: ...


class Listener:
    """The orchestrator's broker connection: heartbeats, executions, and an optional session."""

    def __init__(
        self, broker: BrokerSettings, namespace: str, *, follow_data: bool = False
    ) -> None:
        self.namespace = namespace
        self.beats = HeartbeatBook(namespace)
        self.executions = ExecutionBook(namespace)
        self.session: Observer | None = None
        settings = broker.model_copy(update={"reconnect_initial_s": 0.1, "reconnect_max_s": 1.0})
        self.client = BrokerClient(settings, client_name=f"swf-cli-{namespace}")
        self.client.subscribe(HEARTBEAT_TOPIC, self._on_delivery, ack="auto")
        self.client.subscribe(replies_topic(namespace), self._on_delivery, ack="auto")
        if follow_data:
            for dest in (RUN_TOPIC, data_topic(namespace), worker_topic(namespace), MONITOR_TOPIC):
                self.client.subscribe(dest, self._on_delivery, ack="auto")

    def start(self) -> Listener:
        self.client.start(wait=None)
        return self

    def close(self) -> None:
        self.client.close(timeout=2.0)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        poll = Backoff(0.02, 0.2)
        while time.monotonic() < deadline:
            if self.client.connected:
                return True
            time.sleep(min(poll.next_delay(), max(0.0, deadline - time.monotonic())))
        return self.client.connected

    def seed_from_watch(self, paths: RuntimePaths) -> None:
        snap = read_watch_file(paths.watch_file)
        if snap is None:
            return
        for rec in snap.heartbeats:
            self.beats.add(rec)
        for ex in snap.executions:
            self.executions.add(ex)

    def _on_delivery(self, delivery: Delivery) -> None:
        try:
            msg = parse_message(delivery.body)
        except MessageError:
            return
        if msg.namespace != self.namespace:
            return
        if isinstance(msg, Heartbeat):
            self.beats.observe(msg)
            return
        self.executions.observe(msg)
        session = self.session
        if session is not None:
            session.observe(msg)

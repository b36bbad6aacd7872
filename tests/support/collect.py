"""Collect messages from a real broker and wait for conditions on them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from swf_testbed.messages import Message, MessageError, parse_message
from swf_testbed.mq import BrokerClient, Destination
from swf_testbed.settings import BrokerSettings


class Collector:
    """Subscribes to destinations and keeps every message it receives (parsed)."""

    def __init__(self, settings: BrokerSettings, *destinations: Destination) -> None:
        self.client = BrokerClient(settings, client_name="collector").start()
        self.messages: list[Message] = []
        self.invalid: list[tuple[bytes, str]] = []
        self._cond = threading.Condition()
        for dest in destinations:
            self.client.subscribe(dest, self._on_delivery, ack="auto")

    def _on_delivery(self, delivery: Any) -> None:
        with self._cond:
            try:
                self.messages.append(parse_message(delivery.body))
            except MessageError as exc:
                self.invalid.append((delivery.body, exc.detail))
            self._cond.notify_all()

    def wait_for(
        self,
        predicate: Callable[[list[Message]], bool],
        timeout: float = 20.0,
        what: str = "condition",
    ) -> list[Message]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    summary = [
                        (m.msg_type, getattr(m, "operational_state", ""))
                        for m in self.messages[-20:]
                    ]
                    raise AssertionError(f"timed out waiting for {what}; last messages: {summary}")
                self._cond.wait(remaining)
            return list(self.messages)

    def of_type(self, msg_type: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.msg_type == msg_type]

    def close(self) -> None:
        self.client.close()


def eventually(
    predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Wait until ``predicate()`` holds (e.g. a counter updated just after the message we saw was
    sent).
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)

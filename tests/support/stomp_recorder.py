"""A stomp.py listener that records what a connection receives, for the broker tests."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import stomp

WAIT_S = 10.0  # upper bound for things that normally take milliseconds


class FrameRecorder(stomp.ConnectionListener):
    """Records everything a connection receives, and lets the test wait for it."""

    def __init__(self, on_message: Callable[[Any], None] | None = None) -> None:
        self.cond = threading.Condition()
        self.messages: list[Any] = []
        self.receipts: set[str] = set()
        self.errors: list[Any] = []
        self.connected_headers: dict[str, str] = {}
        self.disconnects = 0
        self.heartbeat_timeouts = 0
        self._hook = on_message

    # stomp.py callbacks (receiver thread)
    def on_connected(self, frame: Any) -> None:
        with self.cond:
            self.connected_headers = dict(frame.headers)
            self.cond.notify_all()

    def on_message(self, frame: Any) -> None:
        if self._hook is not None:
            self._hook(frame)
        with self.cond:
            self.messages.append(frame)
            self.cond.notify_all()

    def on_receipt(self, frame: Any) -> None:
        with self.cond:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.cond.notify_all()

    def on_error(self, frame: Any) -> None:
        with self.cond:
            self.errors.append(frame)
            self.cond.notify_all()

    def on_disconnected(self) -> None:
        with self.cond:
            self.disconnects += 1
            self.cond.notify_all()

    def on_heartbeat_timeout(self) -> None:
        with self.cond:
            self.heartbeat_timeouts += 1
            self.cond.notify_all()

    # test side
    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> bool:
        with self.cond:
            return self.cond.wait_for(predicate, timeout)

    def wait_messages(self, count: int, timeout: float = WAIT_S) -> list[Any]:
        ok = self.wait_for(lambda: len(self.messages) >= count, timeout)
        assert ok, (
            f"got {len(self.messages)} of {count} messages after {timeout:g} s; errors: "
            f"{self.error_text()}"
        )
        with self.cond:
            return list(self.messages)

    def wait_body(self, body: bytes, timeout: float = WAIT_S) -> list[Any]:
        """Wait for a message with this body (a sentinel); every message received up to it.

        What the broker sent this connection before the sentinel has arrived by
        then (frames on one connection come in order), so a test can assert on
        the messages before it without waiting "a while" for anything more.
        """
        ok = self.wait_for(lambda: any(frame.body == body for frame in self.messages), timeout)
        assert ok, (
            f"no message {body!r} after {timeout:g} s; got {self.bodies()}; errors: "
            f"{self.error_text()}"
        )
        with self.cond:
            bodies = [frame.body for frame in self.messages]
            return list(self.messages[: bodies.index(body) + 1])

    def wait_receipt(self, receipt: str, timeout: float = WAIT_S) -> None:
        ok = self.wait_for(lambda: receipt in self.receipts, timeout)
        assert ok, f"no RECEIPT for {receipt!r} after {timeout:g} s; errors: {self.error_text()}"

    def bodies(self) -> list[bytes]:
        with self.cond:
            return [frame.body for frame in self.messages]

    def error_text(self) -> str:
        return (
            "; ".join(f"{f.headers.get('message', '')} {f.body!r}" for f in self.errors) or "none"
        )

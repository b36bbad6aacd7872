"""The sending side's records: a confirmed send awaiting its receipt, and the client's errors."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from swf_testbed.mq.destinations import Destination


class BrokerUnavailable(ConnectionError):
    """The broker could not be reached (or did not confirm) within the allowed time."""


class SendRefused(BrokerUnavailable):
    """The broker answered a send with ERROR (e.g. a full disk); it is not sent again."""


@dataclass(slots=True, eq=False)
class Sent:
    """A confirmed send: done once the broker's receipt is in (or it was refused)."""

    destination: Destination
    data: bytes
    headers: dict[str, str]
    """The frame's headers, ``receipt`` included: a resend is the same frame."""
    done: threading.Event = field(default_factory=threading.Event)
    error: str = ""
    attempts: int = 0
    """How many times the frame was written (more than 1: resent after a reconnect)."""

    @property
    def confirmed(self) -> bool:
        return self.done.is_set() and not self.error

    def wait(self, timeout: float | None = None) -> bool:
        """True once confirmed; raises :class:`SendRefused` if the broker refused it."""
        if not self.done.wait(timeout):
            return False
        if self.error:
            raise SendRefused(f"the broker refused a message to {self.destination}: {self.error}")
        return True

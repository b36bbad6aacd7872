"""What a subscriber receives, and the filter that keeps it from handling a message twice.

A :class:`Delivery` is one message as received, remembering the connection
(``generation``) it came on: an ACK is only ever sent on that connection.

:class:`Duplicates` is the client's duplicate filter, on ``client-individual``
subscriptions, by ``(subscription, msg_id)``. A message can reach a subscriber
twice: a send not confirmed before the connection dropped is sent again (the
broker may have had the first copy), and a message whose ACK the broker lost
in a crash is delivered again. A copy of a message this subscription has
handled is acknowledged and not handed over; a copy that comes on a new
connection while the first one is still being handled (it came on the old
connection, where its ACK can no longer go) waits for that one's outcome:
acknowledged once it was handled, handed over if it failed. Only the last
``capacity`` ``msg_id``s are remembered.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from swf_testbed.mq.destinations import Destination

AckMode = Literal["auto", "client", "client-individual"]

SEEN_PER_CLIENT = 20_000
"""``msg_id``s a client remembers for duplicate filtering (the oldest are forgotten first)."""


@dataclass(slots=True)
class Delivery:
    """One message as received: raw body (bytes) and headers."""

    subscription: Subscription
    headers: dict[str, str]
    body: bytes
    generation: int

    @property
    def destination(self) -> str:
        return self.headers.get("destination", "")

    @property
    def message_id(self) -> str:
        return self.headers.get("message-id", "")

    @property
    def redelivered(self) -> bool:
        """Delivered before (``redelivered:true``): after a reconnect, a NACK, a broker restart."""
        return self.headers.get("redelivered", "false").lower() == "true"

    @property
    def msg_id(self) -> str:
        """Our messages' id (the ``msg_id`` header), the same on every copy; "" for foreign ones."""
        return self.headers.get("msg_id", "")

    @property
    def ack_id(self) -> str:
        # STOMP 1.2 acknowledges by the 'ack' header; 1.0/1.1 by message-id.
        return self.headers.get("ack") or self.message_id


Handler = Callable[[Delivery], None]


@dataclass(slots=True)
class Subscription:
    destination: Destination
    handler: Handler
    ack: AckMode = "client-individual"
    prefetch: int | None = None
    durable_name: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    active: bool = True


@dataclass(slots=True)
class _Seen:
    """What one subscription knows of one ``msg_id``."""

    generation: int
    """The connection the copy being handled came on."""
    settled: bool = False
    """Handled and acknowledged: any later copy is a duplicate."""
    parked: list[Delivery] = field(default_factory=list)
    """Copies from a later connection, waiting for the outcome of the one being handled."""


class Duplicates:
    """The duplicate filter of one client (thread-safe)."""

    def __init__(self, capacity: int = SEEN_PER_CLIENT) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], _Seen] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(delivery: Delivery) -> tuple[str, str] | None:
        if delivery.subscription.ack != "client-individual" or not delivery.msg_id:
            return None
        return delivery.subscription.id, delivery.msg_id

    def admit(self, delivery: Delivery) -> Literal["new", "duplicate", "parked"]:
        """``new``: hand it over; ``duplicate``: acknowledge it, do not; ``parked``: kept, to
        be returned by :meth:`settle` of the copy being handled."""
        key = self._key(delivery)
        if key is None:
            return "new"
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                self._seen[key] = _Seen(delivery.generation)
                while len(self._seen) > self.capacity:
                    self._seen.popitem(last=False)
                return "new"
            self._seen.move_to_end(key)
            if not seen.settled and seen.generation != delivery.generation:
                seen.parked = [d for d in seen.parked if d.generation == delivery.generation]
                seen.parked.append(delivery)
                return "parked"
        return "duplicate"

    def settle(self, delivery: Delivery, *, handled: bool) -> list[Delivery]:
        """The outcome of a delivery handed over (``handled``: acknowledged, or would have been;
        else given back): returns the copies parked meanwhile."""
        key = self._key(delivery)
        if key is None:
            return []
        with self._lock:
            seen = self._seen.get(key)
            if seen is None:
                return []
            parked, seen.parked = seen.parked, []
            if handled:
                seen.settled = True
            else:
                del self._seen[key]
        return parked

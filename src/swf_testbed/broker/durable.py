"""Durable subscriptions: a private queue that a topic (or a wildcard pattern) feeds.

See docs/broker.md (*Durable subscriptions*, *The journal*).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from swf_testbed.broker.destinations import AUTO, Message, Queue, Subscription, Topic
from swf_testbed.broker.store import StoredMessage

if TYPE_CHECKING:
    from swf_testbed.broker.server import Broker

log = logging.getLogger("swf_testbed.broker")

DROP_REPORT_S = 1.0  # a durable backlog that drops messages says so at most this often


class Durable(Queue):
    """A durable topic subscription: a private queue that its topic (or pattern) feeds.

    It sits in its :class:`Topic`'s (or :class:`WildTopic`'s) subscriber list
    for its whole life, attached to a consumer (:class:`Subscription`) or
    not; every message it matches goes to its backlog, and from there to the
    consumer as a queue hands messages out. The backlog in memory
    (``messages``) is bounded by the broker's ``durable_max_messages`` and
    ``durable_max_bytes``. Past them, journaled (persistent) messages wait
    in the journal only (``paged``, after every message in memory) and are
    read back as the consumer catches up; messages that are not journaled
    are dropped, the oldest first, counted and reported. Messages are shared
    with the other subscribers of the topic, so they are never modified
    here: redeliveries are copies.
    """

    broker: Broker  # a queue needs only the router; a durable also the broker's loop and limits

    __slots__ = (
        "_drop_timer",
        "active",
        "burst",
        "client_id",
        "consumer",
        "dropped",
        "nbytes",
        "selector",
        "selector_text",
        "source",
        "sub_name",
        "topic_name",
    )
    counts_held = False  # ``nbytes``: the backlog's bytes, counted as messages leave it

    def __init__(
        self,
        broker: Broker,
        client_id: str,
        sub_name: str,
        source: Topic,
        selector_text: str | None,
        selector: Callable[[dict[str, str]], bool] | None,
    ) -> None:
        super().__init__(f"{client_id}:{sub_name}", broker)
        self.client_id = client_id
        self.sub_name = sub_name
        self.source = source
        self.topic_name = source.name
        self.selector_text = selector_text
        self.selector = selector  # applied by the topic, before the backlog
        self.consumer: Subscription | None = None
        self.active = True
        self.nbytes = 0
        self.dropped = 0  # in all
        self.burst = 0  # since the last report
        self._drop_timer: asyncio.TimerHandle | None = None

    @property
    def label(self) -> str:
        return f"{self.sub_name} (client-id {self.client_id})"

    @property
    def journal_key(self) -> str:
        """Its name in the journal: ``<client-id> NUL <subscription name>``."""
        return f"{self.client_id}\x00{self.sub_name}"

    # -- as a subscriber of its topic

    def offer_topic(self, msg: Message) -> None:
        b = self.broker
        sub = self.consumer
        straight = (
            sub is not None
            and not self.messages
            and not self.paged
            and not self.dispatching
            and sub.can_take()
        )
        location = None
        if (
            b.journal is not None
            and msg.headers.get("persistent") == "true"
            and not (straight and sub is not None and sub.ack == AUTO)  # consumed at once
        ):
            msg = msg.durable_copy()  # its own journal record, acknowledged on its own
            location = b.journal_durable(self, msg)
        if straight:
            assert sub is not None
            sub.deliver(msg)  # nothing waiting, room: straight through
            return
        if location is not None and (self.paged or not self.has_room_for(msg.size)):
            self.paged.append((location, msg.redelivered))  # past the bound: the journal keeps it
        elif self.paged:
            self.drop_new()  # not journaled, and behind paged messages: it cannot wait in order
        else:
            self.keep(msg)
            if not self.within_bound():
                self.trim()
        if self.consumer is not None:
            self.dispatch()

    # -- the bound, as the queue's hooks

    def has_room_for(self, size: int) -> bool:
        b = self.broker
        return (
            self.nbytes + size <= b.durable_max_bytes
            and len(self.messages) < b.durable_max_messages
        )

    def within_bound(self) -> bool:
        b = self.broker
        return self.nbytes <= b.durable_max_bytes and len(self.messages) <= b.durable_max_messages

    def has_room(self) -> bool:
        b = self.broker
        return self.nbytes < b.durable_max_bytes and len(self.messages) < b.durable_max_messages

    def keep(self, msg: Message) -> None:
        self.messages.append(msg)
        self.nbytes += msg.size

    def from_journal(self, stored: StoredMessage, redelivered: bool) -> Message:
        msg = Message(
            stored.message_id, stored.headers, stored.body, stored.destination.rpartition("\x00")[2]
        )
        msg.seq = stored.seq
        msg.redelivered = redelivered
        return msg

    # -- as a queue with (at most) one consumer

    def attach(self, sub: Subscription) -> None:
        self.consumer = sub
        sub.target = self
        self.dispatch()

    def dispatch(self) -> None:
        sub = self.consumer
        messages = self.messages
        if sub is None or self.dispatching or self.broker.stopping:
            return
        if not messages and not self.paged:
            return
        self.dispatching = True
        try:
            while True:
                while messages and sub.can_take():
                    msg = messages.popleft()
                    self.nbytes -= msg.size
                    sub.deliver(msg)
                if not messages and self.paged and sub.can_take() and self.page_in():
                    continue
                break
        finally:
            self.dispatching = False

    def put_back(self, msg: Message, sub: Subscription) -> None:
        self.messages.appendleft(msg.redelivered_copy())
        self.nbytes += msg.size
        self.trim()
        self.dispatch()

    def consumer_gone(self, sub: Subscription) -> None:
        """Detached: its unacknowledged messages go back to the head of the backlog, redelivered."""
        if self.consumer is sub:
            self.consumer = None
        if sub.unacked:
            msgs = [m.redelivered_copy() for m in sub.unacked.values()]
            sub.unacked.clear()
            self.messages.extendleft(reversed(msgs))
            self.nbytes += sum(m.size for m in msgs)
            self.trim()

    # -- the bound

    def trim(self) -> None:
        """Drop the oldest messages that are not journaled while over a bound; count them.

        Journaled messages are never dropped: the journal keeps them, and the
        bound is kept by paging new ones (:meth:`offer_topic`).
        """
        if self.within_bound():
            return
        b = self.broker
        count, nbytes, n = len(self.messages), self.nbytes, 0
        kept: deque[Message] = deque()
        rest = iter(self.messages)
        for msg in rest:
            if msg.seq:
                kept.append(msg)  # journaled: kept (only put-back messages are over the bound)
                continue
            count -= 1
            nbytes -= msg.size
            n += 1
            if count <= b.durable_max_messages and nbytes <= b.durable_max_bytes:
                break
        kept.extend(rest)
        self.messages, self.nbytes = kept, nbytes
        self._count_drops(n)

    def drop_new(self) -> None:
        """A message that is not journaled arrived while the backlog pages: dropped."""
        self._count_drops(1)

    def _count_drops(self, n: int) -> None:
        """Count ``n`` dropped messages and say so, once per burst."""
        if not n:
            return
        b = self.broker
        self.dropped += n
        self.burst += n
        if self._drop_timer is None and b.loop is not None:
            self._drop_timer = b.loop.call_later(DROP_REPORT_S, self.report_drops)

    def report_drops(self) -> None:
        """Log the drops since the last report; keep watching while the burst goes on."""
        self._drop_timer = None
        if not self.burst:
            return  # the burst is over
        b = self.broker
        log.warning(
            "durable subscription %s: dropped %d messages (backlog full: limits %d messages, "
            "%d bytes; %d dropped in all)",
            self.label,
            self.burst,
            b.durable_max_messages,
            b.durable_max_bytes,
            self.dropped,
        )
        self.burst = 0
        if self.active and not b.stopping and b.loop is not None:
            self._drop_timer = b.loop.call_later(DROP_REPORT_S, self.report_drops)

    def forget(self) -> None:
        """Removed for good: its journaled messages are done."""
        b = self.broker
        for msg in self.messages:
            if msg.seq:
                b.done(msg)
        if b.journal is not None:
            for location, _ in self.paged:
                b.journal.ack(location[3])
            b.schedule_commit()
        self.close()

    def close(self) -> None:
        """Removed (or the broker stops): report pending drops, let go of the backlog."""
        self.active = False
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        self.report_drops()
        self.messages.clear()
        self.paged.clear()
        self.nbytes = 0

"""Destinations: messages, subscriptions, topics (exact, wildcard), queues.

Durable subscriptions (queues that a topic feeds) are in :mod:`.durable`.
What each holds and how it hands messages on; :mod:`.routing` decides which
destination a message goes to. See docs/broker.md for the behaviour.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from swf_testbed.broker.frames import ProtocolError, escape
from swf_testbed.broker.store import Journal, Location, StoredMessage

if TYPE_CHECKING:
    from swf_testbed.broker.connection import Connection
    from swf_testbed.broker.durable import Durable
    from swf_testbed.broker.routing import Router

log = logging.getLogger("swf_testbed.broker")

AUTO, CLIENT, INDIVIDUAL = 0, 1, 2
ACK_MODES = {"auto": AUTO, "client": CLIENT, "client-individual": INDIVIDUAL}

TOPIC, QUEUE = "topic", "queue"


# =========================================================================== wildcards

_WILD_ELEMENTS = frozenset({"*", ">"})


def has_wildcard(name: str) -> bool:
    """Whether an element of ``name`` is ``*`` or ``>`` (two substring tests for a plain name)."""
    if "*" not in name and ">" not in name:
        return False
    return not _WILD_ELEMENTS.isdisjoint(name.split("."))


def wildcard_pattern(name: str) -> tuple[str, ...] | None:
    """The elements of a wildcard topic name; None for a plain name.

    Raises ValueError when ``>`` is not the last element.
    """
    if not has_wildcard(name):
        return None
    elements = tuple(name.split("."))
    if ">" in elements[:-1]:
        raise ValueError(
            "'>' stands for the remaining elements of a name: only the last may be '>'"
        )
    return elements


def _pattern_matches(pattern: tuple[str, ...], name: str) -> bool:
    """``pattern``: elements from :func:`wildcard_pattern`; ``name``: a plain topic name."""
    if name.startswith("/temp-") != pattern[0].startswith("/temp-"):
        return False  # temporary topics only match wildcards written with their prefix
    elements = name.split(".")
    if pattern[-1] == ">":
        n = len(pattern) - 1
        if len(elements) < n:  # ">" takes zero or more elements (ActiveMQ Classic 5.17)
            return False
    elif len(elements) != len(pattern):
        return False
    else:
        n = len(pattern)
    for i in range(n):
        p = pattern[i]
        if p != "*" and p != elements[i]:
            return False
    return True


def topic_matches(pattern: str, name: str) -> bool:
    """Whether a topic subscription to ``pattern`` gets what is sent to the topic ``name``.

    ActiveMQ wildcards: ``*`` is one element, a last ``>`` the remaining
    elements (zero or more); a pattern without wildcards matches itself only.
    """
    elements = wildcard_pattern(pattern)
    if elements is None:
        return pattern == name
    return _pattern_matches(elements, name)


class Message:
    """One message as sent: the broker's id, the user headers, the body.

    ``topic``: the name it was sent to (wildcard subscriptions name that
    topic in their MESSAGE frames).
    """

    __slots__ = (
        "_enc",
        "avoid",
        "body",
        "headers",
        "id",
        "id_b",
        "redelivered",
        "seq",
        "size",
        "topic",
    )

    def __init__(self, mid: str, headers: dict[str, str], body: bytes, topic: str = "") -> None:
        self.id = mid
        self.id_b = mid.encode()
        self.headers = headers
        self.body = body
        self.topic = topic
        self.size = len(body) + 128 + sum(len(k) + len(v) + 2 for k, v in headers.items())
        self.redelivered = False
        self.avoid: Subscription | None = None  # NACKed by: prefer another subscription
        self._enc: dict[str, bytes] | None = None
        self.seq = 0  # journal sequence number of a persistent queue message (0: not journaled)

    def encoded_headers(self, version: str) -> bytes:
        """User headers + content-length + the blank line, escaped for ``version`` (cached)."""
        enc = self._enc
        if enc is None:
            enc = self._enc = {}
        else:
            b = enc.get(version)
            if b is not None:
                return b
        parts = [f"{escape(k, version)}:{escape(v, version)}\n" for k, v in self.headers.items()]
        parts.append(f"content-length:{len(self.body)}\n\n")
        b = enc[version] = "".join(parts).encode("utf-8")
        return b

    def mirror_copy(self, topic: str) -> Message:
        """The same message (id, headers, body) as published on ``topic``."""
        m = self.redelivered_copy()
        m.redelivered = False
        m.topic = topic
        m.seq = 0  # the copy is a topic message: never journaled
        return m

    def durable_copy(self) -> Message:
        """The same message for one durable subscription's journal record (its own ``seq``)."""
        m = self.redelivered_copy()
        m.redelivered = self.redelivered
        m.seq = 0
        return m

    def redelivered_copy(self) -> Message:
        m = Message.__new__(Message)
        m.id, m.id_b, m.headers, m.body, m.size, m.topic = (
            self.id,
            self.id_b,
            self.headers,
            self.body,
            self.size,
            self.topic,
        )
        m.redelivered = True
        m.avoid = None
        m._enc = self._enc
        m.seq = self.seq
        return m


class Subscription:
    __slots__ = (
        "ack",
        "ack_suffix",
        "active",
        "conn",
        "destination",
        "head",
        "heads",
        "id",
        "key",
        "kind",
        "pending",
        "prefetch",
        "prefix",
        "selector",
        "serial",
        "target",
        "unacked",
    )

    def __init__(
        self,
        conn: Connection,
        sid: str | None,
        key: str,
        serial: str,
        destination: str,
        kind: str,
        ack: int,
        prefetch: int,
        selector: Callable[[dict[str, str]], bool] | None,
    ) -> None:
        self.conn = conn
        self.id = sid
        self.key = key
        self.serial = serial
        self.destination = destination
        self.kind = kind
        self.target: Topic | Queue | None = None
        self.ack = ack
        self.prefetch = prefetch
        self.unacked: OrderedDict[str, Message] = OrderedDict()
        self.pending: deque[Message] = deque()  # topic messages held over the prefetch
        self.selector = selector
        v = conn.version
        head = "" if sid is None else f"subscription:{escape(sid, v)}\n"
        head += f"destination:{escape(destination, v)}\n"
        self.head = head.encode("utf-8")
        self.heads: dict[str, bytes] | None = None  # wildcard: MESSAGE head per topic
        self.prefix = ""
        self.ack_suffix = b"/" + serial.encode()
        self.active = True

    def set_wildcard(self, name: str) -> None:
        """A wildcard subscription (``name``: the pattern): MESSAGE frames name the actual topic."""
        self.head = b""
        self.heads = {}
        # how the subscriber spelled topics: "/topic/" + name, or name alone (MULTICAST)
        self.prefix = self.destination[: len(self.destination) - len(name)]

    def _head_for(self, msg: Message) -> bytes:
        heads = self.heads
        assert heads is not None
        head = heads.get(msg.topic)
        if head is None:
            if len(heads) >= 1024:
                heads.clear()
            v = self.conn.version
            text = "" if self.id is None else f"subscription:{escape(self.id, v)}\n"
            text += f"destination:{escape(self.prefix + msg.topic, v)}\n"
            head = heads[msg.topic] = text.encode("utf-8")
        return head

    def can_take(self) -> bool:
        """Room for one more queue message: under the prefetch and the connection not backed up."""
        conn = self.conn
        if conn.paused or conn.out_bytes >= conn.broker.write_buffer_high:
            if not conn.closing:
                conn.blocked = True
            return False
        if conn.closing:
            return False
        return self.ack == AUTO or len(self.unacked) < self.prefetch

    def deliver(self, msg: Message) -> None:
        conn = self.conn
        head = self.head or self._head_for(msg)
        if msg.seq and self.ack == AUTO:
            conn.broker.done(msg)  # consumed on delivery: the journal can forget it
        if self.ack != AUTO:
            self.unacked[msg.id] = msg
            if conn.v12:
                parts = [
                    b"MESSAGE\n",
                    head,
                    b"message-id:",
                    msg.id_b,
                    b"\nack:",
                    msg.id_b,
                    self.ack_suffix,
                    b"\n",
                ]
            else:
                parts = [b"MESSAGE\n", head, b"message-id:", msg.id_b, b"\n"]
        else:
            parts = [b"MESSAGE\n", head, b"message-id:", msg.id_b, b"\n"]
        if msg.redelivered:
            parts.append(b"redelivered:true\n")
            conn.broker.redeliveries += 1
        conn.broker.messages_out[self.destination] += (
            1  # stats: the subscribed name, pattern or not
        )
        hdrs = msg.encoded_headers(conn.version)
        parts.append(hdrs)
        parts.append(msg.body)
        parts.append(b"\x00")
        conn.write_parts(parts, msg.size)

    def offer_topic(self, msg: Message) -> None:
        """A topic message for this subscription (selector already applied)."""
        conn = self.conn
        if self.ack != AUTO and (self.pending or len(self.unacked) >= self.prefetch):
            self.pending.append(msg)
            conn.pending_bytes += msg.size
            conn.check_slow()
            return
        self.deliver(msg)
        if conn.paused or conn.out_bytes >= conn.broker.write_buffer_high:
            conn.throttle()

    def drain_pending(self) -> None:
        pending = self.pending
        conn = self.conn
        while pending and len(self.unacked) < self.prefetch and not conn.closing:
            msg = pending.popleft()
            conn.pending_bytes -= msg.size
            self.deliver(msg)


class Topic:
    """The subscriptions of one topic name: plain ones, and durable ones (attached or not)."""

    __slots__ = ("name", "subs")
    kind = TOPIC

    def __init__(self, name: str) -> None:
        self.name = name
        self.subs: list[Subscription | Durable] = []

    def publish(self, msg: Message) -> None:
        subs = self.subs
        if len(subs) == 1:
            sub = subs[0]
            if sub.selector is None or sub.selector(msg.headers):
                sub.offer_topic(msg)
            return
        for sub in tuple(subs):
            if sub.active and (sub.selector is None or sub.selector(msg.headers)):
                sub.offer_topic(msg)


class WildTopic(Topic):
    """The subscriptions of one wildcard pattern (``name``: the pattern, e.g. ``swf.>``)."""

    __slots__ = ("pattern",)

    def __init__(self, name: str, pattern: tuple[str, ...]) -> None:
        super().__init__(name)
        self.pattern = pattern

    def matches(self, name: str) -> bool:
        return _pattern_matches(self.pattern, name)


class Queue:
    """A queue: messages wait in ``messages`` (memory) and, past the memory limit, in the journal.

    ``held`` counts the bytes of the queue's messages in memory, waiting or
    delivered and not yet acknowledged. Once a message would take it over the
    broker's ``queue_memory_limit``, persistent messages are kept in the
    journal only (``paged``: their locations, in order, after every message in
    memory) and read back as the consumers make room; other messages are
    refused (:meth:`put`).
    """

    __slots__ = (
        "broker",
        "dispatching",
        "held",
        "messages",
        "name",
        "paged",
        "rr",
        "selectors",
        "subs",
    )
    kind = QUEUE
    counts_held = True  # ``held`` goes down at the ACK (a Durable counts its backlog instead)

    def __init__(self, name: str, broker: Router) -> None:
        self.name = name
        self.messages: deque[Message] = deque()
        self.subs: list[Subscription] = []
        self.rr = 0
        self.selectors = 0  # subscriptions with a selector
        self.broker = broker
        self.dispatching = False
        self.held = 0
        self.paged: deque[tuple[Location, bool]] = deque()  # journal record, redelivered

    # -- memory

    def put(self, msg: Message, location: Location | None) -> None:
        """Enqueue ``msg`` (``location``: its journal record, if journaled); refuse it when full."""
        if self.paged or not self.has_room_for(msg.size):
            if location is None:
                limit = self.broker.queue_memory_limit
                raise ProtocolError(
                    f"Queue {self.name} is full",
                    f"queue {self.name!r} holds {self.held} bytes in memory (limit {limit}); "
                    "past the limit only persistent messages (persistent:true) are accepted, "
                    "and they wait in the broker's journal"
                    + ("" if self.broker.journal is not None else " (this broker has none)"),
                )
            self.paged.append((location, msg.redelivered))
            return
        self.keep(msg)

    # The memory bound, as hooks: a Durable bounds its backlog by its own limits.

    def has_room_for(self, size: int) -> bool:
        """Whether a message of ``size`` bytes may wait in memory."""
        return self.held + size <= self.broker.queue_memory_limit

    def has_room(self) -> bool:
        """Whether paged messages may be read back into memory."""
        return self.held < self.broker.queue_memory_limit

    def keep(self, msg: Message) -> None:
        """``msg`` waits in memory, after the others."""
        self.messages.append(msg)
        self.held += msg.size

    def from_journal(self, stored: StoredMessage, redelivered: bool) -> Message:
        """The message of a journal record, as this destination hands it out."""
        msg = Message(stored.message_id, stored.headers, stored.body, stored.destination)
        msg.seq = stored.seq
        msg.redelivered = redelivered
        return msg

    def restore(self, stored: StoredMessage, journal: Journal) -> None:
        """A journaled message found at start (without its body): in memory if room, else paged."""
        assert stored.location is not None
        headers = sum(len(k) + len(v) + 2 for k, v in stored.headers.items())
        size = stored.location[2] + 128 + headers  # about: Message.size, headers counted twice
        if self.paged or not self.has_room_for(size):
            self.paged.append((stored.location, True))
            return
        loaded = journal.read(stored.location)
        if loaded is not None:
            self.keep(self.from_journal(loaded, True))

    def page_in(self) -> bool:
        """Read paged messages back while there is room; whether any came."""
        journal = self.broker.journal
        paged = self.paged
        if journal is None:
            paged.clear()
            return False
        loaded = False
        while paged and self.has_room():
            location, redelivered = paged[0]
            if not journal.is_live(location[3]):
                paged.popleft()  # its commit failed (the producer got an ERROR): not kept
                continue
            if not journal.committed(location):
                self.broker.page_after_commit(self)
                break
            paged.popleft()
            stored = journal.read(location)
            if stored is None:
                continue  # its commit failed (the producer got an ERROR), or it is gone
            self.keep(self.from_journal(stored, redelivered))
            loaded = True
        return loaded

    @property
    def depth(self) -> int:
        """Messages waiting: in memory and in the journal only."""
        return len(self.messages) + len(self.paged)

    # -- handing messages out

    def dispatch(self) -> None:
        """Hand queued messages to subscriptions that can take them, round robin."""
        if self.dispatching or self.broker.stopping or not self.subs:
            return
        if not self.messages and not self.paged:
            return
        self.dispatching = True
        try:
            while True:
                if self.selectors:
                    self._dispatch_selective()
                else:
                    self._dispatch_simple()
                if not self.paged or not self.page_in():
                    break
        finally:
            self.dispatching = False

    def _pick(self, msg: Message | None) -> Subscription | None:
        subs = self.subs
        n = len(subs)
        rr = self.rr % n
        avoid = msg.avoid if msg is not None else None
        fallback = None
        for i in range(n):
            idx = (rr + i) % n
            sub = subs[idx]
            if msg is not None and sub.selector is not None and not sub.selector(msg.headers):
                continue
            if not sub.can_take():
                continue
            if sub is avoid and n > 1:
                fallback = (sub, idx)
                continue
            self.rr = idx + 1
            return sub
        if fallback is not None:
            self.rr = fallback[1] + 1
            return fallback[0]
        return None

    def _dispatch_simple(self) -> None:
        messages = self.messages
        subs = self.subs
        while messages and subs:
            msg = messages[0]
            if msg.avoid is None and len(subs) == 1:
                sub = subs[0]
                if not sub.can_take():
                    return
            else:
                picked = self._pick(msg)
                if picked is None:
                    return
                sub = picked
            messages.popleft()
            msg.avoid = None
            sub.deliver(msg)
            if sub.ack == AUTO:
                self.held -= msg.size  # consumed

    def put_back(self, msg: Message, sub: Subscription) -> None:
        """A NACKed message: back to the head, to another subscription when one can take it."""
        msg.redelivered = True
        msg.avoid = sub
        self.messages.appendleft(msg)
        self.dispatch()

    def _dispatch_selective(self) -> None:
        kept: deque[Message] = deque()
        messages = self.messages
        while messages and self.subs:
            if not any(s.can_take() for s in self.subs):
                break
            msg = messages.popleft()
            sub = self._pick(msg)
            if sub is None:
                kept.append(msg)
                continue
            msg.avoid = None
            sub.deliver(msg)
            if sub.ack == AUTO:
                self.held -= msg.size  # consumed
        kept.extend(messages)
        self.messages = kept

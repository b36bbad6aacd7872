"""The embedded STOMP broker: pure asyncio, standard library only.

The default broker for one machine, the way Django ships ``runserver``: not
for production (no persistence, no clustering), but correct, and fast
enough that it is never the bottleneck of a testbed on a laptop. Production
uses ActiveMQ; wherever the STOMP specification leaves room, this broker does
what ActiveMQ Classic does, so the same client code behaves the same on both.

Protocol
    STOMP 1.0, 1.1 and 1.2 (negotiated from ``accept-version``; 1.0 when it
    is absent). CONNECTED carries ``version``, ``server``
    (``swf-testbed/<version>``), ``session`` and ``heart-beat``. Heart-beats
    as ActiveMQ negotiates them: CONNECTED answers ``cy,cx`` (the client gets
    the rates it asked for), with a floor of 100 ms on any non-zero rate;
    1.0 connections get ``0,0``. The broker checks every half interval and
    writes an EOL if it wrote nothing since the last check, so the gap
    between two writes stays within the negotiated interval (stomp.py
    drops a connection after 1.5x); it closes a connection it has heard
    nothing from for twice the client's interval (as the testbed configures
    ActiveMQ: ``hbGracePeriodMultiplier=2``). A connection that sends no
    CONNECT within ``connect_timeout`` seconds (30) is closed.

Memory
    Nothing is persisted: the broker keeps nothing across its own restart
    (queues, durable subscriptions and their backlogs are gone). Queues and
    open transactions are not bounded: a queue nobody consumes keeps every
    message sent to it (as ActiveMQ until its store fills); the backlog of a
    durable subscription is bounded (below); everything else is bounded per
    connection (frame limits, write buffers, the slow-consumer cap below).

Destinations
    ``/topic/NAME`` fans out to every current subscription (no subscriber:
    the message is dropped). ``/queue/NAME`` gives each message to exactly one
    subscription, round robin, and keeps messages while nobody subscribes.
    A bare name is a queue, unless the SEND says ``destination-type:
    MULTICAST`` (SUBSCRIBE: ``subscription-type: MULTICAST``), Artemis style;
    ``ANYCAST`` is a queue. ``/topic/x`` and ``x`` + MULTICAST are the same
    topic, ``/queue/x`` and ``x`` the same queue. MESSAGE frames name the
    destination as the subscriber spelled it (wildcard subscriptions: the
    topic the message was sent to, below).

Wildcards (topics)
    ActiveMQ syntax: a name is dot-separated elements; in a topic SUBSCRIBE
    an element ``*`` matches exactly one element, and a last element ``>``
    matches all the remaining elements, *zero or more*, as ActiveMQ Classic
    5.17 does (measured): ``swf.>`` matches ``swf.a``, ``swf.a.b`` and
    ``swf`` itself; ``swf.*`` matches ``swf.a`` only; ``>`` alone matches
    every topic (temporary topics only match wildcards written with their
    ``/temp-topic/`` prefix). ``*`` or ``>`` inside an element (``a*``) is
    a literal character; ``>`` before the last element is an ERROR. The
    MESSAGE ``destination`` of a wildcard subscription is the topic the
    message was sent to, in the subscriber's spelling (``/topic/swf.a`` for
    ``/topic/swf.>``, ``swf.a`` for ``swf.>`` + MULTICAST), as ActiveMQ. A
    SEND to a name with a wildcard element is an ERROR (ActiveMQ accepts it
    as a literal name that wildcard subscribers then match; nothing here
    needs that). Queues have no wildcards: a queue SUBSCRIBE or SEND with a
    wildcard element is an ERROR. Exact-name subscriptions cost what they
    did; a topic name is matched against the wildcard subscriptions once,
    and the result cached until the set of wildcard patterns changes.

Messages
    MESSAGE carries ``subscription``, ``destination``, ``message-id``
    (unique, the same on every redelivery, and made of the sending
    connection's ``session`` and a serial, ``<session>:<n>``, as ActiveMQ's
    name the producer's connection: a body cannot forge where it came from), ``ack`` (1.2 with a client
    ack mode; a per-delivery id, ActiveMQ style; an ACK naming the message-id
    instead is accepted too), ``redelivered:true`` on redeliveries, every
    header of the SEND except ``transaction``/``receipt``, and
    ``content-length``. Bodies are bytes and never decoded.

Acknowledgement
    ``auto``; ``client`` (an ACK is cumulative over the subscription);
    ``client-individual``. NACK is per message in both client modes (as in
    ActiveMQ) and redelivers the message marked ``redelivered:true``: a
    queue message goes back to the head of the queue and to another
    subscription when one can take it (else the same one); a topic message
    goes back to the same subscription. NACK on a 1.0 connection is an
    error (as in ActiveMQ). An ACK/NACK for a message that is not
    outstanding is an error. Unacknowledged queue messages return to the
    head of their queue, marked redelivered, when the subscription goes
    (UNSUBSCRIBE, DISCONNECT, dropped connection).

Flow control
    ``activemq.prefetchSize`` on SUBSCRIBE caps the unacknowledged messages
    of a client/client-individual subscription (default 1000 for queues,
    32766 for topics, as ActiveMQ; 0 is taken as 1). A queue hands a
    message to a subscription only when the subscription is under its
    prefetch *and* its connection's write buffer is under the high-water
    mark (1 MiB), so competing consumers share the work and queue messages
    wait in the queue, not in socket buffers.

Slow consumers (the choice made here)
    Topic messages cannot wait in a queue. When a topic subscriber's
    connection is backed up (write buffer over the high-water mark), the
    broker stops reading
    from the connection whose SEND produced the message — producer flow
    control, as ActiveMQ Classic does — until the subscriber catches up
    (below the low-water mark). So a burst paces the producer to its
    consumers instead of piling up in memory, and "as fast as consumers keep
    up" works. Unlike ActiveMQ (where a stuck consumer blocks producers
    forever), a subscriber that keeps producers waiting for longer than
    ``slow_consumer_timeout`` (default 10 s) without catching up is sent
    ``ERROR message:slow consumer`` and closed (aborted after a short grace
    if it does not read that either). Whatever the cause, no connection may
    have more than ``max_pending_bytes`` (default 64 MiB) waiting for it
    (write buffer + held topic messages): past that it is closed the same
    way at once; this also bounds the topic messages held for a client-ack
    subscription over its prefetch (they wait for ACKs, which is the
    application's pace, so they do not hold producers back). Memory per
    connection is therefore bounded. The broker does
    not stop reading a connection because *its own* writes back up (a client
    that replies from its receive loop would deadlock).

Durable subscriptions
    As ActiveMQ Classic: CONNECT with a ``client-id``, SUBSCRIBE to a topic
    (exact or wildcard) with ``activemq.subscriptionName: NAME`` (or
    ``durable-subscription-name: NAME``, the Artemis spelling; ActiveMQ
    Classic only knows the first). The subscription is keyed on (client-id,
    NAME) and outlives the connection: while nobody is attached to it, the
    messages it matches (selector applied) wait in its backlog. A later
    connection with the same client-id that subscribes with the same NAME
    and the same destination and selector gets the backlog, in order, then
    live messages; with another destination or selector the old durable
    subscription and its backlog are discarded and a new one starts (as
    ActiveMQ). While attached, a durable subscription is served like a
    queue with one consumer: ack modes and ``activemq.prefetchSize``
    (default 100, as ActiveMQ) apply, what the subscriber cannot take yet
    waits in the backlog, not in socket buffers, and a slow durable
    subscriber never holds producers back (its backlog bound applies). Unacknowledged messages go back
    to the head of the backlog, same message-id, marked ``redelivered:true``,
    when the connection goes or on NACK (ActiveMQ Classic redelivers them
    too, without the mark). UNSUBSCRIBE with the ``id`` only detaches (the
    subscription stays durable); UNSUBSCRIBE carrying the subscription name
    (either header) removes it for good, and like ActiveMQ refuses to while
    it is attached ("Durable consumer is in use": detach first) or when
    there is no such subscription. The backlog is bounded by
    ``durable_max_messages`` (1 000 000) and ``durable_max_bytes`` (512 MiB)
    per durable subscription: past either, the oldest messages are dropped,
    counted (:meth:`Broker.stats`) and logged at WARNING, one line per second
    at most while a burst lasts ("durable subscription NAME (client-id X):
    dropped N messages (backlog full)"). Errors: a durable SUBSCRIBE on a
    connection without a client-id (ActiveMQ would make one up, which no
    later connection can present); the same NAME subscribed twice at once;
    a CONNECT with a client-id that another connection is using ("Broker:
    localhost - Client: X already connected from tcp://HOST:PORT", ActiveMQ's
    wording: a client whose connection died unnoticed is refused until the
    broker notices, e.g. by heart-beat). The subscription name is ignored on
    a queue SUBSCRIBE (as ActiveMQ). Nothing survives a broker restart.

Transactions
    BEGIN/COMMIT/ABORT: SENDs and ACK/NACKs carrying ``transaction`` are held
    and applied, in order, at COMMIT; ABORT (or the connection going away)
    discards them (messages acknowledged in an aborted transaction stay
    unacknowledged).

Selectors
    A ``selector`` on SUBSCRIBE (JMS/SQL-92 subset, as ActiveMQ accepts on
    STOMP) filters on message headers: ``= <> < <= > >=``, ``AND OR NOT``,
    ``[NOT] IN``, ``[NOT] LIKE … [ESCAPE …]``, ``[NOT] BETWEEN``,
    ``IS [NOT] NULL``, arithmetic, string/number/boolean literals; header
    values are strings, compared as numbers when the other side is a number.
    A selector that does not parse is an ERROR.

Errors
    Every error is an ERROR frame (``message`` header, ``content-type:
    text/plain``, ``receipt-id`` when the offending frame asked for a
    receipt, and a body explaining what was wrong), after which that
    connection is closed, as the specification requires; the broker and every
    other connection carry on. Frames are bounded by :class:`Limits` (body
    16 MiB, command + headers 64 KiB, 1000 headers by default).

Authentication
    When ``login``/``passcode`` are configured, a CONNECT must carry them.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import secrets
import signal
import ssl
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from typing import Any

from swf_testbed import __version__
from swf_testbed.broker.frames import Frame, FrameError, FrameParser, Limits, encode_frame, escape

__all__ = [
    "Broker",
    "Limits",
    "ProtocolError",
    "SelectorError",
    "compile_selector",
    "run",
    "topic_matches",
]

log = logging.getLogger("swf_testbed.broker")

SERVER_NAME = f"swf-testbed/{__version__}"

AUTO, CLIENT, INDIVIDUAL = 0, 1, 2
_ACK_MODES = {"auto": AUTO, "client": CLIENT, "client-individual": INDIVIDUAL}

TOPIC, QUEUE = "topic", "queue"

# Headers of a SEND that the broker does not pass on as they are (it sets its own).
_BROKER_HEADERS = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "content-length",
        "transaction",
        "receipt",
    }
)

MIN_HEARTBEAT_MS = 100

# SUBSCRIBE/UNSUBSCRIBE headers naming a durable subscription: ActiveMQ Classic, Artemis.
_DURABLE_NAME_HEADERS = ("activemq.subscriptionName", "durable-subscription-name")

# Broker name in ActiveMQ-worded errors ("Broker: localhost - Client: X already connected ...").
BROKER_NAME = "localhost"

DROP_REPORT_S = 1.0  # a durable backlog that drops messages says so at most this often

_SEND, _ACK, _NACK = 0, 1, 2


class ProtocolError(Exception):
    """A frame the broker refuses: answered with ERROR, then the connection closes."""

    def __init__(
        self, message: str, detail: str = "", headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or message
        self.headers = headers or {}


# =========================================================================== selectors


class SelectorError(ValueError):
    """A selector that cannot be parsed."""


_SEL_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)[lLfFdD]?
      | (?P<op><>|<=|>=|!=|=|<|>|\(|\)|,|\+|-|\*|/)
      | (?P<id>[A-Za-z_$][A-Za-z0-9_$.]*)
    )""",
    re.VERBOSE,
)
_SEL_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "IS", "NULL", "TRUE", "FALSE"}
)

Value = Any
Evaluator = Callable[[dict[str, str]], Value]


def _sel_tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _SEL_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(f"unexpected character at position {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("lit", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            num = m.group("num")
            out.append(("lit", float(num) if any(c in num for c in ".eE") else int(num)))
        elif m.group("op") is not None:
            op = m.group("op")
            out.append(("op", "<>" if op == "!=" else op))
        else:
            word = m.group("id")
            upper = word.upper()
            if upper in _SEL_KEYWORDS:
                if upper in ("TRUE", "FALSE"):
                    out.append(("lit", upper == "TRUE"))
                elif upper == "NULL":
                    out.append(("null", None))
                else:
                    out.append(("kw", upper))
            else:
                out.append(("id", word))
    out.append(("end", None))
    return out


def _to_number(v: Value) -> Value:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None
    return None


def _to_bool(v: Value) -> Value:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.lower()
        if low == "true":
            return True
        if low == "false":
            return False
    return None


def _compare(op: str, a: Value, b: Value) -> Value:
    if a is None or b is None:
        return None
    if isinstance(a, bool) or isinstance(b, bool):
        a, b = _to_bool(a), _to_bool(b)
        if a is None or b is None or op not in ("=", "<>"):
            return None
        return (a == b) if op == "=" else (a != b)
    if isinstance(a, str) and isinstance(b, str):
        if op == "=":
            return a == b
        if op == "<>":
            return a != b
        na, nb = _to_number(a), _to_number(b)
        if na is None or nb is None:
            return None
        a, b = na, nb
    else:
        a, b = _to_number(a), _to_number(b)
        if a is None or b is None:
            return None
    if op == "=":
        return a == b
    if op == "<>":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _like_regex(pattern: str, esc: str | None) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if esc is not None and c == esc and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _SelectorParser:
    def __init__(self, text: str) -> None:
        self.toks = _sel_tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, value: Any = None) -> bool:
        k, v = self.toks[self.i]
        if k == kind and (value is None or v == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None) -> Any:
        k, v = self.take()
        if k != kind or (value is not None and v != value):
            raise SelectorError(f"expected {value or kind}, found {v!r}")
        return v

    def parse(self) -> Evaluator:
        ev = self.or_()
        if self.peek()[0] != "end":
            raise SelectorError(f"unexpected {self.peek()[1]!r}")
        return ev

    def or_(self) -> Evaluator:
        left = self.and_()
        while self.accept("kw", "OR"):
            right = self.and_()
            left = _combine(_or, left, right)
        return left

    def and_(self) -> Evaluator:
        left = self.not_()
        while self.accept("kw", "AND"):
            right = self.not_()
            left = _combine(_and, left, right)
        return left

    def not_(self) -> Evaluator:
        if self.accept("kw", "NOT"):
            inner = self.not_()
            return lambda h: _not(inner(h))
        return self.cmp()

    def cmp(self) -> Evaluator:
        left = self.sum_()
        k, v = self.peek()
        if k == "op" and v in ("=", "<>", "<", "<=", ">", ">="):
            self.take()
            right = self.sum_()
            return lambda h: _compare(v, left(h), right(h))
        negate = False
        if k == "kw" and v == "NOT":
            self.take()
            negate = True
            k, v = self.peek()
        if k == "kw" and v == "BETWEEN":
            self.take()
            lo = self.sum_()
            self.expect("kw", "AND")
            hi = self.sum_()

            def between(h: dict[str, str]) -> Value:
                x = left(h)
                return _and(_compare(">=", x, lo(h)), _compare("<=", x, hi(h)))

            return (lambda h: _not(between(h))) if negate else between
        if k == "kw" and v == "IN":
            self.take()
            self.expect("op", "(")
            items = [self.expect("lit")]
            while self.accept("op", ","):
                items.append(self.expect("lit"))
            self.expect("op", ")")
            strs = frozenset(str(x) for x in items)

            def in_(h: dict[str, str]) -> Value:
                x = left(h)
                if x is None:
                    return None
                return str(x) in strs

            return (lambda h: _not(in_(h))) if negate else in_
        if k == "kw" and v == "LIKE":
            self.take()
            pattern = self.expect("lit")
            esc = None
            if self.accept("kw", "ESCAPE"):
                esc = self.expect("lit")
                if not isinstance(esc, str) or len(esc) != 1:
                    raise SelectorError("ESCAPE takes one character")
            if not isinstance(pattern, str):
                raise SelectorError("LIKE takes a string pattern")
            rx = _like_regex(pattern, esc)

            def like(h: dict[str, str]) -> Value:
                x = left(h)
                if not isinstance(x, str):
                    return None
                return rx.fullmatch(x) is not None

            return (lambda h: _not(like(h))) if negate else like
        if negate:
            raise SelectorError("NOT must be followed by BETWEEN, IN or LIKE here")
        if k == "kw" and v == "IS":
            self.take()
            is_not = self.accept("kw", "NOT")
            self.expect("null")
            if is_not:
                return lambda h: left(h) is not None
            return lambda h: left(h) is None
        return left

    def sum_(self) -> Evaluator:
        left = self.prod()
        while True:
            k, v = self.peek()
            if k == "op" and v in ("+", "-"):
                self.take()
                right = self.prod()
                left = _arith_node(v, left, right)
            else:
                return left

    def prod(self) -> Evaluator:
        left = self.unary()
        while True:
            k, v = self.peek()
            if k == "op" and v in ("*", "/"):
                self.take()
                right = self.unary()
                left = _arith_node(v, left, right)
            else:
                return left

    def unary(self) -> Evaluator:
        if self.accept("op", "-"):
            inner = self.unary()
            return lambda h: _arith("-", 0, inner(h))
        if self.accept("op", "+"):
            return self.unary()
        return self.primary()

    def primary(self) -> Evaluator:
        k, v = self.take()
        if k == "op" and v == "(":
            inner = self.or_()
            self.expect("op", ")")
            return inner
        if k == "lit":
            return lambda h: v
        if k == "null":
            return lambda h: None
        if k == "id":
            return lambda h: h.get(v)
        raise SelectorError(f"unexpected {v!r}" if k != "end" else "unexpected end of selector")


def _combine(fn: Callable[[Value, Value], Value], a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda h: fn(a(h), b(h))


def _arith_node(op: str, a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda h: _arith(op, a(h), b(h))


def _and(a: Value, b: Value) -> Value:
    a, b = _to_bool(a), _to_bool(b)
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _or(a: Value, b: Value) -> Value:
    a, b = _to_bool(a), _to_bool(b)
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


def _not(a: Value) -> Value:
    a = _to_bool(a)
    return None if a is None else not a


def _arith(op: str, a: Value, b: Value) -> Value:
    a, b = _to_number(a), _to_number(b)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    return a / b


def compile_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Compile a JMS-style selector into ``f(headers) -> bool`` (True: the message is selected)."""
    ev = _SelectorParser(text).parse()
    return lambda headers: _to_bool(ev(headers)) is True


# =========================================================================== wildcards

_WILD_ELEMENTS = frozenset({"*", ">"})


def _has_wildcard(name: str) -> bool:
    """Whether an element of ``name`` is ``*`` or ``>`` (two substring tests for a plain name)."""
    if "*" not in name and ">" not in name:
        return False
    return not _WILD_ELEMENTS.isdisjoint(name.split("."))


def _wildcard_pattern(name: str) -> tuple[str, ...] | None:
    """The elements of a wildcard topic name; None for a plain name.

    Raises ValueError when ``>`` is not the last element.
    """
    if not _has_wildcard(name):
        return None
    elements = tuple(name.split("."))
    if ">" in elements[:-1]:
        raise ValueError(
            "'>' stands for the remaining elements of a name: only the last may be '>'"
        )
    return elements


def _pattern_matches(pattern: tuple[str, ...], name: str) -> bool:
    """``pattern``: elements from :func:`_wildcard_pattern`; ``name``: a plain topic name."""
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
    elements = _wildcard_pattern(pattern)
    if elements is None:
        return pattern == name
    return _pattern_matches(elements, name)


# ======================================================================= messages and destinations


class Message:
    """One message as sent: the broker's id, the user headers, the body.

    ``topic``: the name it was sent to (wildcard subscriptions name that
    topic in their MESSAGE frames).
    """

    __slots__ = ("_enc", "avoid", "body", "headers", "id", "id_b", "redelivered", "size", "topic")

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
        conn.broker.messages_out[self.destination] += 1  # (stats hook: the subscribed name, pattern or not)
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
    """The subscriptions of one topic name: plain ones, and durable subscriptions (online or not)."""

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
    __slots__ = ("broker", "dispatching", "messages", "name", "rr", "selectors", "subs")
    kind = QUEUE

    def __init__(self, name: str, broker: Broker) -> None:
        self.name = name
        self.messages: deque[Message] = deque()
        self.subs: list[Subscription] = []
        self.rr = 0
        self.selectors = 0  # subscriptions with a selector
        self.broker = broker
        self.dispatching = False

    def dispatch(self) -> None:
        """Hand queued messages to subscriptions that can take them, round robin."""
        if self.dispatching or self.broker.stopping or not self.messages or not self.subs:
            return
        self.dispatching = True
        try:
            if self.selectors:
                self._dispatch_selective()
            else:
                self._dispatch_simple()
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
        kept.extend(messages)
        self.messages = kept


class Durable(Queue):
    """A durable topic subscription: a private queue that its topic (or pattern) feeds.

    It sits in its :class:`Topic`'s (or :class:`WildTopic`'s) subscriber list
    for its whole life, attached to a consumer (:class:`Subscription`) or
    not; every message it matches goes to its backlog (``messages``, bounded
    by the broker's ``durable_max_messages``/``durable_max_bytes``: past
    them the oldest are dropped), and from there to the consumer as a queue
    hands messages out. Messages are shared with the other subscribers of
    the topic, so they are never modified here: redeliveries are copies.
    """

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

    # -- as a subscriber of its topic

    def offer_topic(self, msg: Message) -> None:
        sub = self.consumer
        if sub is not None and not self.messages and not self.dispatching and sub.can_take():
            sub.deliver(msg)  # nothing waiting, room: straight through
            return
        self.messages.append(msg)
        self.nbytes += msg.size
        b = self.broker
        if self.nbytes > b.durable_max_bytes or len(self.messages) > b.durable_max_messages:
            self.trim()
        if self.consumer is not None:
            self.dispatch()

    # -- as a queue with (at most) one consumer

    def attach(self, sub: Subscription) -> None:
        self.consumer = sub
        sub.target = self
        self.dispatch()

    def dispatch(self) -> None:
        sub = self.consumer
        messages = self.messages
        if sub is None or not messages or self.dispatching or self.broker.stopping:
            return
        self.dispatching = True
        try:
            while messages and sub.can_take():
                msg = messages.popleft()
                self.nbytes -= msg.size
                sub.deliver(msg)
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
        """Drop the oldest messages while over a bound; count them and say so (once per burst)."""
        b = self.broker
        messages = self.messages
        max_messages, max_bytes = b.durable_max_messages, b.durable_max_bytes
        n = 0
        while messages and (len(messages) > max_messages or self.nbytes > max_bytes):
            self.nbytes -= messages.popleft().size
            n += 1
        if n:
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

    def close(self) -> None:
        """Removed (or the broker stops): report pending drops, let go of the backlog."""
        self.active = False
        if self._drop_timer is not None:
            self._drop_timer.cancel()
            self._drop_timer = None
        self.report_drops()
        self.messages.clear()
        self.nbytes = 0


def _durable_name(h: dict[str, str]) -> str | None:
    """The durable subscription name of a SUBSCRIBE/UNSUBSCRIBE (either spelling), or None."""
    for header in _DURABLE_NAME_HEADERS:
        name = h.get(header)
        if name is not None:
            if not name.strip():
                raise ProtocolError(
                    f"Invalid {header}: empty", "a durable subscription name cannot be empty"
                )
            return name
    return None


def _resolve(dest: str, dtype: str | None) -> tuple[str, str]:
    """(kind, name) of a destination header value."""
    if dest.startswith("/topic/"):
        kind, name = TOPIC, dest[7:]
    elif dest.startswith("/queue/"):
        kind, name = QUEUE, dest[7:]
    elif dest.startswith("/temp-topic/"):
        kind, name = TOPIC, dest
    elif dest.startswith("/temp-queue/"):
        kind, name = QUEUE, dest
    else:
        name = dest
        kind = TOPIC if dtype is not None and dtype.strip().upper() == "MULTICAST" else QUEUE
    if not name:
        raise ProtocolError("Invalid destination", f"destination {dest!r} names no topic or queue")
    return kind, name


# =========================================================================== connections


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.parser = FrameParser(broker.limits)
        self.version = "1.0"
        self.v12 = False
        self.connected = False
        self.closing = False
        self.session = ""
        self.client_id: str | None = None  # CONNECT's client-id (owns durable subscriptions)
        self.subs: dict[str, Subscription] = {}
        self.subs_by_serial: dict[str, Subscription] = {}
        self._serial = 0
        self.transactions: dict[str, list[tuple[Any, ...]]] = {}
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.flush_pending = False
        self.paused = False
        self.reading_paused = False
        self.read_blockers: set[Connection] = set()  # consumers this producer waits for
        self.throttled: set[Connection] = set()  # producers waiting for this consumer
        self._slow_timer: asyncio.TimerHandle | None = None
        self.blocked = False
        self.pending_bytes = 0
        self.wrote = False
        self.last_read = 0.0
        self.hb_send_ms = 0
        self.hb_recv_ms = 0
        self._connect_timer: asyncio.TimerHandle | None = None
        self._hb_send_timer: asyncio.TimerHandle | None = None
        self._hb_recv_timer: asyncio.TimerHandle | None = None
        self._abort_handle: asyncio.TimerHandle | None = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        b = self.broker
        transport.set_write_buffer_limits(high=b.write_buffer_high, low=b.write_buffer_low)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        b.conns.add(self)
        b.conn_serial += 1
        self.session = f"{b.token}-{b.conn_serial}"
        self.last_read = self.loop.time()
        if b.connect_timeout:
            self._connect_timer = self.loop.call_later(b.connect_timeout, self._connect_timeout)
        log.debug("connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_read = self.loop.time()
        parser = self.parser
        parser.feed(data)
        frame: Frame | None = None
        broker = self.broker
        broker.current = self
        try:
            while not self.closing:
                frame = parser.next_frame()
                if frame is None:
                    break
                self.handle(frame)
        except FrameError as e:
            self.fail(e.message, e.detail)
        except ProtocolError as e:
            receipt = frame.headers.get("receipt") if frame is not None else None
            self.fail(e.message, e.detail, receipt, e.headers)
        except Exception:  # a bug: keep the broker alive, drop this connection
            log.exception("internal error handling a frame from %s", self.peer)
            self.fail("Internal error", "the broker failed to process this frame; see its log")
        finally:
            broker.current = None

    def eof_received(self) -> bool | None:
        if not self.closing and self.parser.in_frame:
            self.fail("Incomplete frame", "the connection ended in the middle of a frame")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown()
        self.closing = True
        self.broker.conns.discard(self)
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        self.out.clear()
        log.debug("connection from %s closed%s", self.peer, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.closing or self.transport is None:
            return
        if self.throttled:
            self.release()
        if self.blocked:
            self.blocked = False
            self._redispatch()

    # -- output

    def write_parts(self, parts: list[bytes], nbytes: int) -> None:
        self.out.extend(parts)
        self.out_bytes += nbytes
        if not self.flush_pending:
            self.flush_pending = True
            self.broker.schedule_flush(self)

    def write(self, data: bytes) -> None:
        self.write_parts([data], len(data))

    def flush(self) -> None:
        self.flush_pending = False
        if not self.out:
            return
        data = b"".join(self.out)
        self.out.clear()
        self.out_bytes = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.wrote = True
            if self.closing:
                return
            if transport.get_write_buffer_size() > self.broker.max_pending_bytes:
                self.check_slow()
                return
        if self.closing:
            return
        if self.throttled and not self.paused:
            self.release()
        if self.blocked and not self.paused:
            self.blocked = False
            self._redispatch()

    def _redispatch(self) -> None:
        for sub in tuple(self.subs.values()):
            target = sub.target
            if sub.active and isinstance(target, Queue):
                target.dispatch()

    # -- slow consumers: producer flow control, a timeout, and a hard cap

    def throttle(self) -> None:
        """Backed up by topic traffic: make the producer of the current frame wait."""
        b = self.broker
        producer = b.current
        if (
            producer is not None
            and producer is not self
            and not producer.closing
            and not self.closing
        ):
            if producer not in self.throttled:
                self.throttled.add(producer)
                producer.block_reading(self)
            if self._slow_timer is None and b.slow_consumer_timeout:
                self._slow_timer = self.loop.call_later(b.slow_consumer_timeout, self._slow_timeout)
        self.check_slow()

    def release(self) -> None:
        """Caught up: let the producers that waited for this consumer go on."""
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if self.throttled:
            producers = list(self.throttled)
            self.throttled.clear()
            for producer in producers:
                producer.unblock_reading(self)

    def block_reading(self, consumer: Connection) -> None:
        self.read_blockers.add(consumer)
        if not self.reading_paused and not self.closing and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def unblock_reading(self, consumer: Connection) -> None:
        self.read_blockers.discard(consumer)
        if not self.read_blockers and self.reading_paused:
            self.reading_paused = False
            if not self.closing and self.transport is not None:
                self.last_read = self.loop.time()
                self.transport.resume_reading()

    def _slow_timeout(self) -> None:
        self._slow_timer = None
        if self.throttled and not self.closing:
            self.fail(
                "slow consumer",
                f"producers have waited {self.broker.slow_consumer_timeout:g} s for this "
                "connection to read its topic messages",
            )

    def check_slow(self) -> None:
        """The hard cap: what waits for this connection may not exceed ``max_pending_bytes``."""
        if self.closing or self.transport is None:
            return
        backlog = self.transport.get_write_buffer_size() + self.out_bytes + self.pending_bytes
        if backlog > self.broker.max_pending_bytes:
            self.fail(
                "slow consumer",
                f"this connection has {backlog} bytes waiting to be sent "
                f"(limit {self.broker.max_pending_bytes}); it does not read fast enough",
            )

    def send_receipt(self, receipt: str) -> None:
        self.write(b"RECEIPT\nreceipt-id:" + escape(receipt, self.version).encode() + b"\n\n\x00")

    def fail(
        self,
        message: str,
        detail: str = "",
        receipt: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Send ERROR, then close this connection."""
        if self.closing:
            return
        message = " ".join(message.split())
        log.info("closing connection from %s: %s", self.peer, message)
        headers = {"message": message, "content-type": "text/plain"}
        if extra:
            headers.update(extra)
        if receipt is not None:
            headers["receipt-id"] = receipt
        frame = encode_frame("ERROR", headers, (detail or message).encode() + b"\n", self.version)
        self._teardown()
        self.out.append(frame)
        self.out_bytes += len(frame)
        self._close()

    def _close(self) -> None:
        """Flush what is pending and close; abort if the peer does not take it in time."""
        self.closing = True
        self.flush()
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if self._abort_handle is None and transport.get_write_buffer_size():
            self._abort_handle = self.loop.call_later(self.broker.close_grace, transport.abort)

    def _teardown(self) -> None:
        """Drop transactions and subscriptions (unacked queue messages go back to their queue)."""
        self.closing = True
        self._cancel_timers()
        self.release()
        self.read_blockers.clear()
        self.transactions.clear()
        if self.subs:
            subs = list(self.subs.values())
            self.subs.clear()
            self.subs_by_serial.clear()
            for sub in subs:
                self.broker.detach(sub)
        self.pending_bytes = 0
        cid = self.client_id
        if cid is not None and self.broker.clients.get(cid) is self:
            del self.broker.clients[cid]

    # -- timers

    def _cancel_timers(self) -> None:
        for name in ("_connect_timer", "_hb_send_timer", "_hb_recv_timer"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def _connect_timeout(self) -> None:
        if not self.connected and not self.closing:
            self.fail(
                "Connect timeout", f"no CONNECT frame within {self.broker.connect_timeout:g} s"
            )

    def _hb_send_tick(self) -> None:
        if self.closing:
            return
        if not self.wrote and not self.out:
            self.write(b"\n")
        self.wrote = False
        self._hb_send_timer = self.loop.call_later(self.hb_send_ms / 2000, self._hb_send_tick)

    def _hb_recv_tick(self) -> None:
        if self.closing:
            return
        now = self.loop.time()
        if self.reading_paused:  # we are not reading it (flow control): no fault of the client
            self.last_read = now
        elif now - self.last_read > 2 * self.hb_recv_ms / 1000:
            self.fail(
                "heart-beat timeout",
                f"nothing received for {now - self.last_read:.1f} s "
                f"(negotiated client heart-beat {self.hb_recv_ms} ms)",
            )
            return
        self._hb_recv_timer = self.loop.call_later(self.hb_recv_ms / 2000, self._hb_recv_tick)

    # -- frames

    def handle(self, frame: Frame) -> None:
        command = frame.command
        if not self.connected:
            if command == "CONNECT" or command == "STOMP":
                self.on_connect(frame)
                return
            if command == "DISCONNECT":
                self._teardown()
                self._close()
                return
            raise ProtocolError("Not connected.", f"{command} received before CONNECT")
        handler = _HANDLERS[command]
        if not handler(self, frame):
            receipt = frame.headers.get("receipt")
            if receipt is not None:
                self.send_receipt(receipt)

    def on_connect(self, frame: Frame) -> bool:
        if self.connected:
            raise ProtocolError("Already connected.", "a second CONNECT on this connection")
        h = frame.headers
        accept = h.get("accept-version")
        if accept is None:
            version = "1.0"
        else:
            offered = {v.strip() for v in accept.split(",")}
            for version in ("1.2", "1.1", "1.0"):
                if version in offered:
                    break
            else:
                raise ProtocolError(
                    "Supported protocol versions are 1.0,1.1,1.2",
                    f"none of the versions offered ({accept}) is supported; "
                    "this broker speaks 1.0, 1.1 and 1.2",
                    {"version": "1.0,1.1,1.2"},
                )
        b = self.broker
        if b.login is not None or b.passcode is not None:
            login = h.get("login", "")
            passcode = h.get("passcode", "")
            ok_login = hmac.compare_digest(login.encode(), (b.login or "").encode())
            ok_pass = hmac.compare_digest(passcode.encode(), (b.passcode or "").encode())
            if not (ok_login and ok_pass):
                raise ProtocolError(
                    f"User name [{login}] or password is invalid.",
                    "authentication failed: wrong login or passcode",
                )
        cid = h.get("client-id") or None
        if cid is not None:
            other = b.clients.get(cid)
            if other is not None and other is not self:
                raise ProtocolError(
                    f"Broker: {BROKER_NAME} - Client: {cid} already connected from tcp://{other.peer}",
                    f"client-id {cid!r} is in use by another connection; one connection per client-id",
                )
        cx = cy = 0
        if version != "1.0":
            raw = h.get("heart-beat")
            if raw is not None:
                parts = raw.replace(" ", "").split(",")
                if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
                    raise ProtocolError(
                        f"Invalid heart-beat header: {raw}",
                        "heart-beat must be two non-negative integers: cx,cy",
                    )
                cx, cy = int(parts[0]), int(parts[1])
        # What we offer: to send at the rate the client wants to receive (cy),
        # to receive at the rate it offers to send (cx), ActiveMQ style.
        sx = max(cy, MIN_HEARTBEAT_MS) if cy else 0
        sy = max(cx, MIN_HEARTBEAT_MS) if cx else 0
        self.version = version
        self.parser.version = version
        self.v12 = version == "1.2"
        self.connected = True
        if cid is not None:
            self.client_id = cid
            b.clients[cid] = self
        self._cancel_timers()
        headers = {
            "version": version,
            "server": SERVER_NAME,
            "session": self.session,
            "heart-beat": f"{sx},{sy}",
        }
        self.write(encode_frame("CONNECTED", headers, b"", version))
        self.hb_send_ms = sx
        self.hb_recv_ms = sy
        if sx:
            self._hb_send_timer = self.loop.call_later(sx / 2000, self._hb_send_tick)
        if sy:
            self.last_read = self.loop.time()
            self._hb_recv_timer = self.loop.call_later(sy / 2000, self._hb_recv_tick)
        log.debug(
            "%s connected: STOMP %s, session %s, heart-beat %s,%s",
            self.peer,
            version,
            self.session,
            sx,
            sy,
        )
        return True

    def on_send(self, frame: Frame) -> bool:
        h = frame.headers
        dest = h.get("destination")
        if not dest:
            raise ProtocolError(
                "SEND received without a Destination specified!",
                "a SEND frame needs a destination header",
            )
        kind, name = _resolve(dest, h.get("destination-type"))
        if ("*" in name or ">" in name) and _has_wildcard(name):
            raise ProtocolError(
                f"Cannot send to a wildcard destination: {dest}",
                "'*' and '>' elements are wildcards, for SUBSCRIBE only; send to a topic's own name",
            )
        headers = {k: v for k, v in h.items() if k not in _BROKER_HEADERS}
        b = self.broker
        b.msg_serial += 1
        # the id names the sending connection (its session), as ActiveMQ's do: the monitor records it
        msg = Message(f"{self.session}:{b.msg_serial}", headers, frame.body, name)
        tx = h.get("transaction")
        if tx is not None:
            actions = self.transactions.get(tx)
            if actions is None:
                raise ProtocolError(
                    f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun"
                )
            actions.append((_SEND, kind, name, msg))
        else:
            b.route(kind, name, msg)
        return False

    def on_subscribe(self, frame: Frame) -> bool:
        h = frame.headers
        dest = h.get("destination")
        if not dest:
            raise ProtocolError(
                "SUBSCRIBE received without a destination",
                "a SUBSCRIBE frame needs a destination header",
            )
        sid = h.get("id")
        if sid is None and self.version != "1.0":
            raise ProtocolError(
                "SUBSCRIBE received without a subscription id!",
                f"STOMP {self.version} requires an id header on SUBSCRIBE",
            )
        key = sid if sid is not None else "\x00" + dest
        if key in self.subs:
            raise ProtocolError(
                f"Duplicate subscription id: {sid if sid is not None else dest}",
                "this connection already has a subscription with that id",
            )
        ack_name = h.get("ack", "auto")
        ack = _ACK_MODES.get(ack_name)
        if ack is None:
            raise ProtocolError(
                f"Invalid ack mode: {ack_name}", "ack must be auto, client or client-individual"
            )
        kind, name = _resolve(dest, h.get("subscription-type"))
        try:
            pattern = _wildcard_pattern(name)
        except ValueError as e:
            raise ProtocolError(f"Invalid wildcard destination: {dest}", str(e)) from None
        if pattern is not None and kind == QUEUE:
            raise ProtocolError(
                f"Wildcard queue subscriptions are not supported: {dest}",
                "this broker supports '*' and '>' wildcards on topics only",
            )
        durable_name = _durable_name(h) if kind == TOPIC else None  # ignored on queues (ActiveMQ)
        if durable_name is not None and self.client_id is None:
            raise ProtocolError(
                "You cannot create a durable subscriber without specifying a unique clientID "
                "on a Connection",
                "a durable subscription belongs to a client: CONNECT with a client-id header",
            )
        b = self.broker
        raw = h.get("activemq.prefetchSize")
        if raw is None:
            if kind == QUEUE:
                prefetch = b.queue_prefetch
            else:
                prefetch = b.topic_prefetch if durable_name is None else b.durable_prefetch
        else:
            try:
                prefetch = int(raw)
            except ValueError:
                prefetch = -1
            if prefetch < 0:
                raise ProtocolError(
                    f"Invalid activemq.prefetchSize: {raw}",
                    "activemq.prefetchSize must be a non-negative integer",
                )
            prefetch = max(prefetch, 1)
        selector = None
        text = h.get("selector")
        if text is not None and text.strip():
            try:
                selector = b.selector(text)
            except SelectorError as e:
                raise ProtocolError(
                    f"Invalid selector: {e}", f"cannot parse selector {text!r}: {e}"
                ) from None
        durable = None
        if durable_name is not None:
            assert self.client_id is not None
            durable = b.durable_for(
                self.client_id, durable_name, name, pattern, text if selector else None, selector
            )
            selector = None  # the durable subscription applies it, before its backlog
        self._serial += 1
        serial = str(self._serial)
        sub = Subscription(self, sid, key, serial, dest, kind, ack, prefetch, selector)
        if pattern is not None:
            sub.set_wildcard(name)
        self.subs[key] = sub
        self.subs_by_serial[serial] = sub
        receipt = h.get("receipt")
        if receipt is not None:  # before any message is dispatched, as ActiveMQ does
            self.send_receipt(receipt)
        if durable is not None:
            durable.attach(sub)
        else:
            b.attach(sub, kind, name, pattern)
        return True

    def on_unsubscribe(self, frame: Frame) -> bool:
        h = frame.headers
        sid = h.get("id")
        sub = None
        if sid is None and self.version != "1.0":
            raise ProtocolError(
                "UNSUBSCRIBE received without a subscription id!",
                f"STOMP {self.version} requires an id header on UNSUBSCRIBE",
            )
        durable_name = _durable_name(h)
        if durable_name is not None:  # remove a durable subscription (ActiveMQ: the id is not used)
            self._remove_durable(durable_name)
            return False
        if sid is not None:
            sub = self.subs.get(sid)
        else:
            dest = h.get("destination")
            if dest is None:
                raise ProtocolError(
                    "Must specify the subscriptionId or the destination you are unsubscribing from",
                    "UNSUBSCRIBE needs an id or a destination header",
                )
            sub = self.subs.get("\x00" + dest)
            if sub is None:
                sub = next((s for s in self.subs.values() if s.destination == dest), None)
        if sub is None:
            raise ProtocolError(
                "No subscription matched.", f"no subscription with id {sid!r} on this connection"
            )
        del self.subs[sub.key]
        self.subs_by_serial.pop(sub.serial, None)
        self.broker.detach(sub)
        return False

    def _remove_durable(self, name: str) -> None:
        b = self.broker
        cid = self.client_id
        durable = b.durables.get((cid, name)) if cid is not None else None
        if durable is None:
            raise ProtocolError(
                f"No durable subscription exists for clientID: {cid or self.session} "
                f"and subscriptionName: {name}",
                "there is no durable subscription of that name for this connection's client-id",
            )
        if durable.consumer is not None:
            raise ProtocolError(
                "Durable consumer is in use",
                "the durable subscription is attached: UNSUBSCRIBE its id first (that only "
                "detaches it), then UNSUBSCRIBE with its name to remove it",
            )
        b.remove_durable(durable)

    def _find_outstanding(self, h: dict[str, str], verb: str) -> tuple[Subscription, str]:
        mid = h.get("message-id")
        if self.v12:
            ack_id = h.get("id")
            if ack_id is not None:
                m, sep, serial = ack_id.rpartition("/")
                if sep:
                    sub = self.subs_by_serial.get(serial)
                    if sub is not None and m in sub.unacked:
                        return sub, m
                mid = ack_id  # acknowledged by message-id
        if mid is None:
            raise ProtocolError(
                f"{verb} received without a message-id to acknowledge!",
                f"{verb} needs {'an id' if self.v12 else 'a message-id'} header",
            )
        sid = h.get("subscription")
        if sid is not None:
            sub = self.subs.get(sid)
            if sub is not None and mid in sub.unacked:
                return sub, mid
        for sub in self.subs.values():
            if mid in sub.unacked:
                return sub, mid
        raise ProtocolError(
            f"Unexpected {verb} received for message-id [{mid}]",
            f"message {mid!r} is not awaiting acknowledgement on this connection",
        )

    def _tx_actions(self, h: dict[str, str]) -> list[tuple[Any, ...]] | None:
        tx = h.get("transaction")
        if tx is None:
            return None
        actions = self.transactions.get(tx)
        if actions is None:
            raise ProtocolError(
                f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun"
            )
        return actions

    def on_ack(self, frame: Frame) -> bool:
        sub, mid = self._find_outstanding(frame.headers, "ACK")
        actions = self._tx_actions(frame.headers)
        if actions is not None:
            actions.append((_ACK, sub, mid))
        else:
            self.broker.ack(sub, mid)
        return False

    def on_nack(self, frame: Frame) -> bool:
        if self.version == "1.0":
            raise ProtocolError(
                "NACK received but connection is in v1.0 mode.", "NACK exists from STOMP 1.1 on"
            )
        sub, mid = self._find_outstanding(frame.headers, "NACK")
        actions = self._tx_actions(frame.headers)
        if actions is not None:
            actions.append((_NACK, sub, mid))
        else:
            self.broker.nack(sub, mid)
        return False

    def _tx_name(self, h: dict[str, str], what: str) -> str:
        tx = h.get("transaction")
        if tx is None:
            raise ProtocolError(
                f"Must specify the transaction you are {what}",
                "BEGIN, COMMIT and ABORT need a transaction header",
            )
        return tx

    def on_begin(self, frame: Frame) -> bool:
        tx = self._tx_name(frame.headers, "beginning")
        if tx in self.transactions:
            raise ProtocolError(
                f"The transaction was already started: {tx}", "BEGIN of an active transaction"
            )
        self.transactions[tx] = []
        return False

    def on_commit(self, frame: Frame) -> bool:
        tx = self._tx_name(frame.headers, "committing")
        actions = self.transactions.pop(tx, None)
        if actions is None:
            raise ProtocolError(
                f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun"
            )
        b = self.broker
        for action in actions:
            if action[0] == _SEND:
                b.route(action[1], action[2], action[3])
            elif action[0] == _ACK:
                b.ack(action[1], action[2])
            else:
                b.nack(action[1], action[2])
        return False

    def on_abort(self, frame: Frame) -> bool:
        tx = self._tx_name(frame.headers, "aborting")
        if self.transactions.pop(tx, None) is None:
            raise ProtocolError(
                f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun"
            )
        return False

    def on_disconnect(self, frame: Frame) -> bool:
        receipt = frame.headers.get("receipt")
        self._teardown()
        if receipt is not None:
            self.send_receipt(receipt)
        self._close()
        return True

    def on_connect_again(self, frame: Frame) -> bool:
        raise ProtocolError("Already connected.", "a second CONNECT on this connection")

    def shutdown(self) -> None:
        """Broker stopping: close without ceremony."""
        if self.closing:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            return
        self._teardown()
        self._close()


_HANDLERS: dict[str, Callable[[Connection, Frame], bool]] = {
    "SEND": Connection.on_send,
    "SUBSCRIBE": Connection.on_subscribe,
    "UNSUBSCRIBE": Connection.on_unsubscribe,
    "ACK": Connection.on_ack,
    "NACK": Connection.on_nack,
    "BEGIN": Connection.on_begin,
    "COMMIT": Connection.on_commit,
    "ABORT": Connection.on_abort,
    "DISCONNECT": Connection.on_disconnect,
    "CONNECT": Connection.on_connect_again,
    "STOMP": Connection.on_connect_again,
}


# =========================================================================== the broker


class Broker:
    """The STOMP broker. ``await start()``, then ``await stop()``.

    ``port=0`` binds a free port; :attr:`port` tells which. ``limits`` bounds
    frames (:class:`Limits`); the keyword options tune flow control:

    * ``max_pending_bytes``: most bytes that may wait for one connection
      before it is closed as a slow consumer;
    * ``slow_consumer_timeout``: seconds producers wait for a backed-up topic
      subscriber before it is closed as a slow consumer (0: wait forever, as
      ActiveMQ does);
    * ``write_buffer_high`` / ``write_buffer_low``: per-connection write
      buffer marks (flow control starts above high, stops below low);
    * ``queue_prefetch`` / ``topic_prefetch`` / ``durable_prefetch``: default
      ``activemq.prefetchSize`` (queues, topics, durable topic subscriptions);
    * ``durable_max_messages`` / ``durable_max_bytes``: bound of the backlog
      of each durable subscription (past it the oldest messages are dropped);
    * ``connect_timeout``: seconds to wait for CONNECT (0: forever);
    * ``close_grace``: seconds a closing connection gets to take its last
      frames before it is aborted.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 61613,
        login: str | None = None,
        passcode: str | None = None,
        limits: Limits | None = None,
        *,
        max_pending_bytes: int = 64 * 1024 * 1024,
        slow_consumer_timeout: float = 10.0,
        write_buffer_high: int = 1024 * 1024,
        write_buffer_low: int = 256 * 1024,
        queue_prefetch: int = 1000,
        topic_prefetch: int = 32766,
        durable_prefetch: int = 100,
        durable_max_messages: int = 1_000_000,
        durable_max_bytes: int = 512 * 1024 * 1024,
        connect_timeout: float = 30.0,
        close_grace: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.ssl_context = ssl_context
        self._requested_port = port
        self.login = login
        self.passcode = passcode
        self.limits = limits or Limits()
        self.max_pending_bytes = max_pending_bytes
        self.slow_consumer_timeout = slow_consumer_timeout
        self.current: Connection | None = None  # whose frame is being handled (for flow control)
        self.write_buffer_high = write_buffer_high
        self.write_buffer_low = write_buffer_low
        self.queue_prefetch = queue_prefetch
        self.topic_prefetch = topic_prefetch
        self.durable_prefetch = durable_prefetch
        self.durable_max_messages = durable_max_messages
        self.durable_max_bytes = durable_max_bytes
        self.connect_timeout = connect_timeout
        self.close_grace = close_grace
        self.token = "ID-swf-" + secrets.token_hex(4)
        self.conn_serial = 0
        self.msg_serial = 0
        # stats hook (metrics): messages routed to / delivered from each destination, redeliveries
        self.messages_in: Counter[tuple[str, str]] = Counter()  # (kind, name)
        self.messages_out: Counter[str] = Counter()
        self.redeliveries = 0
        self.topics: dict[str, Topic] = {}
        self.queues: dict[str, Queue] = {}
        # Wildcard subscriptions: one WildTopic per pattern, and for each topic name
        # the patterns it matches (computed on the name's first message; cleared when
        # a pattern comes or goes -- subscribers of an existing pattern need no change).
        self.wild: dict[str, WildTopic] = {}
        self._wild_cache: dict[str, tuple[WildTopic, ...]] = {}
        self.durables: dict[tuple[str, str], Durable] = {}  # (client-id, name)
        self.clients: dict[str, Connection] = {}  # client-id -> its connection
        self.conns: set[Connection] = set()
        self.stopping = False
        self._server: asyncio.base_events.Server | None = None
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self._selectors: dict[str, Callable[[dict[str, str]], bool]] = {}
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]

    @property
    def port(self) -> int:
        """The port actually bound (after :meth:`start`), else the one asked for."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._requested_port

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        self._server = await self.loop.create_server(
            lambda: Connection(self),
            self.host,
            self._requested_port,
            reuse_address=True,
            backlog=1024,
            ssl=self.ssl_context,
        )

    async def stop(self) -> None:
        """Stop accepting, close every connection, wait (briefly) for them to go."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.shutdown()
        deadline = self.loop.time() + self.close_grace
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        for durable in self.durables.values():
            durable.close()
        self.durables.clear()
        self.topics.clear()
        self.queues.clear()
        self.wild.clear()
        self._wild_cache.clear()
        self.clients.clear()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # -- output batching: what is written while handling one batch of events goes out in one write

    def schedule_flush(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()

    # -- routing

    def selector(self, text: str) -> Callable[[dict[str, str]], bool]:
        fn = self._selectors.get(text)
        if fn is None:
            fn = compile_selector(text)
            if len(self._selectors) > 10000:
                self._selectors.clear()
            self._selectors[text] = fn
        return fn

    def route(self, kind: str, name: str, msg: Message) -> None:
        self.messages_in[kind, name] += 1  # stats hook
        if kind == TOPIC:
            topic = self.topics.get(name)
            if topic is not None:
                topic.publish(msg)
            if self.wild:
                matching = self._wild_cache.get(name)
                if matching is None:
                    matching = self._match_wild(name)
                for wild in matching:
                    wild.publish(msg)
        else:
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = Queue(name, self)
            queue.messages.append(msg)
            if queue.subs:
                queue.dispatch()

    def _match_wild(self, name: str) -> tuple[WildTopic, ...]:
        matching = tuple(w for w in self.wild.values() if w.matches(name))
        cache = self._wild_cache
        if len(cache) >= 10000:
            cache.clear()
        cache[name] = matching
        return matching

    def _topic(self, name: str, pattern: tuple[str, ...] | None) -> Topic:
        """The Topic of ``name`` (the WildTopic of a pattern), made when missing."""
        if pattern is None:
            topic = self.topics.get(name)
            if topic is None:
                topic = self.topics[name] = Topic(name)
            return topic
        wild = self.wild.get(name)
        if wild is None:
            wild = self.wild[name] = WildTopic(name, pattern)
            self._wild_cache.clear()
        return wild

    def _topic_unused(self, topic: Topic) -> None:
        """``topic`` has no subscriber left: forget it."""
        if isinstance(topic, WildTopic):
            if self.wild.get(topic.name) is topic:
                del self.wild[topic.name]
                self._wild_cache.clear()
        elif self.topics.get(topic.name) is topic:
            del self.topics[topic.name]

    def attach(
        self, sub: Subscription, kind: str, name: str, pattern: tuple[str, ...] | None = None
    ) -> None:
        if kind == TOPIC:
            topic = self._topic(name, pattern)
            topic.subs.append(sub)
            sub.target = topic
        else:
            queue = self.queues.get(name)
            if queue is None:
                queue = self.queues[name] = Queue(name, self)
            queue.subs.append(sub)
            if sub.selector is not None:
                queue.selectors += 1
            sub.target = queue
            queue.dispatch()

    def detach(self, sub: Subscription) -> None:
        """Remove a subscription; its unacknowledged queue messages go back to the queue head."""
        if not sub.active:
            return
        sub.active = False
        target = sub.target
        if isinstance(target, Topic):
            try:
                target.subs.remove(sub)
            except ValueError:
                pass
            if sub.pending:
                sub.conn.pending_bytes -= sum(m.size for m in sub.pending)
                sub.pending.clear()
            sub.unacked.clear()
            if not target.subs:
                self._topic_unused(target)
        elif isinstance(target, Durable):
            target.consumer_gone(sub)
        elif isinstance(target, Queue):
            try:
                target.subs.remove(sub)
            except ValueError:
                pass
            if sub.selector is not None:
                target.selectors -= 1
            if sub.unacked:
                msgs = list(sub.unacked.values())
                sub.unacked.clear()
                for m in msgs:
                    m.redelivered = True
                    m.avoid = None
                target.messages.extendleft(reversed(msgs))
            target.dispatch()
            if not target.subs and not target.messages and self.queues.get(target.name) is target:
                del self.queues[target.name]

    def ack(self, sub: Subscription, mid: str) -> None:
        if not sub.active:
            return
        unacked = sub.unacked
        if mid not in unacked:
            return
        if sub.ack == CLIENT:
            popitem = unacked.popitem
            while unacked:
                if popitem(last=False)[0] == mid:
                    break
        else:
            del unacked[mid]
        target = sub.target
        if isinstance(target, Queue):
            target.dispatch()
        elif sub.pending:
            sub.drain_pending()

    def nack(self, sub: Subscription, mid: str) -> None:
        if not sub.active:
            return
        msg = sub.unacked.pop(mid, None)
        if msg is None:
            return
        target = sub.target
        if isinstance(target, Queue):
            target.put_back(msg, sub)
        else:
            sub.deliver(msg.redelivered_copy())
            if sub.pending:
                sub.drain_pending()

    # -- durable subscriptions

    def durable_for(
        self,
        client_id: str,
        name: str,
        topic_name: str,
        pattern: tuple[str, ...] | None,
        selector_text: str | None,
        selector: Callable[[dict[str, str]], bool] | None,
    ) -> Durable:
        """The durable subscription (client_id, name) for a SUBSCRIBE, found, replaced or made."""
        key = (client_id, name)
        durable = self.durables.get(key)
        if durable is not None:
            if durable.consumer is not None:
                raise ProtocolError(
                    f"Durable consumer is in use for client: {client_id} and subscriptionName: {name}",
                    "that durable subscription is already attached to a subscription",
                )
            if durable.topic_name == topic_name and durable.selector_text == selector_text:
                return durable
            log.info(
                "durable subscription %s: now %s%s instead of %s%s; replaced, %d waiting "
                "messages discarded",
                durable.label,
                topic_name,
                f" [{selector_text}]" if selector_text else "",
                durable.topic_name,
                f" [{durable.selector_text}]" if durable.selector_text else "",
                len(durable.messages),
            )
            self.remove_durable(durable)
        source = self._topic(topic_name, pattern)
        durable = Durable(self, client_id, name, source, selector_text, selector)
        source.subs.append(durable)
        self.durables[key] = durable
        return durable

    def remove_durable(self, durable: Durable) -> None:
        """Delete a detached durable subscription and its backlog."""
        key = (durable.client_id, durable.sub_name)
        if self.durables.get(key) is durable:
            del self.durables[key]
        source = durable.source
        try:
            source.subs.remove(durable)
        except ValueError:
            pass
        if not source.subs:
            self._topic_unused(source)
        durable.close()

    # -- introspection (tests, status)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": len(self.conns),
            "topics": {n: len(t.subs) for n, t in self.topics.items()},
            "queues": {
                n: {"messages": len(q.messages), "subscriptions": len(q.subs)}
                for n, q in self.queues.items()
            },
            "wildcard_topics": {n: len(t.subs) for n, t in self.wild.items()},
            "durable_subscriptions": {
                f"{d.client_id}:{d.sub_name}": {
                    "topic": d.topic_name,
                    "attached": d.consumer is not None,
                    "messages": len(d.messages),
                    "bytes": d.nbytes,
                    "dropped": d.dropped,
                }
                for d in self.durables.values()
            },
            "messages_routed": self.msg_serial,
            "messages_in": {f"/{kind}/{name}": n for (kind, name), n in self.messages_in.items()},
            "messages_out": dict(self.messages_out),
            "redeliveries": self.redeliveries,
            "held_bytes": sum(m.size for q in self.queues.values() for m in q.messages)
            + sum(d.nbytes for d in self.durables.values()) + sum(c.pending_bytes for c in self.conns),
        }


# =========================================================================== running it


def _configure_logging(level: int | str = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log.level == logging.NOTSET and root.level > logging.INFO:
        log.setLevel(logging.INFO)


async def _serve(broker: Broker, metrics: tuple[str, int] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    await broker.start()
    log.info("swf-testbed broker listening on %s:%d", broker.host, broker.port)
    if metrics is not None:  # stats hook: Prometheus figures of broker.stats() on their own port
        from swf_testbed.broker.metrics import serve_metrics

        port = serve_metrics(broker, *metrics)
        log.info("broker metrics on http://%s:%d/metrics", metrics[0], port)
    try:
        await stop.wait()
    finally:
        log.info("swf-testbed broker stopping")
        await broker.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass


def server_tls_context(
    cert_file: str, key_file: str, client_ca_file: str | None = None
) -> ssl.SSLContext:
    """TLS for the broker: its certificate and key; with a CA, client certificates are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def run(
    host: str = "127.0.0.1",
    port: int = 61613,
    login: str | None = None,
    passcode: str | None = None,
    *,
    limits: Limits | None = None,
    metrics: tuple[str, int] | None = None,
    **options: Any,
) -> None:
    """Run the broker until SIGTERM or SIGINT, then close every connection and return.

    Logs ``swf-testbed broker listening on HOST:PORT`` once it accepts
    connections. Extra keyword options go to :class:`Broker`.
    """
    _configure_logging()
    broker = Broker(host, port, login, passcode, limits, **options)
    asyncio.run(_serve(broker, metrics))

"""Wildcard and durable topic subscriptions of the embedded broker, on the wire.

What the monitor's ingest relies on: one durable subscription to ``swf.>``
that gets every namespace's topics, with their real names, and keeps what
is sent while the ingest is down. Raw sockets against the broker process;
as in ``test_robustness``, a receipt round trip (``Raw.sync``) shows what
the broker has sent so far, so ordering, not timing, decides the assertions.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.broker import Broker
from swf_testbed.broker.destinations import topic_matches
from swf_testbed.broker.frames import Frame
from tests.broker.conftest import (
    WAIT_S,
    BrokerProc,
    Raw,
    launch_broker_with_options,
)

pytestmark = pytest.mark.timeout(60)

RawFactory = Callable[..., Raw]
NAME = "activemq.subscriptionName"


def uid() -> str:
    return uuid.uuid4().hex[:12]


def durable(
    connect: RawFactory,
    client_id: str,
    destination: str,
    name: str,
    sid: str = "d",
    ack: str = "client-individual",
    **headers: str,
) -> Raw:
    """A connection with ``client_id`` and a durable subscription ``name`` to ``destination``."""
    c = connect(**{"client-id": client_id})
    c.subscribe(destination, sid, ack=ack, **{NAME: name, **headers})
    return c


def reconnect(connect: RawFactory, client_id: str) -> Raw:
    """Connect with ``client_id`` once the broker has noticed its previous connection drop."""
    deadline = time.monotonic() + WAIT_S
    while True:
        c = connect(connect=False)
        c.send("CONNECT", {"accept-version": "1.2", "host": "localhost", "client-id": client_id})
        frame = c.recv()
        if frame.command == "CONNECTED":
            c.version = c.parser.version = "1.2"
            return c
        assert "already connected" in frame.headers["message"], frame
        c.close()
        assert time.monotonic() < deadline, "the broker never noticed the dropped connection"
        time.sleep(0.02)


def send(producer: Raw, destination: str, body: bytes, **headers: str) -> None:
    producer.receipt("SEND", {"destination": destination, **headers}, body)


def ack_all(c: Raw, frames: list[Frame]) -> None:
    for f in frames:
        c.send("ACK", {"id": f.headers["ack"]})


def remove(c: Raw, sid: str, name: str) -> None:
    """Detach (UNSUBSCRIBE id), then remove for good (UNSUBSCRIBE with the name), as on ActiveMQ."""
    c.receipt("UNSUBSCRIBE", {"id": sid})
    c.receipt("UNSUBSCRIBE", {"id": sid, NAME: name})


# =========================================================================== wildcards


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("swf.a", "swf.a", True),
        ("swf.a", "swf.b", False),
        ("swf.a", "swf.a.b", False),
        ("swf.*", "swf.a", True),
        ("swf.*", "swf.a.b", False),
        ("swf.*", "swf", False),
        ("swf.*.data", "swf.ns0.data", True),
        ("swf.*.data", "swf.ns0.x.data", False),
        ("*.data", "ns0.data", True),
        ("*.*", "a.b", True),
        ("*.*", "a", False),
        ("swf.>", "swf.a", True),
        ("swf.>", "swf.a.b", True),
        ("swf.>", "swf", True),  # zero elements too: measured on ActiveMQ Classic 5.17
        ("swf.>", "swfx.a", False),
        ("swf.>", "other.swf.a", False),
        ("swf.*.>", "swf.ns0.data", True),
        ("swf.*.>", "swf", False),
        (">", "anything", True),
        (">", "a.b.c", True),
        (">", "/temp-topic/x", False),  # temporary topics: only with their prefix
        ("/temp-topic/x.>", "/temp-topic/x.y", True),
        ("a*", "a*", True),  # inside an element, * and > are literal characters
        ("a*", "ab", False),
    ],
)
def test_wildcard_matching_table(pattern: str, name: str, expected: bool) -> None:
    assert topic_matches(pattern, name) is expected


def test_wildcard_subscriptions_on_the_wire(raw: RawFactory) -> None:
    base = f"w{uid()}"
    patterns = {
        "exact": f"{base}.a",
        "star": f"{base}.*",
        "star-mid": f"{base}.*.c",
        "rest": f"{base}.>",
        "all": ">",
    }
    consumer = raw()
    for sid, pattern in patterns.items():
        consumer.subscribe(f"/topic/{pattern}", sid)
    topics = [base, f"{base}.a", f"{base}.b", f"{base}.b.c", f"{base}x.a", f"other.{base}"]
    producer = raw()
    for topic in topics:
        send(producer, f"/topic/{topic}", topic.encode())
    got: dict[str, list[str]] = {sid: [] for sid in patterns}
    for frame in consumer.sync():
        assert frame.command == "MESSAGE", frame
        assert frame.headers["destination"] == "/topic/" + frame.body.decode()  # the real topic
        if base in frame.body.decode():  # ">" also gets the traffic of other tests
            got[frame.headers["subscription"]].append(frame.body.decode())
    assert got["rest"] == [base, f"{base}.a", f"{base}.b", f"{base}.b.c"]
    assert got["star"] == [f"{base}.a", f"{base}.b"]
    assert got["star-mid"] == [f"{base}.b.c"]
    assert got["exact"] == [f"{base}.a"]
    assert got["all"] == topics
    for sid, pattern in patterns.items():
        assert got[sid] == [t for t in topics if topic_matches(pattern, t)], sid


def test_wildcard_destination_in_the_subscribers_spelling(raw: RawFactory) -> None:
    """``/topic/x.>`` names ``/topic/x.a``; ``x.>`` + MULTICAST (Artemis style) names ``x.a``."""
    base = f"w{uid()}"
    slash = raw()
    slash.subscribe(f"/topic/{base}.>", "slash", ack="client-individual")
    bare = raw()
    bare.subscribe(f"{base}.>", "bare", **{"subscription-type": "MULTICAST"})
    producer = raw()
    send(producer, f"/topic/{base}.a", b"one", **{"x-kept": "yes"})
    send(producer, f"{base}.b.c", b"two", **{"destination-type": "MULTICAST"})
    frames = slash.messages(2)
    assert [f.headers["destination"] for f in frames] == [f"/topic/{base}.a", f"/topic/{base}.b.c"]
    assert [f.body for f in frames] == [b"one", b"two"]
    assert frames[0].headers["x-kept"] == "yes"
    ack_all(slash, frames)
    assert slash.sync() == []
    assert [f.headers["destination"] for f in bare.messages(2)] == [f"{base}.a", f"{base}.b.c"]


@pytest.mark.parametrize(
    ("command", "headers", "message"),
    [
        ("SEND", {"destination": "/topic/swf.*.data"}, "wildcard destination"),
        ("SEND", {"destination": "/topic/swf.>"}, "wildcard destination"),
        ("SEND", {"destination": "/queue/jobs.*"}, "wildcard destination"),
        ("SUBSCRIBE", {"destination": "/queue/jobs.>", "id": "1"}, "Wildcard queue"),
        ("SUBSCRIBE", {"destination": "/topic/swf.>.data", "id": "1"}, "Invalid wildcard"),
    ],
)
def test_wildcard_errors(
    raw: RawFactory, command: str, headers: dict[str, str], message: str
) -> None:
    c = raw()
    c.send(command, headers)
    error = c.expect_error_and_close()
    assert message in error.headers["message"], error


def test_patterns_that_come_and_go_are_followed(raw: RawFactory) -> None:
    """A topic name's matching patterns are cached: a new or removed pattern must show at once."""
    base = f"w{uid()}"
    producer = raw()
    first = raw()
    first.subscribe(f"/topic/{base}.>", "rest")
    send(producer, f"/topic/{base}.a", b"1")  # "base.a" -> (base.>) is now cached
    second = raw()
    second.subscribe(f"/topic/{base}.*", "star")
    send(producer, f"/topic/{base}.a", b"2")
    assert [f.body for f in first.sync()] == [b"1", b"2"]
    first.receipt("UNSUBSCRIBE", {"id": "rest"})
    send(producer, f"/topic/{base}.a", b"3")
    assert first.sync() == []
    assert [f.body for f in second.sync()] == [b"2", b"3"]


def test_wildcard_characters_inside_an_element_are_literal(raw: RawFactory) -> None:
    topic = f"/topic/w{uid()}.a*b>c"
    consumer = raw()
    consumer.subscribe(topic)
    send(raw(), topic, b"literal")
    (frame,) = consumer.messages(1)
    assert frame.headers["destination"] == topic


# =========================================================================== durable subscriptions


def test_durable_keeps_messages_while_disconnected(raw: RawFactory) -> None:
    """The monitor's case: a durable ``swf.>``-style subscription across a disconnect."""
    base, cid, name = f"d{uid()}", f"ingest-{uid()}", "all"
    producer = raw()
    c = durable(raw, cid, f"/topic/{base}.>", name)
    send(producer, f"/topic/{base}.a", b"live 0")
    ack_all(c, c.messages(1))
    c.receipt("DISCONNECT")

    sent = [(f"/topic/{base}.ns{i % 2}.data", f"offline {i}".encode()) for i in range(1, 6)]
    for destination, body in sent:
        send(producer, destination, body)

    c = durable(raw, cid, f"/topic/{base}.>", name)
    frames = c.messages(len(sent))
    assert [(f.headers["destination"], f.body) for f in frames] == sent
    assert not any("redelivered" in f.headers for f in frames)
    assert len({f.headers["message-id"] for f in frames}) == len(sent)
    ack_all(c, frames)
    send(producer, f"/topic/{base}.b", b"live 6")
    (live,) = c.messages(1)
    assert (live.headers["destination"], live.body) == (f"/topic/{base}.b", b"live 6")
    ack_all(c, [live])
    assert c.sync() == []
    remove(c, "d", name)


def test_unacked_messages_at_a_drop_are_redelivered(raw: RawFactory) -> None:
    topic, cid = f"/topic/d{uid()}", f"c-{uid()}"
    producer = raw()
    c = durable(raw, cid, topic, "n")
    for i in range(4):
        send(producer, topic, b"m%d" % i)
    first = c.messages(4)
    ack_all(c, first[:1])  # m0 acknowledged; m1..m3 outstanding when the connection drops
    c.sync()
    c.close()
    c = reconnect(raw, cid)  # the client-id is free: the old connection is gone, and detached
    send(producer, topic, b"m4")  # waits in the backlog behind m1..m3
    c.subscribe(topic, "d", ack="client-individual", **{NAME: "n"})
    frames = c.messages(4)
    assert [f.body for f in frames] == [b"m1", b"m2", b"m3", b"m4"]
    assert [f.headers["message-id"] for f in frames[:3]] == [
        f.headers["message-id"] for f in first[1:]
    ]
    assert [f.headers.get("redelivered") for f in frames] == ["true", "true", "true", None]
    ack_all(c, frames)
    remove(c, "d", "n")


def test_durable_backlog_is_delivered_under_the_prefetch(raw: RawFactory) -> None:
    """Ack mode and prefetch apply as for a queue: the rest waits in the backlog."""
    topic, cid = f"/topic/d{uid()}", f"c-{uid()}"
    prefetch = {"activemq.prefetchSize": "2"}
    c = durable(raw, cid, topic, "n", **prefetch)
    c.receipt("UNSUBSCRIBE", {"id": "d"})  # detach
    producer = raw()
    for i in range(7):
        send(producer, topic, b"%d" % i)
    c.subscribe(topic, "d", ack="client-individual", **{NAME: "n"}, **prefetch)
    got = c.sync()
    assert [f.body for f in got] == [b"0", b"1"]
    while len(got) < 7:
        ack_all(c, got[-2:])
        more = c.sync()
        assert 0 < len(more) <= 2, [f.body for f in more]
        got += more
    assert [f.body for f in got] == [b"%d" % i for i in range(7)]
    ack_all(c, got[-1:])
    assert c.sync() == []
    remove(c, "d", "n")


def test_nack_puts_a_durable_message_back_at_the_head(raw: RawFactory) -> None:
    topic, cid = f"/topic/d{uid()}", f"c-{uid()}"
    c = durable(raw, cid, topic, "n")
    producer = raw()
    send(producer, topic, b"first")
    send(producer, topic, b"second")
    first, second = c.messages(2)
    c.send("NACK", {"id": first.headers["ack"]})
    (again,) = c.messages(1)
    assert again.body == b"first" and again.headers["redelivered"] == "true"
    assert again.headers["message-id"] == first.headers["message-id"]
    ack_all(c, [second, again])
    assert c.sync() == []
    remove(c, "d", "n")


def test_unsubscribe_by_id_detaches_by_name_removes(raw: RawFactory) -> None:
    topic, cid = f"/topic/d{uid()}", f"c-{uid()}"
    artemis = {"durable-subscription-name": "n"}  # the other spelling works the same
    producer = raw()
    c = raw(**{"client-id": cid})
    c.subscribe(topic, "d", **artemis)
    c.receipt("UNSUBSCRIBE", {"id": "d"})  # detach only: the subscription stays durable
    send(producer, topic, b"kept")
    c.subscribe(topic, "d2", **artemis)
    assert [f.body for f in c.messages(1)] == [b"kept"]

    c.send("UNSUBSCRIBE", {"id": "d2", NAME: "n"})  # attached: refused, as ActiveMQ does
    error = c.expect_error_and_close()
    assert error.headers["message"] == "Durable consumer is in use"

    c = raw(**{"client-id": cid})
    c.receipt("UNSUBSCRIBE", {"id": "x", "durable-subscription-name": "n"})  # detached: removed
    send(producer, topic, b"lost")
    c.subscribe(topic, "d", **artemis)  # a new, empty durable subscription
    send(producer, topic, b"new")
    assert [f.body for f in c.sync()] == [b"new"]
    remove(c, "d", "n")

    c.send("UNSUBSCRIBE", {"id": "d", NAME: "n"})
    error = c.expect_error_and_close()
    assert error.headers["message"] == (
        f"No durable subscription exists for clientID: {cid} and subscriptionName: n"
    )


def test_durable_resubscribed_elsewhere_starts_afresh(raw: RawFactory) -> None:
    """Same name, other destination: the old subscription and its backlog go (as ActiveMQ)."""
    base, cid = f"d{uid()}", f"c-{uid()}"
    c = durable(raw, cid, f"/topic/{base}.old", "n", ack="auto")
    c.receipt("UNSUBSCRIBE", {"id": "d"})
    producer = raw()
    send(producer, f"/topic/{base}.old", b"discarded")
    c.subscribe(f"/topic/{base}.new", "d", **{NAME: "n"})
    send(producer, f"/topic/{base}.old", b"not followed")
    send(producer, f"/topic/{base}.new", b"followed")
    assert [f.body for f in c.sync()] == [b"followed"]
    c.send("SUBSCRIBE", {"destination": f"/topic/{base}.new", "id": "again", NAME: "n"})
    error = c.expect_error_and_close()
    assert error.headers["message"] == (
        f"Durable consumer is in use for client: {cid} and subscriptionName: n"
    )


def test_durable_subscription_needs_a_client_id(raw: RawFactory) -> None:
    c = raw()
    c.send("SUBSCRIBE", {"destination": f"/topic/d{uid()}", "id": "1", NAME: "n"})
    error = c.expect_error_and_close()
    assert "clientID" in error.headers["message"], error
    # on a queue the name means nothing (as on ActiveMQ): a plain queue subscription
    queue = f"/queue/q{uid()}"
    q = raw()
    q.subscribe(queue, "1", **{NAME: "n"})
    send(raw(), queue, b"job")
    assert [f.body for f in q.messages(1)] == [b"job"]


def test_a_client_id_is_used_by_one_connection_at_a_time(raw: RawFactory) -> None:
    cid = f"c-{uid()}"
    first = raw(**{"client-id": cid})
    port = first.sock.getsockname()[1]
    second = raw(connect=False)
    second.send("CONNECT", {"accept-version": "1.2", "host": "localhost", "client-id": cid})
    error = second.expect_error_and_close()
    assert error.headers["message"] == (
        f"Broker: localhost - Client: {cid} already connected from tcp://127.0.0.1:{port}"
    )
    assert first.sync() == []  # the first connection is not disturbed
    first.receipt("DISCONNECT")
    raw(**{"client-id": cid}).receipt("DISCONNECT")  # free again


# --------------------------------------------------------------------------- the backlog bound

MAX_MESSAGES = 5
MAX_BYTES = 4000  # three 1000-byte messages (~1130 bytes each as the broker counts them)


@pytest.fixture
def bounded_broker(tmp_path: Path) -> Iterator[BrokerProc]:
    b = launch_broker_with_options(
        tmp_path, durable_max_messages=MAX_MESSAGES, durable_max_bytes=MAX_BYTES
    )
    yield b
    assert b.stop() == 0, b.log_text()


def dropped_counts(log: str, name: str) -> list[int]:
    pattern = (
        rf"durable subscription {name} \(client-id [^)]*\): dropped (\d+) messages \(backlog full"
    )
    return [int(n) for n in re.findall(pattern, log)]


def test_backlog_bound_drops_the_oldest_and_says_so(bounded_broker: BrokerProc) -> None:
    port = bounded_broker.port
    made: list[Raw] = []

    def connect(**kwargs: str) -> Raw:
        made.append(Raw(port, **kwargs))  # type: ignore[arg-type]  # connect headers, all str
        return made[-1]

    try:
        base, cid = f"d{uid()}", f"c-{uid()}"
        c = connect(**{"client-id": cid})
        c.subscribe(f"/topic/{base}.small", "small", ack="client-individual", **{NAME: "small"})
        c.subscribe(f"/topic/{base}.big", "big", ack="client-individual", **{NAME: "big"})
        c.receipt("DISCONNECT")
        producer = connect()
        for i in range(12):  # bound by count: 5 kept
            send(producer, f"/topic/{base}.small", b"small %02d" % i)
        for i in range(6):  # bound by bytes: 3 kept
            send(producer, f"/topic/{base}.big", bytes([65 + i]) * 1000)

        c = connect(**{"client-id": cid})
        for sub in ("small", "big"):  # no receipts: the backlogs come at once
            c.send(
                "SUBSCRIBE",
                {
                    "destination": f"/topic/{base}.{sub}",
                    "id": sub,
                    "ack": "client-individual",
                    NAME: sub,
                },
            )
        frames = c.sync()
        small = [f.body for f in frames if f.headers["subscription"] == "small"]
        big = [f.body[:1] for f in frames if f.headers["subscription"] == "big"]
        assert small == [b"small %02d" % i for i in range(7, 12)]  # the newest five
        assert big == [b"D", b"E", b"F"]

        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:  # reported within about a second of the drops
            log = bounded_broker.log_text()
            if sum(dropped_counts(log, "small")) == 7 and sum(dropped_counts(log, "big")) == 3:
                break
            time.sleep(0.1)
        log = bounded_broker.log_text()
        assert sum(dropped_counts(log, "small")) == 7, log
        assert sum(dropped_counts(log, "big")) == 3, log
        assert "WARNING" in log
    finally:
        for r in made:
            r.close()


def test_stats_count_backlogs_and_drops_and_unused_topics_go() -> None:
    """In process: ``Broker.stats()`` shows durable subscriptions; nothing is left when all go."""
    broker = Broker("127.0.0.1", 0, durable_max_messages=2)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def stats_now() -> dict[str, Any]:
        return broker.stats()

    def stats() -> dict[str, Any]:  # read in the broker's loop, not beside it
        return asyncio.run_coroutine_threadsafe(stats_now(), loop).result(WAIT_S)

    made: list[Raw] = []
    try:
        asyncio.run_coroutine_threadsafe(broker.start(), loop).result(WAIT_S)
        c = Raw(broker.port, **{"client-id": "cid"})  # type: ignore[arg-type]  # a connect header
        w = Raw(broker.port)
        producer = Raw(broker.port)
        made += [c, w, producer]
        c.subscribe("/topic/s.>", "d", **{NAME: "n"})
        c.receipt("UNSUBSCRIBE", {"id": "d"})
        w.subscribe("/topic/s.*", "w")
        w.subscribe("/topic/s.a", "exact")
        for i in range(5):
            send(producer, "/topic/s.a", b"%d" % i)
        st = stats()
        d = st["durable_subscriptions"]["cid:n"]
        assert (d["topic"], d["attached"], d["messages"], d["dropped"]) == ("s.>", False, 2, 3)
        assert d["bytes"] > 0
        assert st["wildcard_topics"] == {"s.>": 1, "s.*": 1}
        assert st["topics"] == {"s.a": 1}
        w.send("UNSUBSCRIBE", {"id": "w"})
        w.send("UNSUBSCRIBE", {"id": "exact"})
        assert len(w.sync()) == 10  # what the two got before
        c.receipt("UNSUBSCRIBE", {"id": "x", NAME: "n"})
        st = stats()
        assert (st["durable_subscriptions"], st["wildcard_topics"], st["topics"]) == ({}, {}, {})
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(WAIT_S)
    finally:
        for r in made:
            r.close()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()

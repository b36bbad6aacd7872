"""The embedded broker as a real process on a real socket: protocol behaviour and robustness.

Raw sockets send exactly the bytes a test needs (malformed ones too) and see
exactly what the broker answers; stomp.py checks that a normal client is
still served afterwards. Ordering, not timing, decides every assertion: a
receipt round trip (``Raw.sync``) shows what the broker has sent so far,
because it writes to a connection in order. Time limits are failure guards.
"""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable

import pytest
import stomp

from swf_testbed.broker import Broker, Limits
from tests.broker.conftest import (
    HOST,
    MAX_FRAME,
    WAIT_S,
    BrokerProc,
    Raw,
    stomp_round_trip,
    unique,
)
from tests.support.stomp_recorder import FrameRecorder

pytestmark = pytest.mark.timeout(60)

RawFactory = Callable[..., Raw]


# =========================================================================== connecting


def test_connected_frame_and_version_negotiation(raw: RawFactory) -> None:
    from swf_testbed import __version__

    c12 = raw(version="1.0,1.1,1.2")
    assert c12.connected is not None
    h = c12.connected.headers
    assert h["version"] == "1.2"
    assert h["server"] == f"swf-testbed/{__version__}"
    assert h["session"]
    assert h["heart-beat"] == "0,0"
    connected = raw(version="1.1").connected
    assert connected.headers["version"] == "1.1"  # type: ignore[union-attr]  # raw() connects
    # no accept-version: 1.0
    connected = raw(version="1.0").connected
    assert connected.headers["version"] == "1.0"  # type: ignore[union-attr]  # raw() connects
    stomp_frame = raw(connect=False)
    assert (
        stomp_frame.connect({"accept-version": "1.1,1.2", "host": "x"}, command="STOMP").headers[
            "version"
        ]
        == "1.2"
    )

    bad = raw(connect=False)
    bad.send("CONNECT", {"accept-version": "2.0,3.1", "host": "x"})
    error = bad.expect_error_and_close()
    assert "Supported protocol versions" in error.headers["message"]
    assert error.body


@pytest.mark.parametrize(
    ("asked", "answer"),
    [
        ("0,0", "0,0"),
        ("1000,2000", "2000,1000"),
        ("0,500", "500,0"),
        ("300,0", "0,300"),
        ("10,10", "100,100"),
    ],
)
def test_heartbeat_negotiation(raw: RawFactory, asked: str, answer: str) -> None:
    # CONNECTED says "sx,sy": the broker sends at the rate the client asks to
    # receive and expects what the client offers to send (as ActiveMQ), with a 100 ms floor.
    client = raw(**{"heart-beat": asked})
    assert client.connected is not None
    assert client.connected.headers["heart-beat"] == answer


def test_invalid_heartbeat_header_is_an_error(raw: RawFactory) -> None:
    client = raw(connect=False)
    client.send("CONNECT", {"accept-version": "1.2", "heart-beat": "soon"})
    assert "heart-beat" in client.expect_error_and_close().headers["message"]


def test_broker_sends_heartbeats(raw: RawFactory) -> None:
    client = raw(**{"heart-beat": "0,100"})
    assert client.connected is not None and client.connected.headers["heart-beat"] == "100,0"
    client.sock.settimeout(WAIT_S)
    eols = b""
    while eols.count(b"\n") < 3:  # three heart-beats (EOLs) on an otherwise idle connection
        data = client.sock.recv(100)
        assert data, "broker closed the connection"
        assert data.strip(b"\r\n") == b"", data
        eols += data


def test_silent_client_is_dropped_after_twice_its_heartbeat(raw: RawFactory) -> None:
    client = raw(**{"heart-beat": "200,0"})
    assert client.connected is not None and client.connected.headers["heart-beat"] == "0,200"
    error = client.expect_error_and_close()
    assert "heart-beat" in error.headers["message"]
    # never before 2 x 200 ms of silence, as the broker measured it when it decided
    detail = re.fullmatch(
        r"nothing received for (\d+\.\d) s \(negotiated client heart-beat 200 ms\)\n",
        error.body.decode(),
    )
    assert detail is not None, error.body
    assert float(detail.group(1)) >= 0.4, error.body


def test_client_heartbeats_keep_the_connection(raw: RawFactory) -> None:
    client = raw(**{"heart-beat": "200,0"})
    for _ in range(12):  # 1.2 s of heart-beats, six times the interval
        client.send_raw(b"\n")
        time.sleep(0.1)
    assert client.sync() == []  # still connected and served


def test_frames_before_connect_and_second_connect(raw: RawFactory) -> None:
    early = raw(connect=False)
    early.send("SEND", {"destination": "/queue/x", "receipt": "r"}, b"x")
    error = early.expect_error_and_close()
    assert error.headers["message"] == "Not connected."
    assert error.headers["receipt-id"] == "r"

    twice = raw()
    twice.send("CONNECT", {"accept-version": "1.2"})
    assert twice.expect_error_and_close().headers["message"] == "Already connected."


def test_authentication(new_broker: Callable[..., BrokerProc]) -> None:
    b = new_broker("--login", "swf", "--passcode", "s3cret")
    wrong = Raw(b.port, connect=False)
    wrong.send("CONNECT", {"accept-version": "1.2", "login": "swf", "passcode": "nope"})
    error = wrong.expect_error_and_close()
    assert "invalid" in error.headers["message"]
    missing = Raw(b.port, connect=False)
    missing.send("CONNECT", {"accept-version": "1.2"})
    missing.expect_error_and_close()
    right = Raw(b.port, login="swf", passcode="s3cret")
    assert right.connected is not None and right.connected.headers["version"] == "1.2"
    right.close()
    conn = stomp.Connection([(HOST, b.port)], auto_decode=False)
    conn.connect("swf", "s3cret", wait=True)
    conn.disconnect()


def test_disconnect_with_receipt(raw: RawFactory) -> None:
    client = raw()
    client.send("DISCONNECT", {"receipt": "bye-1"})
    frames = client.wait_closed()
    assert [f.command for f in frames] == ["RECEIPT"]
    assert frames[0].headers["receipt-id"] == "bye-1"


# =========================================================================== messages


def test_message_headers(raw: RawFactory) -> None:
    queue = unique("queue")
    consumer = raw()
    consumer.subscribe(queue, "sub-a", ack="client-individual")
    producer = raw()
    tx = "t1"
    producer.send("BEGIN", {"transaction": tx})
    producer.send(
        "SEND",
        {
            "destination": queue,
            "transaction": tx,
            "receipt": "r1",
            "x-user": "v:1",
            "content-type": "application/json",
            "redelivered": "fake",
            "message-id": "fake",
        },
        b'{"a": 1}',
    )
    assert producer.recv().command == "RECEIPT"
    producer.receipt("COMMIT", {"transaction": tx})
    (msg,) = consumer.messages(1)
    h = msg.headers
    assert h["destination"] == queue
    assert h["subscription"] == "sub-a"
    assert h["message-id"] and h["message-id"] != "fake"
    assert h["ack"]  # STOMP 1.2, client ack mode
    assert h["x-user"] == "v:1"
    assert h["content-type"] == "application/json"
    assert h["content-length"] == "8"
    assert "transaction" not in h and "receipt" not in h and "redelivered" not in h
    assert msg.body == b'{"a": 1}'
    consumer.receipt("ACK", {"id": h["ack"]})


def test_auto_ack_message_has_no_ack_header_and_ids_are_unique(raw: RawFactory) -> None:
    topic = unique("topic")
    consumer = raw()
    consumer.subscribe(topic)
    producer = raw()
    for i in range(20):
        producer.send("SEND", {"destination": topic}, b"%d" % i)
    msgs = consumer.messages(20)
    assert [m.body for m in msgs] == [b"%d" % i for i in range(20)]
    assert all("ack" not in m.headers for m in msgs)
    assert len({m.headers["message-id"] for m in msgs}) == 20


def test_binary_body_with_nul_and_crlf_frames(raw: RawFactory) -> None:
    queue = unique("queue")
    consumer = raw()
    consumer.subscribe(queue)
    producer = raw()
    body = bytes(range(256)) * 3
    producer.send("SEND", {"destination": queue}, body)  # encode_frame adds content-length
    producer.send_raw(b"SEND\r\ndestination:" + queue.encode() + b"\r\nx:crlf\r\n\r\nplain\x00\r\n")
    a, b = consumer.messages(2)
    assert a.body == body and a.headers["content-length"] == str(len(body))
    assert b.body == b"plain" and b.headers["x"] == "crlf"


def test_escaped_headers_per_version(raw: RawFactory) -> None:
    topic = unique("topic")
    c10, c11, c12 = raw(version="1.0"), raw(version="1.1"), raw(version="1.2")
    for c in (c10, c11, c12):
        c.subscribe(topic, "s")
    producer = raw()
    producer.send("SEND", {"destination": topic, "x": "a:b\\c"}, b"")
    assert c12.messages(1)[0].headers["x"] == "a:b\\c"
    assert c11.messages(1)[0].headers["x"] == "a:b\\c"
    assert c10.messages(1)[0].headers["x"] == "a:b\\c"  # sent unescaped to a 1.0 client


def test_topic_without_subscriber_drops_and_fans_out(raw: RawFactory) -> None:
    topic = unique("topic")
    producer = raw()
    producer.receipt("SEND", {"destination": topic}, b"nobody listens")
    subs = [raw() for _ in range(3)]
    for s in subs:
        s.subscribe(topic)
    producer.send("SEND", {"destination": topic}, b"everyone")
    for s in subs:
        assert [m.body for m in s.messages(1)] == [b"everyone"]


def test_artemis_style_destinations(raw: RawFactory) -> None:
    name = f"artemis.{uuid.uuid4().hex}"
    topic_sub = raw()
    topic_sub.subscribe(f"/topic/{name}", "t")
    bare_topic_sub = raw()
    bare_topic_sub.subscribe(name, "bt", **{"subscription-type": "MULTICAST"})
    queue_sub = raw()
    queue_sub.subscribe(name, "q", **{"subscription-type": "ANYCAST"})
    producer = raw()
    producer.send("SEND", {"destination": name, "destination-type": "MULTICAST"}, b"multicast")
    producer.send("SEND", {"destination": f"/queue/{name}"}, b"anycast")
    (m1,) = topic_sub.messages(1)
    assert m1.body == b"multicast" and m1.headers["destination"] == f"/topic/{name}"
    (m2,) = bare_topic_sub.messages(1)
    assert m2.body == b"multicast" and m2.headers["destination"] == name
    (m3,) = queue_sub.messages(1)
    assert m3.body == b"anycast" and m3.headers["destination"] == name
    assert topic_sub.sync() == [] and bare_topic_sub.sync() == [] and queue_sub.sync() == []


def test_selector_filters_topic_and_queue(raw: RawFactory) -> None:
    topic, queue = unique("topic"), unique("queue")
    mine = raw()
    mine.subscribe(topic, "t", selector="namespace = 'a'")
    mine.subscribe(queue, "q", selector="namespace = 'a'")
    other = raw()
    other.subscribe(queue, "q", selector="namespace = 'b'")
    producer = raw()
    for ns in ("b", "a", "c", "a"):
        producer.send("SEND", {"destination": topic, "namespace": ns}, ns.encode())
        producer.send("SEND", {"destination": queue, "namespace": ns}, ns.encode())
    got = mine.messages(4)
    assert sorted((m.headers["subscription"], m.body) for m in got) == [
        ("q", b"a"),
        ("q", b"a"),
        ("t", b"a"),
        ("t", b"a"),
    ]
    assert [m.body for m in other.messages(1)] == [b"b"]
    assert mine.sync() == [] and other.sync() == []
    bad = raw()
    bad.send("SUBSCRIBE", {"destination": topic, "id": "x", "selector": "namespace = = 'a'"})
    assert "selector" in bad.expect_error_and_close().headers["message"]


# ======================================================================= queues and acknowledgement


def test_queue_keeps_messages_until_a_subscriber_arrives(raw: RawFactory) -> None:
    queue = unique("queue")
    producer = raw()
    for i in range(5):
        producer.send("SEND", {"destination": queue}, b"m%d" % i)
    producer.receipt("SEND", {"destination": queue}, b"last")
    producer.close()
    consumer = raw()
    consumer.subscribe(queue)
    assert [m.body for m in consumer.messages(6)] == [b"m0", b"m1", b"m2", b"m3", b"m4", b"last"]


def test_queue_round_robin_each_message_once(raw: RawFactory) -> None:
    queue = unique("queue")
    consumers = [raw() for _ in range(3)]
    for c in consumers:
        c.subscribe(queue)
    producer = raw()
    for i in range(30):
        producer.send("SEND", {"destination": queue}, b"%d" % i)
    got = [c.messages(10) for c in consumers]  # round robin: ten each
    bodies = sorted(int(m.body) for msgs in got for m in msgs)
    assert bodies == list(range(30))
    assert all(c.sync() == [] for c in consumers)


def test_nack_redelivers_with_same_message_id(raw: RawFactory) -> None:
    queue = unique("queue")
    consumer = raw()
    consumer.subscribe(queue, ack="client-individual")
    producer = raw()
    producer.send("SEND", {"destination": queue}, b"retry me")
    (first,) = consumer.messages(1)
    assert "redelivered" not in first.headers
    consumer.send("NACK", {"id": first.headers["ack"]})
    (again,) = consumer.messages(1)  # the only subscriber: it comes back here
    assert again.body == b"retry me"
    assert again.headers["redelivered"] == "true"
    assert again.headers["message-id"] == first.headers["message-id"]
    consumer.receipt("ACK", {"id": again.headers["ack"]})
    assert consumer.sync() == []


def test_nack_prefers_another_queue_consumer(raw: RawFactory) -> None:
    queue = unique("queue")
    a = raw()
    a.subscribe(queue, ack="client-individual")
    b = raw()
    b.subscribe(queue, ack="client-individual")
    producer = raw()
    producer.send("SEND", {"destination": queue}, b"only one")
    producer.sync()  # the broker has dispatched it by now
    got_a, got_b = a.sync(), b.sync()
    assert len(got_a) + len(got_b) == 1
    holder, other = (a, b) if got_a else (b, a)
    (first,) = got_a or got_b
    holder.send("NACK", {"id": first.headers["ack"]})
    (again,) = other.messages(1)
    assert again.body == b"only one"
    assert again.headers["redelivered"] == "true"
    assert again.headers["message-id"] == first.headers["message-id"]
    assert holder.sync() == []


def test_transaction_abort_delivers_nothing_commit_delivers(raw: RawFactory) -> None:
    queue = unique("queue")
    consumer = raw()
    consumer.subscribe(queue)
    producer = raw()
    producer.send("BEGIN", {"transaction": "tx-a"})
    producer.send("SEND", {"destination": queue, "transaction": "tx-a"}, b"aborted 1")
    producer.send("SEND", {"destination": queue, "transaction": "tx-a"}, b"aborted 2")
    producer.send("ABORT", {"transaction": "tx-a"})
    producer.send("SEND", {"destination": queue}, b"marker 1")
    assert [m.body for m in consumer.messages(1)] == [b"marker 1"]

    producer.send("BEGIN", {"transaction": "tx-c"})
    producer.send("SEND", {"destination": queue, "transaction": "tx-c"}, b"committed 1")
    producer.send("SEND", {"destination": queue, "transaction": "tx-c"}, b"committed 2")
    producer.send("SEND", {"destination": queue}, b"marker 2")
    assert [m.body for m in consumer.messages(1)] == [b"marker 2"]  # nothing before COMMIT
    producer.receipt("COMMIT", {"transaction": "tx-c"})
    assert [m.body for m in consumer.messages(2)] == [b"committed 1", b"committed 2"]

    # a transaction still open when its connection goes away is aborted
    producer.send("BEGIN", {"transaction": "tx-d"})
    producer.receipt("SEND", {"destination": queue, "transaction": "tx-d"}, b"never")
    producer.close()
    raw().receipt("SEND", {"destination": queue}, b"marker 3")
    assert [m.body for m in consumer.messages(1)] == [b"marker 3"]


def test_transaction_errors(raw: RawFactory) -> None:
    c = raw()
    c.send("COMMIT", {"transaction": "nope"})
    assert "Invalid transaction" in c.expect_error_and_close().headers["message"]
    c = raw()
    c.send("BEGIN", {"transaction": "t"})
    c.send("BEGIN", {"transaction": "t"})
    assert "already started" in c.expect_error_and_close().headers["message"]


def test_transactional_ack_applies_at_commit(raw: RawFactory) -> None:
    queue = unique("queue")
    consumer = raw()
    consumer.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "1"})
    producer = raw()
    producer.send("SEND", {"destination": queue}, b"one")
    producer.send("SEND", {"destination": queue}, b"two")
    (one,) = consumer.messages(1)
    consumer.send("BEGIN", {"transaction": "t"})
    consumer.send("ACK", {"id": one.headers["ack"], "transaction": "t"})
    assert consumer.sync() == []  # ACK held: prefetch 1 still used by "one"
    consumer.send("ABORT", {"transaction": "t"})
    assert consumer.sync() == []  # aborted: "one" is still unacknowledged
    consumer.send("BEGIN", {"transaction": "t2"})
    consumer.send("ACK", {"id": one.headers["ack"], "transaction": "t2"})
    consumer.send("COMMIT", {"transaction": "t2"})
    (two,) = consumer.messages(1)
    assert two.body == b"two"


def test_client_ack_is_cumulative(raw: RawFactory) -> None:
    queue = unique("queue")
    first = raw()
    first.subscribe(queue, ack="client")
    producer = raw()
    for i in range(5):
        producer.send("SEND", {"destination": queue}, b"%d" % i)
    msgs = first.messages(5)
    first.receipt("ACK", {"id": msgs[2].headers["ack"]})  # acknowledges 0, 1 and 2
    first.send("ACK", {"id": msgs[1].headers["ack"]})  # 1 is no longer outstanding
    assert "Unexpected ACK" in first.expect_error_and_close().headers["message"]
    second = raw()
    second.subscribe(queue, ack="client")
    redelivered = second.messages(2)
    assert [m.body for m in redelivered] == [b"3", b"4"]
    assert all(m.headers["redelivered"] == "true" for m in redelivered)
    assert [m.headers["message-id"] for m in redelivered] == [
        m.headers["message-id"] for m in msgs[3:]
    ]
    second.receipt("ACK", {"id": redelivered[1].headers["ack"]})
    assert second.sync() == []


def test_ack_with_stomp_11_headers_and_10_message_id(raw: RawFactory) -> None:
    queue = unique("queue")
    c11 = raw(version="1.1")
    c11.subscribe(queue, "s11", ack="client-individual", **{"activemq.prefetchSize": "1"})
    producer = raw()
    producer.send("SEND", {"destination": queue}, b"a")
    (m,) = c11.messages(1)
    assert "ack" not in m.headers  # no ack header before 1.2
    c11.receipt("ACK", {"subscription": "s11", "message-id": m.headers["message-id"]})
    c11.send("UNSUBSCRIBE", {"id": "s11"})
    c10 = raw(version="1.0")
    c10.send("SUBSCRIBE", {"destination": queue, "ack": "client"})
    producer.send("SEND", {"destination": queue}, b"b")
    (m,) = c10.messages(1)
    c10.receipt("ACK", {"message-id": m.headers["message-id"]})
    c10.send("NACK", {"message-id": m.headers["message-id"]})  # no NACK in 1.0 (as ActiveMQ)
    c10.expect_error_and_close()


def test_unacked_messages_go_to_another_consumer_when_connection_drops(raw: RawFactory) -> None:
    queue = unique("queue")
    first = raw()
    first.subscribe(queue, ack="client-individual")
    producer = raw()
    for i in range(4):
        producer.send("SEND", {"destination": queue}, b"job %d" % i)
    got = first.messages(4)
    first.receipt("ACK", {"id": got[0].headers["ack"]})
    first.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()  # reset, no DISCONNECT
    second = raw()
    second.subscribe(queue, ack="client-individual")
    again = second.messages(3)
    assert [m.body for m in again] == [b"job 1", b"job 2", b"job 3"]
    assert all(m.headers["redelivered"] == "true" for m in again)
    assert [m.headers["message-id"] for m in again] == [m.headers["message-id"] for m in got[1:]]


def test_unsubscribe_returns_unacked_messages(raw: RawFactory) -> None:
    queue = unique("queue")
    c = raw()
    c.subscribe(queue, "s", ack="client-individual")
    raw().send("SEND", {"destination": queue}, b"x")
    (m,) = c.messages(1)
    c.receipt("UNSUBSCRIBE", {"id": "s"})
    c.subscribe(queue, "s2", ack="auto")
    (again,) = c.messages(1)
    assert (
        again.headers["redelivered"] == "true"
        and again.headers["message-id"] == m.headers["message-id"]
    )
    c.send("UNSUBSCRIBE", {"id": "never-subscribed"})
    assert c.expect_error_and_close().headers["message"] == "No subscription matched."


def test_prefetch_is_respected(raw: RawFactory) -> None:
    queue = unique("queue")
    slow = raw()
    slow.subscribe(queue, "slow", ack="client-individual", **{"activemq.prefetchSize": "2"})
    producer = raw()
    for i in range(5):
        producer.send("SEND", {"destination": queue}, b"%d" % i)
    producer.sync()  # all five are in the broker
    held = slow.messages(2)
    assert slow.sync() == []  # not a third one: the prefetch is 2
    fast = raw()
    fast.subscribe(queue, "fast")
    assert [m.body for m in fast.messages(3)] == [
        b"2",
        b"3",
        b"4",
    ]  # the rest went to the other consumer
    fast.receipt("UNSUBSCRIBE", {"id": "fast"})

    slow.send("ACK", {"id": held[0].headers["ack"]})
    producer.send("SEND", {"destination": queue}, b"5")
    producer.send("SEND", {"destination": queue}, b"6")
    producer.sync()
    assert [m.body for m in slow.messages(1)] == [b"5"]  # one slot was free
    assert slow.sync() == []
    slow.send("ACK", {"id": held[1].headers["ack"]})
    assert [m.body for m in slow.messages(1)] == [b"6"]


def test_competing_consumers_with_prefetch_one_share_the_work(raw: RawFactory) -> None:
    queue = unique("queue")
    stuck = raw()
    stuck.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "1"})
    worker = raw()
    worker.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "1"})
    producer = raw()
    for i in range(10):
        producer.send("SEND", {"destination": queue}, b"%d" % i)
    done = []
    while len(done) < 9:  # the worker acknowledges; the stuck consumer holds one message forever
        (m,) = worker.messages(1)
        done.append(m.body)
        worker.send("ACK", {"id": m.headers["ack"]})
    stuck_msgs = stuck.sync()
    assert len(stuck_msgs) == 1
    assert sorted(done + [stuck_msgs[0].body], key=int) == [b"%d" % i for i in range(10)]


# =========================================================================== robustness


def _check_served(broker: BrokerProc) -> None:
    assert broker.proc.poll() is None, broker.log_text()
    stomp_round_trip(broker.port)


def test_garbage_bytes(broker: BrokerProc, raw: RawFactory) -> None:
    for garbage in (
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(range(200)),
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        bytes(range(256)) * 64,
    ):
        c = raw(connect=False)
        c.send_raw(garbage)
        assert c.expect_error_and_close().headers["message"]
    connected = raw()
    connected.send_raw(b"\x00\x01garbage after connect\n\n\x00")
    connected.expect_error_and_close()
    _check_served(broker)


def test_frame_without_nul_then_eof(broker: BrokerProc, raw: RawFactory) -> None:
    c = raw()
    c.send_raw(b"SEND\ndestination:/queue/x\n\nno terminator")
    c.sock.shutdown(socket.SHUT_WR)
    error = c.expect_error_and_close()
    assert error.headers["message"] == "Incomplete frame"
    c = raw()
    c.send_raw(b"SEND\ndestination:/queue/x\ncontent-length:3\n\nabcdef\x00")
    assert c.expect_error_and_close().headers["message"] == "Frame not terminated"
    _check_served(broker)


def test_oversized_frames(broker: BrokerProc, raw: RawFactory) -> None:
    c = raw()
    c.send_raw(b"SEND\ndestination:/queue/x\ncontent-length:%d\n\n" % (MAX_FRAME + 1))
    assert c.expect_error_and_close().headers["message"] == "Frame too large"
    c = raw()
    c.send_raw(b"SEND\ndestination:/queue/x\n\n")
    try:
        for _ in range(MAX_FRAME // 65536 + 2):
            c.send_raw(b"x" * 65536)
    except OSError:
        pass  # the broker may already have closed the connection
    assert c.expect_error_and_close().headers["message"] == "Frame too large"
    # exactly the limit is fine
    ok = raw()
    queue = unique("queue")
    ok.subscribe(queue)
    ok.send("SEND", {"destination": queue}, b"y" * MAX_FRAME)
    (m,) = ok.messages(1)
    assert m.body == b"y" * MAX_FRAME
    _check_served(broker)


def test_header_bomb(broker: BrokerProc, raw: RawFactory) -> None:
    many = raw()
    try:
        many.send_raw(b"SEND\ndestination:/queue/x\n" + b"h:v\n" * 200_000 + b"\n\x00")
    except OSError:
        pass
    assert many.expect_error_and_close().headers["message"] in (
        "Too many headers",
        "Header too large",
    )
    long = raw()
    try:
        long.send_raw(b"SEND\ndestination:/queue/x\nh:" + b"v" * 1_000_000 + b"\n\n\x00")
    except OSError:
        pass
    assert long.expect_error_and_close().headers["message"] == "Header too large"
    _check_served(broker)


def test_thousand_connections_opened_and_dropped(broker: BrokerProc) -> None:
    connect = b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00"
    partials = [
        b"",
        connect,
        b"CONN",
        connect + b"SEND\ndestination:/queue/drop\ncontent-length:100\n\nhalf a bo",
        connect + b"SUBSCRIBE\ndestination:/queue/drop\nid:1\nack:client\n\n\x00",
        connect + b"SEND\ndestination:/topic/drop\nx:",
    ]
    for batch in range(10):
        socks = []
        for i in range(100):
            s = socket.create_connection((HOST, broker.port), timeout=WAIT_S)
            data = partials[(batch + i) % len(partials)]
            if data:
                s.sendall(data)
            if i % 3 == 0:  # reset instead of a clean close
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            socks.append(s)
        for s in socks:
            s.close()
    _check_served(broker)
    # and what was left in /queue/drop by the half-finished clients is still sane
    c = Raw(broker.port)
    try:
        assert c.sync() == []
    finally:
        c.close()


def _stuck_subscriber(port: int, topic: str) -> socket.socket:
    """A connection that subscribes to ``topic`` and then never reads."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((HOST, port))
    s.sendall(
        b"CONNECT\naccept-version:1.2\nhost:x\n\n\x00"
        b"SUBSCRIBE\ndestination:" + topic.encode() + b"\nid:1\nreceipt:r\n\n\x00"
    )
    s.settimeout(WAIT_S)
    got = b""
    while b"receipt-id:r" not in got:
        part = s.recv(4096)
        assert part, "closed before the RECEIPT"
        got += part
    return s


def _read_until_closed(s: socket.socket) -> bytes:
    data = bytearray()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            part = s.recv(1 << 20)
        except ConnectionResetError:
            return bytes(data)
        if not part:
            return bytes(data)
        data += part
    pytest.fail("the connection was not closed")


def _drain_in_thread(
    client: Raw, total: int, pause: float = 0.0
) -> tuple[threading.Thread, list[bytes]]:
    bodies: list[bytes] = []

    def drain() -> None:
        while len(bodies) < total:
            bodies.append(client.recv().body)
            if pause:
                time.sleep(pause)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader, bodies


def test_stuck_topic_consumer_is_closed_and_producers_go_on(
    broker: BrokerProc, raw: RawFactory
) -> None:
    topic = unique("topic")
    stuck = _stuck_subscriber(broker.port, topic)
    fast = raw()
    fast.subscribe(topic)
    total = 200
    reader, bodies = _drain_in_thread(fast, total)
    producer = raw()
    chunk = b"z" * 65536  # 200 x 64 KiB = 12.5 MiB, far more than any buffer on the way
    for i in range(total):
        producer.send("SEND", {"destination": topic, "i": str(i)}, chunk)
    producer.sync()  # the producer was held back for a while, then went on
    reader.join(WAIT_S)
    assert len(bodies) == total, "the fast consumer did not get every message"
    data = _read_until_closed(stuck)
    stuck.close()
    assert len(data) < total * len(chunk)
    if b"ERROR\n" in data:
        assert b"message:slow consumer" in data
    _check_served(broker)


def test_slow_but_steady_consumer_paces_the_producer(raw: RawFactory) -> None:
    topic = unique("topic")
    slow = raw(rcvbuf=8192)
    slow.subscribe(topic)
    total = 150  # 150 x 64 KiB: more than the broker would hold for it, so the producer must wait
    reader, bodies = _drain_in_thread(slow, total, pause=0.001)
    producer = raw()
    for i in range(total):
        producer.send("SEND", {"destination": topic}, b"%06d" % i + b"s" * 65530)
    reader.join(WAIT_S * 2)
    assert len(bodies) == total
    assert [int(b[:6]) for b in bodies] == list(range(total))
    assert slow.sync() == []


@pytest.mark.slow
def test_connection_that_never_reads_is_capped(broker: BrokerProc) -> None:
    """Publishing to a topic it subscribes to, never reading: the byte cap closes it."""
    topic = unique("topic")
    s = _stuck_subscriber(broker.port, topic)
    frame = (
        b"SEND\ndestination:"
        + topic.encode()
        + b"\ncontent-length:65536\n\n"
        + b"q" * 65536
        + b"\x00"
    )
    sent = 0
    try:
        s.settimeout(WAIT_S)
        for _ in range(400):  # 25 MiB, six times the cap
            s.sendall(frame)
            sent += 1
    except OSError:
        pass  # closed (reset) by the broker while we were still sending
    data = _read_until_closed(s)
    s.close()
    assert sent < 400 or len(data) < 400 * 65536
    _check_served(broker)


def test_broker_api_in_process() -> None:
    """``Broker`` with port 0 in an event loop of our own: ``port`` tells the bound port."""
    broker = Broker("127.0.0.1", 0, limits=Limits(max_body_size=1000))
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(broker.start(), loop).result(WAIT_S)
        port = broker.port
        assert port != 0
        stomp_round_trip(port)
        c = Raw(port)
        c.send("SEND", {"destination": "/queue/x"}, b"x" * 1001)
        assert c.expect_error_and_close().headers["message"] == "Frame too large"
        # both clients are gone: the broker drops each one once it sees the close (connection_lost
        # runs on the loop thread, possibly just after our EOF), so wait for the figure to reach 0
        deadline = time.monotonic() + WAIT_S
        while broker.stats()["connections"] != 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert broker.stats()["connections"] == 0
        asyncio.run_coroutine_threadsafe(broker.stop(), loop).result(WAIT_S)
        with pytest.raises(OSError):
            socket.create_connection((HOST, port), timeout=1).close()  # no longer listening
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT_S)
        loop.close()


def test_sigterm_exits_zero_promptly(new_broker: Callable[..., BrokerProc]) -> None:
    b = new_broker()
    listener = FrameRecorder()
    conn = stomp.Connection([(HOST, b.port)], auto_decode=False)
    conn.set_listener("c", listener)
    conn.connect(wait=True)
    conn.subscribe(unique("queue"), id="1")
    idle = socket.create_connection((HOST, b.port))  # not even CONNECTed
    b.proc.send_signal(signal.SIGTERM)
    # promptly: it exits with both clients still there (neither leaves by itself); the time
    # limit only guards against a hang
    rc = b.proc.wait(WAIT_S)
    assert rc == 0, b.log_text()
    assert "listening on" in b.log_text()
    idle.settimeout(WAIT_S)
    assert idle.recv(10) == b""  # its connection was closed
    idle.close()
    for _ in range(100):
        if not conn.is_connected():
            break
        time.sleep(0.05)
    assert not conn.is_connected()

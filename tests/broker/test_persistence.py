"""The journal under faults, durable subscriptions kept across kill -9, queues bounded in memory.

Every broker here is a real ``python -m swf_testbed.broker`` process; a crash
is SIGKILL.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from swf_testbed.testing.brokers import free_port, wait_for_port
from tests.broker.conftest import HOST, WAIT_S, BrokerProc, Raw, unique

KILLED = -9


def _kill(broker: BrokerProc) -> None:
    broker.proc.kill()  # SIGKILL: no flush, no goodbye
    assert broker.proc.wait(10) == KILLED


def _receipted_sends(
    producer: Raw, queue: str, bodies: list[bytes], persistent: bool = True
) -> None:
    for body in bodies:
        producer.receipt(
            "SEND", {"destination": queue, "persistent": "true" if persistent else "false"}, body
        )


# --------------------------------------------------------------------------- journal faults


def test_kill_9_during_a_group_commit_loses_no_receipted_send(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    """Sends stream in with receipts; the broker is killed while groups are being committed.

    Every send whose RECEIPT came is there after the restart; one whose
    RECEIPT had not come is there once or not at all; the order is kept.
    """
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    queue = unique("queue")
    producer = Raw(first.port)
    confirmed: set[int] = set()
    batch = 200
    for start in range(0, 1000, batch):  # a few whole groups first, all confirmed
        producer.send_raw(
            b"".join(producer_frame(queue, n, b"x" * 300) for n in range(start, start + batch))
        )
        while len(confirmed) < start + batch:
            confirmed.add(int(producer.recv().headers["receipt-id"]))
    total = 6000

    def pump() -> None:  # then a stream, 10 frames per write, until the broker is gone
        try:
            for start in range(1000, total, 10):
                producer.send_raw(
                    b"".join(producer_frame(queue, n, b"x" * 300) for n in range(start, start + 10))
                )
        except OSError:
            pass

    streaming = threading.Thread(target=pump, daemon=True)
    streaming.start()
    while len(confirmed) < 1300:  # groups of the stream are being committed: kill now
        frame = producer.recv()
        assert frame.command == "RECEIPT", frame
        confirmed.add(int(frame.headers["receipt-id"]))
    _kill(first)
    for late in producer.wait_closed():  # written before the kill: confirmed too
        confirmed.add(int(late.headers["receipt-id"]))
    streaming.join(WAIT_S)
    producer.close()
    assert len(confirmed) < total  # the kill came with sends still unconfirmed

    second = new_broker("--data-dir", str(data))
    consumer = Raw(second.port)
    consumer.subscribe(queue, ack="client", **{"activemq.prefetchSize": "10000"})
    got: list[int] = []
    while not confirmed <= set(got):
        frame = consumer.recv()
        assert frame.command == "MESSAGE", frame
        got.append(int(frame.headers["seq"]))
    got.extend(int(f.headers["seq"]) for f in consumer.sync() if f.command == "MESSAGE")
    print(
        f"kill -9: {len(confirmed)} confirmed, {len(got)} delivered after the restart "
        f"({len(got) - len(confirmed)} sent but not confirmed), of {total} written"
    )
    assert confirmed <= set(got)  # nothing confirmed is lost
    assert len(got) == len(set(got))  # nothing twice
    assert got == sorted(got)  # in the order sent
    assert set(got) <= set(range(total))


def producer_frame(queue: str, seq: int, body: bytes) -> bytes:
    from swf_testbed.broker.frames import encode_frame

    headers = {"destination": queue, "persistent": "true", "seq": str(seq), "receipt": str(seq)}
    return encode_frame("SEND", headers, body, "1.2")


def test_a_truncated_last_record_is_skipped_and_the_broker_starts(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    queue = unique("queue")
    _receipted_sends(Raw(first.port), queue, [b"m%d" % i for i in range(5)])
    _kill(first)
    [segment] = sorted((data / "journal").glob("*.seg"))
    os.truncate(segment, segment.stat().st_size - 3)  # the crash tore the last record

    second = new_broker("--data-dir", str(data))
    consumer = Raw(second.port)
    consumer.subscribe(queue)
    assert [f.body for f in consumer.messages(4)] == [b"m%d" % i for i in range(4)]
    assert consumer.sync() == []
    assert "torn last record" in second.log_text()
    _receipted_sends(Raw(second.port), queue, [b"after"])  # the journal takes appends again
    assert [f.body for f in consumer.messages(1)] == [b"after"]


def _limit_file_size(nbytes: int) -> Callable[[], None]:
    def limit() -> None:  # in the child: ulimit -f (Python ignores SIGXFSZ: write fails EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))

    return limit


def test_a_full_disk_is_reported_to_the_producer_and_not_confirmed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    port = free_port()
    log = tmp_path / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swf_testbed.broker", "--port", str(port)]
            + ["--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_limit_file_size(1024 * 1024),  # noqa: PLW1509 -- a plain setrlimit
        )
    try:
        wait_for_port(HOST, port, 20, proc)
        queue = unique("queue")
        producer = Raw(port)
        confirmed = 0
        body = b"y" * 64 * 1024
        for i in range(40):  # 2.5 MB: the 1 MB file-size limit is hit on the way
            rid = f"r{i}"
            producer.send(
                "SEND", {"destination": queue, "persistent": "true", "receipt": rid}, body
            )
            frame = producer.recv()
            if frame.command == "ERROR":
                break
            assert frame.command == "RECEIPT" and frame.headers["receipt-id"] == rid
            confirmed += 1
        else:
            raise AssertionError("40 sends of 64 KB confirmed past a 1 MB file-size limit")
        assert frame.headers["message"] == "journal write failed"
        assert b"File too large" in frame.body or b"No space" in frame.body, frame.body
        assert 0 < confirmed < 16
        assert "cannot write the journal" in log.read_text()
        assert proc.poll() is None  # the broker carries on; other connections too
        other = Raw(port)
        other.receipt("SEND", {"destination": unique("topic")}, b"still serving")
    finally:
        proc.kill()
        proc.wait(10)
    again = BrokerProc(*_start(tmp_path, data))
    try:
        consumer = Raw(again.port)
        consumer.subscribe(queue)
        assert len(consumer.messages(confirmed)) == confirmed  # what was confirmed is there
        assert consumer.sync() == []
    finally:
        again.stop()


def _start(tmp_path: Path, data: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log = tmp_path / f"broker-{port}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swf_testbed.broker", "--port", str(port)]
            + ["--data-dir", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for_port(HOST, port, 20, proc)
    return proc, port, log


# --------------------------------------------------------------------------- durable subscriptions


def test_a_durable_backlog_survives_kill_9(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    topic = unique("topic")
    cid = f"c-{uuid.uuid4().hex[:8]}"
    sub = {"activemq.subscriptionName": "keep"}
    durable = Raw(first.port, **{"client-id": cid})
    durable.subscribe(topic, ack="client-individual", **sub)
    durable.close()  # detached: the backlog fills
    producer = Raw(first.port)
    _receipted_sends(producer, topic, [b"d%d" % i for i in range(10)])
    _receipted_sends(producer, topic, [b"not persistent"], persistent=False)
    _receipted_sends(producer, topic, [b"d10"])
    _kill(first)

    second = new_broker("--data-dir", str(data))
    again = Raw(second.port, **{"client-id": cid})
    again.subscribe(topic, ack="client-individual", **sub)
    frames = again.messages(11)
    assert [f.body for f in frames] == [b"d%d" % i for i in range(11)]
    assert all(f.headers.get("redelivered") == "true" for f in frames)
    for frame in frames[:6]:
        again.send("ACK", {"id": frame.headers["ack"]})
    assert again.sync() == []
    _kill(second)

    third = new_broker("--data-dir", str(data))
    last = Raw(third.port, **{"client-id": cid})
    last.subscribe(topic, ack="client-individual", **sub)
    assert [f.body for f in last.messages(5)] == [b"d%d" % i for i in range(6, 11)]
    assert last.sync() == []


BACKLOG_BOUND = 256 * 1024


def test_a_durable_backlog_past_its_bound_is_paged_not_dropped_also_across_kill_9(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    """96 persistent 16 KiB messages at a 256 KiB bound: the journal keeps what memory does not."""
    data = tmp_path / "data"
    options = ("--data-dir", str(data), "--durable-max-bytes", str(BACKLOG_BOUND))
    first = new_broker(*options)
    topic = unique("topic")
    cid = f"c-{uuid.uuid4().hex[:8]}"
    sub = {"activemq.subscriptionName": "paged"}
    durable = Raw(first.port, **{"client-id": cid})
    durable.subscribe(topic, ack="client-individual", **sub)
    durable.close()  # detached: the backlog fills
    bodies = [bytes([65 + i % 26]) * 16 * 1024 + b"%02d" % i for i in range(96)]
    _receipted_sends(Raw(first.port), topic, bodies)
    _receipted_sends(Raw(first.port), topic, [b"not persistent"], persistent=False)
    backlog = _stats(first.port)["durable_subscriptions"][f"{cid}:paged"]
    assert backlog["dropped"] == 1  # the one message not journaled, behind paged ones
    assert backlog["in_memory"] + backlog["paged"] == backlog["messages"] == 96
    assert 0 < backlog["in_memory"] < 96 and backlog["bytes"] <= BACKLOG_BOUND

    again = Raw(first.port, **{"client-id": cid})
    again.subscribe(topic, ack="client-individual", **{**sub, "activemq.prefetchSize": "4"})
    first_ten = []
    for _ in range(10):  # the first ten done; the rest are still owed
        frame = again.recv()
        first_ten.append(frame.body)
        again.send("ACK", {"id": frame.headers["ack"]})
    assert first_ten == bodies[:10]
    beyond = again.sync()  # the acks are in; what came beyond the ten goes back at the close
    assert [f.body for f in beyond] == bodies[10 : 10 + len(beyond)]
    again.close()
    _kill(first)

    second = new_broker(*options)
    backlog = _stats(second.port)["durable_subscriptions"][f"{cid}:paged"]
    assert backlog["messages"] == 86 and backlog["paged"] > 0, backlog
    assert backlog["bytes"] <= BACKLOG_BOUND
    last = Raw(second.port, **{"client-id": cid})
    last.subscribe(topic, ack="client-individual", **{**sub, "activemq.prefetchSize": "4"})
    got = []
    for _ in range(86):
        frame = last.recv()
        got.append(frame.body)
        last.send("ACK", {"id": frame.headers["ack"]})
    assert got == bodies[10:]  # every one, in order
    assert last.sync() == []
    backlog = _stats(second.port)["durable_subscriptions"][f"{cid}:paged"]
    assert (backlog["messages"], backlog["dropped"]) == (0, 0)


def test_a_removed_durable_subscription_does_not_come_back(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    topic = unique("topic")
    cid = f"c-{uuid.uuid4().hex[:8]}"
    sub = {"activemq.subscriptionName": "gone"}
    durable = Raw(first.port, **{"client-id": cid})
    durable.subscribe(topic, **sub)
    durable.receipt("UNSUBSCRIBE", {"id": "s1"})
    _receipted_sends(Raw(first.port), topic, [b"kept, then removed"])
    durable.receipt("UNSUBSCRIBE", {"id": "s1", **sub})
    _kill(first)
    second = new_broker("--data-dir", str(data))
    stats = _stats(second.port)
    assert stats["durable_subscriptions"] == {}
    assert all(not q["messages"] for q in stats["queues"].values())


# --------------------------------------------------------------------------- bounded memory

LIMIT = 1024 * 1024


def test_past_the_limit_non_persistent_sends_are_refused_and_persistent_ones_paged(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    broker = new_broker("--data-dir", str(tmp_path / "data"), "--queue-memory-limit", str(LIMIT))
    queue = unique("queue")
    body = b"z" * 64 * 1024
    producer = Raw(broker.port)
    _receipted_sends(producer, queue, [body + b"%d" % i for i in range(40)])  # 2.5 MB, all kept
    stats = _stats(broker.port)["queues"][queue[len("/queue/") :]]
    assert stats["messages"] == 40 and stats["paged"] > 20 and stats["bytes"] <= LIMIT
    refused = Raw(broker.port)
    refused.send(
        "SEND", {"destination": queue, "persistent": "false", "receipt": "np"}, b"not kept"
    )
    error = refused.expect_error_and_close()
    assert error.headers["message"] == f"Queue {queue[len('/queue/') :]} is full"
    assert error.headers["receipt-id"] == "np"
    assert b"persistent:true" in error.body
    consumer = Raw(broker.port)
    consumer.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "3"})
    got = []
    for _ in range(40):
        frame = consumer.recv()
        got.append(frame.body)
        consumer.send("ACK", {"id": frame.headers["ack"]})
    assert got == [body + b"%d" % i for i in range(40)]  # paged in, in order
    assert consumer.sync() == []


def test_a_connection_that_consumes_and_produces_is_not_stalled_by_its_own_backlog(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    """One connection consumes a queue (prefetch 2, acks later) and sends 4x the limit to it.

    Every send is confirmed while its own deliveries wait for its ACKs; then
    it takes all of them, in order.
    """
    broker = new_broker("--data-dir", str(tmp_path / "data"), "--queue-memory-limit", str(LIMIT))
    queue = unique("queue")
    both = Raw(broker.port)
    both.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "2"})
    body = b"w" * 32 * 1024
    n = 4 * LIMIT // len(body)
    deliveries = []
    for i in range(n):
        rid = f"r{i}"
        both.send("SEND", {"destination": queue, "persistent": "true", "receipt": rid}, body)
        while True:  # its RECEIPT comes, whatever waits for this connection
            frame = both.recv()
            if frame.command == "RECEIPT":
                assert frame.headers["receipt-id"] == rid
                break
            assert frame.command == "MESSAGE", frame
            deliveries.append(frame)
    assert len(deliveries) == 2  # the prefetch: the rest waits in the broker (memory, journal)
    got = []
    while len(got) < n:
        frame = deliveries.pop(0) if deliveries else both.recv()
        assert frame.command == "MESSAGE", frame
        got.append(frame.headers["message-id"])
        both.send("ACK", {"id": frame.headers["ack"]})
    assert len(set(got)) == n
    assert got == sorted(got, key=lambda mid: int(mid.rsplit(":", 1)[1]))
    assert both.sync() == []


@pytest.mark.slow
def test_a_200_mb_backlog_keeps_the_broker_under_its_limit(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    """200 MB into one queue with a slow consumer: RSS stays under the limit plus a margin."""
    limit = 32 * 1024 * 1024
    broker = new_broker("--data-dir", str(tmp_path / "data"), "--queue-memory-limit", str(limit))
    process = psutil.Process(broker.proc.pid)
    queue = unique("queue")
    consumer = Raw(broker.port)
    consumer.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "2"})
    baseline = process.memory_info().rss
    body = b"b" * 256 * 1024
    n = 200 * 1024 * 1024 // len(body)
    peak = 0
    producer = Raw(broker.port)
    window = 16
    for i in range(n):
        producer.send(
            "SEND",
            {"destination": queue, "persistent": "true", "seq": str(i), "receipt": str(i)},
            body,
        )
        if i >= window:
            assert producer.recv().command == "RECEIPT"
        if i % 50 == 0:
            peak = max(peak, process.memory_info().rss)
    for _ in range(min(window, n)):
        assert producer.recv().command == "RECEIPT"
    peak = max(peak, process.memory_info().rss)
    got = []
    while len(got) < n:  # the slow consumer catches up
        frame = consumer.recv()
        got.append(int(frame.headers["seq"]))
        consumer.send("ACK", {"id": frame.headers["ack"]})
        if len(got) % 50 == 0:
            peak = max(peak, process.memory_info().rss)
    assert got == list(range(n))  # every message, in order
    assert consumer.sync() == []
    margin = 48 * 1024 * 1024
    print(f"RSS: baseline {baseline / 2**20:.0f} MiB, peak {peak / 2**20:.0f} MiB")
    assert peak < baseline + limit + margin, (baseline, peak)


# --------------------------------------------------------------------------- statistics


def _stats(port: int) -> dict[str, object]:
    from swf_testbed.broker.admin import request_stats

    return request_stats(HOST, port)


def test_stats_from_the_command_line(new_broker: Callable[..., BrokerProc], tmp_path: Path) -> None:
    broker = new_broker("--data-dir", str(tmp_path / "data"))
    queue = unique("queue")
    _receipted_sends(Raw(broker.port), queue, [b"one", b"two"])
    out = subprocess.run(
        [sys.executable, "-m", "swf_testbed.broker", "--stats", "--port", str(broker.port)],
        capture_output=True,
        timeout=60,
        check=True,
    )
    stats = json.loads(out.stdout)
    assert stats["queues"][queue[len("/queue/") :]]["messages"] == 2
    assert stats["journal"]["bytes"] > 0
    assert stats["rss_bytes"] > 0 and stats["held_bytes"] > 0


def test_the_journal_is_on_by_default_under_swf_home(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "home"
    env = {**os.environ, "SWF_HOME": str(home)}
    log = tmp_path / "broker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swf_testbed.broker", "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for_port(HOST, port, 20, proc)
        _receipted_sends(Raw(port), unique("queue"), [b"kept"])
        assert list((home / "broker" / str(port) / "journal").glob("*.seg"))
    finally:
        proc.kill()
        proc.wait(10)


def test_memory_only_keeps_nothing(new_broker: Callable[..., BrokerProc]) -> None:
    broker = new_broker("--memory-only")
    assert _stats(broker.port)["journal"] is None


def test_paging_and_the_journal_in_the_prometheus_metrics(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    import urllib.request

    metrics_port = free_port()
    broker = new_broker(
        "--data-dir",
        str(tmp_path / "data"),
        "--queue-memory-limit",
        str(LIMIT),
        "--metrics-port",
        str(metrics_port),
    )
    queue = unique("queue")
    _receipted_sends(Raw(broker.port), queue, [b"p" * 64 * 1024] * 40)
    wait_for_port(HOST, metrics_port, 20, broker.proc)
    with urllib.request.urlopen(f"http://{HOST}:{metrics_port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("swf_broker_")
    }
    label = f'{{destination="{queue}"}}'
    assert values[f"swf_broker_queue_depth{label}"] == 40
    assert values[f"swf_broker_queue_paged{label}"] > 20
    assert 0 < values[f"swf_broker_queue_bytes{label}"] <= LIMIT
    assert values["swf_broker_journal_bytes"] > 40 * 64 * 1024

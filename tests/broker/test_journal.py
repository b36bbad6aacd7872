"""The broker with a journal (``--data-dir``): persistent queue messages survive kill -9."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tests.broker.conftest import BrokerProc, Raw, unique


def _send(producer: Raw, queue: str, bodies: list[bytes], persistent: bool = True) -> None:
    for body in bodies:  # each SEND's RECEIPT comes only once the message is on disk
        producer.receipt(
            "SEND", {"destination": queue, "persistent": "true" if persistent else "false"}, body
        )


def test_confirmed_persistent_messages_survive_kill_9_in_order_and_redelivered(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    queue, other = unique("queue"), unique("queue")
    producer = Raw(first.port)
    persistent = [b"p%d" % i for i in range(50)]
    _send(producer, queue, persistent[:25])
    _send(producer, queue, [b"not persistent"], persistent=False)
    _send(producer, queue, persistent[25:])
    _send(producer, other, [b"other queue"])
    first.proc.kill()  # SIGKILL: no flush, no goodbye
    first.proc.wait(10)

    second = new_broker("--data-dir", str(data))
    consumer = Raw(second.port)
    consumer.subscribe(queue)
    frames = consumer.messages(len(persistent))
    assert [
        f.body for f in frames
    ] == persistent  # in their original order; the non-persistent one is gone
    assert all(f.headers.get("redelivered") == "true" for f in frames)
    assert consumer.sync() == []  # nothing else, nothing twice
    elsewhere = Raw(second.port)
    elsewhere.subscribe(other, sid="s2")
    assert [f.body for f in elsewhere.messages(1)] == [b"other queue"]


def test_acknowledged_messages_are_not_replayed(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    queue = unique("queue")
    _send(Raw(first.port), queue, [b"m%d" % i for i in range(10)])
    consumer = Raw(first.port)
    consumer.subscribe(queue, ack="client-individual", **{"activemq.prefetchSize": "4"})
    frames = consumer.messages(4)
    for frame in frames[:3]:  # the 4th stays unacknowledged
        consumer.send("ACK", {"id": frame.headers["ack"]})
    # its RECEIPT comes after the fsync that holds the ACKs (and the next deliveries, unacked)
    consumer.sync()
    first.proc.kill()
    first.proc.wait(10)

    second = new_broker("--data-dir", str(data))
    again = Raw(second.port)
    again.subscribe(queue)
    assert [f.body for f in again.messages(7)] == [b"m%d" % i for i in range(3, 10)]
    assert again.sync() == []


def test_auto_acknowledged_deliveries_are_done_and_not_replayed(
    new_broker: Callable[..., BrokerProc], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    first = new_broker("--data-dir", str(data))
    queue = unique("queue")
    consumer = Raw(first.port)
    consumer.subscribe(queue)  # auto: delivered is consumed
    producer = Raw(first.port)
    _send(producer, queue, [b"x" * 1000 + b"%d" % i for i in range(200)])
    consumer.messages(200)
    # a message of its own afterwards, so that the auto-acks before it are committed
    # by its RECEIPT's fsync
    _send(producer, unique("queue"), [b"marker"])
    first.proc.kill()
    first.proc.wait(10)
    second = new_broker("--data-dir", str(data))
    probe = Raw(second.port)
    probe.subscribe(queue)
    assert probe.sync() == []  # none of the 200 comes back

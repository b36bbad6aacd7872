"""Mirrored queues of the embedded broker (``VirtualTopic.Mirror.<queue>``, on by default).

Both brokers' shared behaviour is in tests/integration/test_broker_conformance.py;
these are the embedded broker's details: transactions, redeliveries, the
option that turns it off.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

from tests.broker.conftest import BrokerProc, Raw, unique


def _mirror_of(queue: str) -> str:
    return "/topic/VirtualTopic.Mirror." + queue.removeprefix("/queue/")


def test_a_queue_message_is_mirrored_and_still_waits_in_its_queue(raw: Callable[..., Raw]) -> None:
    queue = unique("queue")
    watcher = raw()
    watcher.subscribe(_mirror_of(queue))
    producer = raw()
    producer.receipt("SEND", {"destination": queue, "msg_id": "a-1"}, b"payload")
    [copy] = watcher.messages(1)
    assert copy.headers["destination"] == _mirror_of(queue)
    assert copy.headers["msg_id"] == "a-1" and copy.body == b"payload"
    assert "redelivered" not in copy.headers

    consumer = raw()  # subscribes after the copy went out: the queue kept the message for it
    consumer.subscribe(queue)
    [original] = consumer.messages(1)
    assert original.headers["destination"] == queue and original.body == b"payload"
    assert original.headers["message-id"] == copy.headers["message-id"]


def test_mirror_copies_follow_the_send_not_the_redeliveries(raw: Callable[..., Raw]) -> None:
    """A transacted SEND is mirrored at COMMIT (never when aborted).

    A NACKed redelivery is not mirrored again.
    """
    queue = unique("queue")
    watcher = raw()
    watcher.subscribe(_mirror_of(queue))
    producer = raw()
    for tx, body, end in (("t1", b"aborted", "ABORT"), ("t2", b"committed", "COMMIT")):
        producer.send("BEGIN", {"transaction": tx})
        producer.send("SEND", {"destination": queue, "transaction": tx}, body)
        assert watcher.sync() == []  # nothing before the transaction ends
        producer.receipt(end, {"transaction": tx})
    [copy] = watcher.messages(1)
    assert copy.body == b"committed"

    consumer = raw()
    consumer.subscribe(queue, ack="client-individual")
    [first] = consumer.messages(1)
    consumer.send("NACK", {"id": first.headers["ack"]})
    [again] = consumer.messages(1)
    assert again.headers.get("redelivered") == "true" and again.body == b"committed"
    assert watcher.sync() == []  # the redelivery is not a new message


def test_wildcard_subscription_sees_every_queue_and_temporary_queues_are_not_mirrored(
    raw: Callable[..., Raw],
) -> None:
    queues = [unique("queue") for _ in range(3)]
    watcher = raw()
    watcher.subscribe("/topic/VirtualTopic.Mirror.>")
    producer = raw()
    producer.receipt("SEND", {"destination": f"/temp-queue/{uuid.uuid4().hex}"}, b"temporary")
    for i, queue in enumerate(queues):
        producer.receipt("SEND", {"destination": queue}, b"%d" % i)
    got = watcher.sync()
    assert not [f for f in got if "temp-queue" in f.headers.get("destination", "")]
    mine = [f for f in got if f.headers.get("destination") in {_mirror_of(q) for q in queues}]
    assert [f.headers["destination"] for f in mine] == [_mirror_of(q) for q in queues]
    assert [f.body for f in mine] == [b"0", b"1", b"2"]


def test_no_mirror_queues_turns_the_mirror_off(new_broker: Callable[..., BrokerProc]) -> None:
    b = new_broker("--no-mirror-queues")
    queue = unique("queue")
    watcher = Raw(b.port)
    exact = Raw(b.port)
    try:
        watcher.subscribe("/topic/VirtualTopic.Mirror.>")
        exact.subscribe(_mirror_of(queue))
        producer = Raw(b.port)
        producer.receipt("SEND", {"destination": queue}, b"unmirrored")
        assert watcher.sync() == [] and exact.sync() == []
        consumer = Raw(b.port)
        consumer.subscribe(queue)
        assert [f.body for f in consumer.messages(1)] == [b"unmirrored"]
    finally:
        watcher.close()
        exact.close()

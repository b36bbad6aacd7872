"""Our client against real brokers: acknowledgement, confirmed sends, duplicates.

* ``ack_all``: exactly what was handled is acknowledged;
* confirmed sends: a persistent send is done once the broker's receipt is in; unconfirmed
  ones are kept (a bounded window) and sent again after a reconnect;
* duplicates: a message handled once (by ``msg_id``) is not handed over again, whether the
  broker holds a second copy of it or redelivers it after the connection dropped.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from swf_testbed.mq import BrokerClient, BrokerUnavailable, Queue, SendRefused, Topic
from swf_testbed.mq.client import Delivery
from swf_testbed.testing.brokers import BrokerProcess, start_embedded
from swf_testbed.testing.faultproxy import FaultProxy
from tests.support.agents import EchoAgent, stf_ready
from tests.support.collect import Collector, eventually


class _Inbox:
    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self.cond = threading.Condition()

    def __call__(self, delivery: Delivery) -> None:
        with self.cond:
            self.deliveries.append(delivery)
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 60.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.deliveries) < n:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"{len(self.deliveries)} of {n} messages received"
                self.cond.wait(remaining)
            return list(self.deliveries)


@pytest.mark.parametrize("mode", ["client", "client-individual"])
def test_ack_all_acknowledges_the_handled_deliveries_and_no_later_one(
    any_broker: BrokerProcess, mode: str
) -> None:
    queue = Queue(f"swf.test.acks.{uuid.uuid4().hex[:8]}")
    bodies = [f"message {i}".encode() for i in range(6)]
    with BrokerClient(any_broker.settings(), client_name="ack-sender").start() as sender:
        for body in bodies:
            sender.send(queue, body)
    first = BrokerClient(any_broker.settings(), client_name="ack-first").start()
    inbox = _Inbox()
    first.subscribe(queue, inbox, ack=mode, prefetch=10)
    received = inbox.wait_for(6)
    assert [d.body for d in received] == bodies
    assert first.ack_all(received[:4]) == 4  # handled: the first four
    first.close()  # the other two were delivered, not acknowledged: the broker must redeliver them

    second = BrokerClient(any_broker.settings(), client_name="ack-second").start()
    again = _Inbox()
    second.subscribe(queue, again, ack="client-individual")
    redelivered = again.wait_for(2)
    # delivered before on the first connection: both brokers say so, and the client counts it
    assert [d.redelivered for d in redelivered] == [True, True]
    assert second.stats()["redelivered"] == 2
    assert second.ack_all(redelivered) == 2
    with BrokerClient(any_broker.settings(), client_name="ack-sender").start() as sender:
        sender.send(queue, b"sentinel")  # after it, nothing else may come
    assert [d.body for d in again.wait_for(3)] == [*bodies[4:], b"sentinel"]
    second.ack_all(again.deliveries[2:])
    second.close()


def test_ack_all_skips_deliveries_of_an_earlier_connection(embedded_broker: BrokerProcess) -> None:
    queue = Queue(f"swf.test.acks.{uuid.uuid4().hex[:8]}")
    client = BrokerClient(embedded_broker.settings(), client_name="ack-gen").start()
    inbox = _Inbox()
    client.subscribe(queue, inbox, ack="client")
    client.send(queue, b"one")
    delivery = inbox.wait_for(1)[0]
    stale = Delivery(
        delivery.subscription, delivery.headers, delivery.body, delivery.generation - 1
    )
    assert client.ack_all([stale]) == 0
    assert client.ack_all([delivery]) == 1
    client.close()


# --------------------------------------------------------------------------- confirmed sends


def _queue() -> Queue:
    return Queue(f"swf.test.confirm.{uuid.uuid4().hex[:8]}")


class _Acking(_Inbox):
    """An inbox on a client-individual subscription that acknowledges what it is handed."""

    def __init__(self) -> None:
        super().__init__()
        self.client: BrokerClient | None = None

    def __call__(self, delivery: Delivery) -> None:
        super().__call__(delivery)
        assert self.client is not None
        self.client.ack(delivery)


def _acking_consumer(broker: BrokerProcess, queue: Queue) -> tuple[BrokerClient, _Acking]:
    client = BrokerClient(broker.settings(), client_name="confirm-consumer").start()
    inbox = _Acking()
    inbox.client = client
    client.subscribe(queue, inbox, ack="client-individual")
    return client, inbox


def test_a_persistent_send_is_done_once_the_broker_confirmed_it(any_broker: BrokerProcess) -> None:
    queue = _queue()
    with BrokerClient(any_broker.settings(), client_name="confirm-sender").start() as sender:
        sent = sender.send(queue, stf_ready("confirm", "a.stf"))
        assert sent is not None and sent.confirmed and sent.attempts == 1
        assert sender.send(queue, b"not persistent", persistent=False) is None  # no receipt asked
        assert sender.stats()["confirmed"] == 1 and sender.unconfirmed == 0
        later = sender.send(queue, b"async", wait=False)
        assert later is not None and later.wait(30)
        assert sender.stats()["confirmed"] == 2
    consumer, inbox = _acking_consumer(any_broker, queue)
    # (ActiveMQ may deliver a non-persistent message ahead of persistent ones: no order here)
    assert sorted(d.body for d in inbox.wait_for(3)[1:]) == [b"async", b"not persistent"]
    consumer.close()


def test_sends_block_only_when_the_window_is_full_and_unconfirmed_ones_are_resent(
    any_broker: BrokerProcess,
) -> None:
    """Receipts held up (a black-holed connection): three sends go out without waiting, the
    fourth finds the window full; after the reconnect the three are sent again and confirmed."""
    queue = _queue()
    with FaultProxy(any_broker.host, any_broker.port) as proxy:
        sender = BrokerClient(
            any_broker.settings(host=proxy.host, port=proxy.port),
            client_name="window",
            send_window=3,
        ).start()
        try:
            proxy.stall()
            messages = [stf_ready("window", f"{i}.stf") for i in range(3)]
            pending = [sender.send(queue, m, wait=False, timeout=5) for m in messages]
            assert all(p is not None and not p.done.is_set() for p in pending)
            assert sender.unconfirmed == 3
            with pytest.raises(BrokerUnavailable, match="await the broker's receipts"):
                sender.send(queue, stf_ready("window", "3.stf"), wait=False, timeout=0.5)
            proxy.cut()  # what it held never reached the broker
            proxy.restore()
            for p in pending:
                assert p is not None and p.wait(30), "not confirmed after the reconnect"
                assert p.attempts >= 2  # written once, then again on the new connection
            stats = sender.stats()
            assert stats["resent"] >= 3 and stats["reconnects"] >= 1 and stats["unconfirmed"] == 0
            sender.send(queue, b"sentinel")
        finally:
            sender.close()
    consumer, inbox = _acking_consumer(any_broker, queue)
    got = inbox.wait_for(4)
    # each once (the copies written into the black hole never reached the broker), in their order
    assert [d.msg_id for d in got[:3]] == [m.msg_id for m in messages], [d.body for d in got]
    assert got[3].body == b"sentinel"
    consumer.close()


# --------------------------------------------------------------------------- duplicates


def test_a_message_the_broker_holds_twice_is_handled_once(any_broker: BrokerProcess) -> None:
    """A resend whose first copy reached the broker: two copies, one msg_id, handled once."""
    queue = _queue()
    twice = stf_ready("dup", "twice.stf")
    with BrokerClient(any_broker.settings(), client_name="dup-sender").start() as sender:
        sender.send(queue, twice)
        sender.send(queue, twice)  # the same message again: what a resend after a lost receipt is
        sender.send(queue, stf_ready("dup", "other.stf"))
        sender.send(queue, b"sentinel")
    consumer, inbox = _acking_consumer(any_broker, queue)
    got = inbox.wait_for(3)
    assert [d.msg_id for d in got[:2]] == [twice.msg_id, got[1].msg_id] and got[
        2
    ].body == b"sentinel"
    assert got[1].msg_id != twice.msg_id
    assert consumer.stats()["duplicates"] == 1
    consumer.close()
    # the duplicate was acknowledged, not left on the queue
    again, inbox2 = _acking_consumer(any_broker, queue)
    with BrokerClient(any_broker.settings(), client_name="dup-sender").start() as sender:
        sender.send(queue, b"second sentinel")
    assert [d.body for d in inbox2.wait_for(1)] == [b"second sentinel"]
    again.close()


def test_a_redelivered_copy_of_a_message_in_hand_waits_for_it_and_is_not_handled_twice(
    any_broker: BrokerProcess,
) -> None:
    """The connection drops while a message is being handled: the broker redelivers it on the
    new connection, where its ACK must go; the copy waits, and is acknowledged once the first
    is handled, instead of being handled a second time."""
    queue = _queue()
    msg = stf_ready("inhand", "in-hand.stf")
    with FaultProxy(any_broker.host, any_broker.port) as proxy:
        consumer = BrokerClient(
            any_broker.settings(host=proxy.host, port=proxy.port), client_name="inhand"
        ).start()
        inbox = _Inbox()  # holds what it gets, acknowledges nothing by itself
        consumer.subscribe(queue, inbox, ack="client-individual")
        with BrokerClient(any_broker.settings(), client_name="inhand-sender").start() as sender:
            sender.send(queue, msg)
            first = inbox.wait_for(1)[0]
            assert not first.redelivered
            proxy.cut()
            proxy.restore()
            deadline = time.monotonic() + 60
            while consumer.stats()["redelivered"] < 1:
                assert time.monotonic() < deadline, "the broker did not redeliver the message"
                time.sleep(0.05)
            assert len(inbox.deliveries) == 1  # the copy was not handed over
            assert consumer.ack(first)  # handled: its copy is acknowledged on the new connection
            sender.send(queue, b"sentinel")
            got = inbox.wait_for(2)
            assert [d.msg_id for d in got] == [msg.msg_id, ""] and got[1].body == b"sentinel"
            assert consumer.ack(got[1])
            assert consumer.stats()["duplicates"] == 1
        consumer.close()
    # nothing left on the queue
    again, inbox2 = _acking_consumer(any_broker, queue)
    with BrokerClient(any_broker.settings(), client_name="inhand-sender").start() as sender:
        sender.send(queue, b"second sentinel")
    assert [d.body for d in inbox2.wait_for(1)] == [b"second sentinel"]
    again.close()


def test_an_agent_does_not_handle_a_resent_message_twice(any_broker: BrokerProcess) -> None:
    """The agent runtime on top of it: the same stf_ready twice (one msg_id) → one reply."""
    tag = uuid.uuid4().hex[:8]
    ns, topic, out = f"dup{tag}", f"in.{tag}", f"out.{tag}"
    settings = any_broker.settings()
    watch = Collector(settings, Topic(out))
    agent = EchoAgent("echo", ns, topic=topic, reply_topic=out, broker=settings).start()
    try:
        twice = stf_ready(ns, "twice.stf")
        with BrokerClient(settings, client_name="dup-sender").start() as sender:
            sender.send(Topic(topic), twice)
            sender.send(Topic(topic), twice)
            sender.send(Topic(topic), stf_ready(ns, "sentinel.stf"))
        watch.wait_for(
            lambda ms: any(getattr(m, "filename", "") == "sentinel.stf" for m in ms),
            what="the sentinel's reply",
        )
        assert agent.seen == ["twice.stf", "sentinel.stf"]
        assert sorted(getattr(m, "filename", "") for m in watch.messages) == [
            "sentinel.stf",
            "twice.stf",
        ]
        assert agent.client.stats()["duplicates"] == 1
    finally:
        agent.shutdown()
        watch.close()


def test_a_send_the_broker_refuses_raises_and_is_not_sent_again() -> None:
    """The embedded broker refuses a non-persistent message past a queue's memory limit with an
    ERROR naming the send's receipt: the send raises SendRefused, and after the reconnect the
    refused message is not sent again (a persistent one past the limit is kept, in the journal)."""
    broker = start_embedded(args=["--queue-memory-limit", "1000"])
    try:
        queue = _queue()
        with BrokerClient(broker.settings(), client_name="refused").start() as sender:
            sender.send(queue, b"x" * 600, persistent=False, receipt=True)
            with pytest.raises(SendRefused, match="is full"):
                sender.send(queue, b"y" * 600, persistent=False, receipt=True)
            assert sender.stats()["refused"] == 1
            # the broker closes the connection after its ERROR: a send racing that close is
            # rightly sent again, so the next send waits for the new connection
            eventually(lambda: sender.reconnects >= 1 and sender.connected, what="the reconnect")
            sender.send(queue, b"z" * 600)  # persistent: accepted past the limit (journaled)
            assert sender.stats()["resent"] == 0
        consumer, inbox = _acking_consumer(broker, queue)
        assert [d.body[:1] for d in inbox.wait_for(2)] == [b"x", b"z"]
        with BrokerClient(broker.settings(), client_name="refused").start() as sender:
            sender.send(queue, b"sentinel")
        assert [d.body[:1] for d in inbox.wait_for(3)] == [b"x", b"z", b"s"]
        consumer.close()
    finally:
        broker.stop()

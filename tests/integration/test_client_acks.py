"""Our client's batch acknowledgement (``ack_all``) against real brokers: exactly what was handled is acknowledged."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from swf_testbed.mq import BrokerClient, Queue
from swf_testbed.mq.client import Delivery
from swf_testbed.testing.brokers import BrokerProcess


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

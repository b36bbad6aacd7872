"""The project's client on RabbitMQ: what the ``rabbitmq`` destination style changes.

RabbitMQ's STOMP plugin differs from ActiveMQ Classic in the places these
tests cover: the trailing wildcard is ``#``, a durable topic subscription is a
durable queue bound to the topic (removed by one UNSUBSCRIBE with
``durable:true``), and queues are not mirrored to topics, so the client sends
the copy the monitor reads. The broker conformance suite and the pipeline run
on RabbitMQ too (``every_broker``); these are the client's own parts.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from swf_testbed.mq.client import BrokerClient, Delivery
from swf_testbed.mq.destinations import Queue, Topic, mirror_topic
from swf_testbed.settings import QueueMirror
from swf_testbed.testing.brokers import BrokerProcess

pytestmark = [pytest.mark.rabbitmq, pytest.mark.timeout(60)]

WAIT_S = 15.0


class Inbox:
    """Bodies received by one subscription, with a way to wait for them."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._cond = threading.Condition()

    def __call__(self, delivery: Delivery) -> None:
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()

    @property
    def bodies(self) -> list[bytes]:
        with self._cond:
            return [d.body for d in self.deliveries]

    def wait_for(self, body: bytes) -> list[bytes]:
        """Every body up to and including ``body`` (a sentinel sent last)."""
        with self._cond:
            ok = self._cond.wait_for(lambda: body in [d.body for d in self.deliveries], WAIT_S)
            got = [d.body for d in self.deliveries]
        assert ok, f"{body!r} did not arrive in {WAIT_S:g} s; got {got}"
        return got


@pytest.fixture
def client(rabbitmq_broker: BrokerProcess) -> Iterator[BrokerClient]:
    with BrokerClient(rabbitmq_broker.settings(), client_name="rabbit-test") as made:
        yield made


def name(label: str) -> str:
    return f"swf.rabbit.{label}.{uuid.uuid4().hex[:12]}"


def test_the_style_sets_rabbitmqs_defaults(rabbitmq_broker: BrokerProcess) -> None:
    settings = rabbitmq_broker.settings(vhost="")
    assert settings.virtual_host == "/"
    assert settings.mirror is QueueMirror.CLIENT
    assert rabbitmq_broker.settings(queue_mirror="off").mirror is QueueMirror.OFF


def test_a_queue_message_is_mirrored_by_the_client_and_still_consumed_once(
    client: BrokerClient,
) -> None:
    queue = Queue(name("mirrored"))
    consumer, watcher = Inbox(), Inbox()
    client.subscribe(queue, consumer, ack="auto")
    client.subscribe(mirror_topic(queue), watcher, ack="auto")
    bodies = [b"slice %d" % i for i in range(5)] + [b"sentinel"]
    for body in bodies:
        client.send(queue, body)
    assert consumer.wait_for(b"sentinel") == bodies
    assert watcher.wait_for(b"sentinel") == bodies


def test_with_queue_mirror_off_nothing_is_copied(rabbitmq_broker: BrokerProcess) -> None:
    queue = Queue(name("unmirrored"))
    sentinel_topic = Topic(name("sentinel"))
    watcher = Inbox()
    settings = rabbitmq_broker.settings(queue_mirror="off")
    with BrokerClient(settings, client_name="rabbit-off") as client:
        client.subscribe(mirror_topic(queue), watcher, ack="auto")
        client.subscribe(sentinel_topic, watcher, ack="auto")
        client.send(queue, b"not copied")
        # the copy would have been sent right after the message, on the same connection
        client.send(sentinel_topic, b"sentinel", receipt=True)
        assert watcher.wait_for(b"sentinel") == [b"sentinel"]


def test_wildcard_subscription_uses_rabbitmqs_spelling(client: BrokerClient) -> None:
    base = name("wild")
    inbox = Inbox()
    client.subscribe(Topic(f"{base}.>"), inbox, ack="auto")
    for topic, body in [(f"{base}.a", b"one"), (f"{base}.b.c", b"two"), (f"{base}x.a", b"no")]:
        client.send(Topic(topic), body)
    client.send(Topic(f"{base}.z"), b"sentinel")
    assert inbox.wait_for(b"sentinel") == [b"one", b"two", b"sentinel"]
    assert [d.destination for d in inbox.deliveries] == [
        f"/topic/{base}.a",
        f"/topic/{base}.b.c",
        f"/topic/{base}.z",
    ]


def test_durable_subscription_keeps_messages_while_away_and_forget_removes_it(
    rabbitmq_broker: BrokerProcess,
) -> None:
    topic = Topic(name("durable"))
    client_id = f"rabbit-durable-{uuid.uuid4().hex[:8]}"
    settings = rabbitmq_broker.settings()
    with BrokerClient(settings, client_name="publisher") as publisher:
        with BrokerClient(settings, client_name="away", client_id=client_id) as away:
            away.subscribe(topic, Inbox(), durable=True)
        for i in range(3):
            publisher.send(topic, b"offline %d" % i, persistent=True)
        publisher.send(topic, b"sentinel", persistent=True, receipt=True)

        back = Inbox()
        with BrokerClient(settings, client_name="back", client_id=client_id) as again:
            sub = again.subscribe(topic, back, ack="auto", durable=True)
            assert back.wait_for(b"sentinel") == [
                b"offline 0",
                b"offline 1",
                b"offline 2",
                b"sentinel",
            ]
            again.unsubscribe(sub, forget=True)

        publisher.send(topic, b"after removal", persistent=True, receipt=True)
        fresh = Inbox()
        with BrokerClient(settings, client_name="fresh", client_id=client_id) as third:
            sub = third.subscribe(topic, fresh, ack="auto", durable=True)
            publisher.send(topic, b"sentinel 2", persistent=True)
            # the removed subscription's queue went with it: "after removal" was kept by nobody
            assert fresh.wait_for(b"sentinel 2") == [b"sentinel 2"]
            third.unsubscribe(sub, forget=True)


def test_a_nack_is_redelivered_by_rabbitmq(client: BrokerClient) -> None:
    assert client.nack_redelivers  # from the style, not from the server header
    queue = Queue(name("nack"))
    inbox = Inbox()
    first: list[Delivery] = []

    def handler(delivery: Delivery) -> None:
        inbox(delivery)
        if not first:
            first.append(delivery)
            client.nack(delivery)
        else:
            client.ack(delivery)

    client.subscribe(queue, handler, prefetch=1)
    client.send(queue, b"poison", persistent=True)
    client.send(queue, b"sentinel", persistent=True)
    got = inbox.wait_for(b"sentinel")
    assert got.count(b"poison") == 2, got
    assert [d.headers.get("redelivered") for d in inbox.deliveries if d.body == b"poison"] == [
        "false",
        "true",
    ]

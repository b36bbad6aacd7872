"""How each destination style spells names and SUBSCRIBE headers (no broker needed)."""

import pytest

from swf_testbed.mq.destinations import Queue, Topic, durable_headers, forget_frames
from swf_testbed.settings import BrokerSettings, DestinationStyle, QueueMirror

PREFIXED, ARTEMIS, RABBITMQ = (
    DestinationStyle.PREFIXED,
    DestinationStyle.ARTEMIS,
    DestinationStyle.RABBITMQ,
)


@pytest.mark.parametrize(
    ("name", "prefixed", "rabbitmq"),
    [
        ("swf.>", "/topic/swf.>", "/topic/swf.#"),
        (">", "/topic/>", "/topic/#"),
        ("swf.*.data", "/topic/swf.*.data", "/topic/swf.*.data"),
        ("swf.ns.data", "/topic/swf.ns.data", "/topic/swf.ns.data"),
    ],
)
def test_rabbitmq_spells_only_the_trailing_wildcard_differently(name, prefixed, rabbitmq):
    assert Topic(name).address(PREFIXED) == prefixed
    assert Topic(name).address(RABBITMQ) == rabbitmq
    assert Topic(name).address(ARTEMIS) == name


def test_prefetch_and_durable_headers_per_style():
    topic = Topic("swf.ns.data")
    assert topic.subscribe_headers(PREFIXED, prefetch=1, durable_name="ingest:swf.>") == {
        "activemq.prefetchSize": "1",
        "activemq.subscriptionName": "ingest:swf.>",
        "durable-subscription-name": "ingest:swf.>",
    }
    assert topic.subscribe_headers(RABBITMQ, prefetch=1, durable_name="ingest:swf.>") == {
        "prefetch-count": "1",
        "durable": "true",
        "auto-delete": "false",
        "x-queue-name": "swf.durable.ingest:swf.>",
    }
    assert Queue("swf.ns.slices").subscribe_headers(ARTEMIS) == {"subscription-type": "ANYCAST"}


def test_removing_a_durable_subscription_takes_two_frames_on_activemq_and_one_on_rabbitmq():
    assert forget_frames(PREFIXED, "n") == [{}, durable_headers(PREFIXED, "n")]
    assert forget_frames(RABBITMQ, "n") == [durable_headers(RABBITMQ, "n")]


def test_queue_mirror_and_virtual_host_follow_the_style_unless_set():
    assert BrokerSettings().mirror is QueueMirror.BROKER
    assert BrokerSettings().virtual_host == "127.0.0.1"
    rabbit = BrokerSettings(destination_style="rabbitmq")
    assert rabbit.mirror is QueueMirror.CLIENT
    assert rabbit.virtual_host == "/"
    assert BrokerSettings(destination_style="rabbitmq", queue_mirror="broker").mirror is (
        QueueMirror.BROKER
    )
    assert BrokerSettings(destination_style="rabbitmq", vhost="swf").virtual_host == "swf"

"""Messaging layer: destinations and the STOMP client every program uses."""

from swf_testbed.mq.client import (
    BrokerClient,
    BrokerUnavailable,
    Delivery,
    SendRefused,
    Sent,
    Subscription,
)
from swf_testbed.mq.destinations import Destination, Queue, Topic

__all__ = [
    "BrokerClient",
    "BrokerUnavailable",
    "Delivery",
    "Destination",
    "Queue",
    "SendRefused",
    "Sent",
    "Subscription",
    "Topic",
]

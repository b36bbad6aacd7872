"""Messaging layer: destinations and the STOMP client every program uses."""

from swf_testbed.mq.client import BrokerClient, BrokerUnavailable, SendRefused, Sent
from swf_testbed.mq.delivery import Delivery, Subscription
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

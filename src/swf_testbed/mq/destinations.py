"""Topics and queues as explicit types, and the testbed's destination names.

A topic fans out to every subscriber; a queue gives each message to one
subscriber (competing consumers). How they are spelled on the wire depends on
the broker (:class:`~swf_testbed.settings.DestinationStyle`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from swf_testbed.settings import DestinationStyle

_NAME = re.compile(r"^([A-Za-z0-9_\-]+|\*)(\.([A-Za-z0-9_\-]+|\*))*(\.>)?$|^>$")
"""Dot-separated elements; in a subscription ``*`` is one element and a final ``>`` the rest."""


@dataclass(frozen=True, slots=True)
class Destination:
    """A broker destination: a name and whether it is a topic or a queue."""

    name: str
    kind: Literal["topic", "queue"]

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(
                f"bad destination name {self.name!r}: dot-separated elements of letters, digits, "
                "'_' and '-' (a subscription may use '*' for one element, a final '>' for the rest)"
            )

    @property
    def is_topic(self) -> bool:
        return self.kind == "topic"

    def address(self, style: DestinationStyle = DestinationStyle.PREFIXED) -> str:
        """The destination header value for this broker style.

        RabbitMQ spells the trailing wildcard ``#`` (AMQP topic matching); ``*``
        is one element on every broker.
        """
        if style is DestinationStyle.ARTEMIS:
            return self.name
        name = self.name
        if style is DestinationStyle.RABBITMQ and (name == ">" or name.endswith(".>")):
            name = name[:-1] + "#"
        return f"/{self.kind}/{name}"

    def send_headers(self, style: DestinationStyle) -> dict[str, str]:
        if style is DestinationStyle.ARTEMIS:
            return {"destination-type": "MULTICAST" if self.is_topic else "ANYCAST"}
        return {}

    def subscribe_headers(
        self,
        style: DestinationStyle,
        *,
        prefetch: int | None = None,
        durable_name: str | None = None,
    ) -> dict[str, str]:
        """SUBSCRIBE headers for this broker style: routing type, prefetch, durability.

        A durable subscription is ActiveMQ's ``activemq.subscriptionName`` (with
        the connection's ``client-id``; the embedded broker reads the same),
        Artemis's ``durable-subscription-name``, and on RabbitMQ a durable,
        non-auto-deleted queue named after the subscription (``x-queue-name``),
        bound to the topic: it keeps the messages while the subscriber is away.
        """
        headers: dict[str, str] = {}
        if style is DestinationStyle.ARTEMIS:
            headers["subscription-type"] = "MULTICAST" if self.is_topic else "ANYCAST"
        if prefetch is not None:
            key = (
                "prefetch-count" if style is DestinationStyle.RABBITMQ else "activemq.prefetchSize"
            )
            headers[key] = str(prefetch)
        if durable_name:
            headers.update(durable_headers(style, durable_name))
        return headers

    @classmethod
    def parse(cls, text: str) -> Destination:
        """``/topic/x`` or ``/queue/x`` (also ``topic://x``, ``queue://x``)."""
        for kind in ("topic", "queue"):
            for prefix in (f"/{kind}/", f"{kind}://"):
                if text.startswith(prefix):
                    return cls(text[len(prefix) :], kind)
        raise ValueError(f"destination {text!r} must start with /topic/ or /queue/")

    def __str__(self) -> str:
        return f"/{self.kind}/{self.name}"


def Topic(name: str) -> Destination:  # noqa: N802 - reads as a type at call sites
    return Destination(name, "topic")


def Queue(name: str) -> Destination:  # noqa: N802 - reads as a type at call sites
    return Destination(name, "queue")


# --------------------------------------------------------------------------- testbed names

RUN_TOPIC = Topic("epictopic")
"""Run lifecycle broadcast by the DAQ simulator (the existing testbed's name)."""

HEARTBEAT_TOPIC = Topic("swf.heartbeats")
"""Agent heartbeats, all namespaces (the monitor and the orchestrator listen)."""

QUEUE_MIRROR_PREFIX = "VirtualTopic.Mirror."
"""The broker copies each message sent to queue Q to the topic ``VirtualTopic.Mirror.Q``.

ActiveMQ Classic's mirrored queues (``<broker useMirroredQueues="true">``,
default prefix) and the embedded broker (on by default) both do. A queue
message reaches one consumer only; the mirror is how the monitor sees it.
"""

MONITOR_TOPIC = Topic(QUEUE_MIRROR_PREFIX + ">")
"""The mirror topics of every queue (a wildcard): where the monitor sees queue traffic."""

ALL_TESTBED_TOPICS = (RUN_TOPIC, Topic("swf.>"), MONITOR_TOPIC)
"""Every topic of the testbed, all namespaces, and every queue's mirror (the ingest's topics)."""

DEAD_LETTER_QUEUE = Queue("swf.dead_letter")
"""Messages no handler could process after every allowed attempt."""


def durable_headers(style: DestinationStyle, durable_name: str) -> dict[str, str]:
    """The headers naming a durable subscription (SUBSCRIBE, and the UNSUBSCRIBE removing it)."""
    if style is DestinationStyle.RABBITMQ:
        return {
            "durable": "true",
            "auto-delete": "false",
            "x-queue-name": f"swf.durable.{durable_name}",
        }
    return {
        "activemq.subscriptionName": durable_name,  # ActiveMQ Classic, the embedded broker
        "durable-subscription-name": durable_name,  # Artemis
    }


def forget_frames(style: DestinationStyle, durable_name: str) -> list[dict[str, str]]:
    """The headers of each UNSUBSCRIBE that removes an attached durable subscription for good.

    ActiveMQ Classic (and the embedded broker) refuse to remove one in use:
    detach it first (plain UNSUBSCRIBE), then remove it by name. RabbitMQ
    removes it, queue and backlog, in the one UNSUBSCRIBE that carries
    ``durable:true``; after a plain one it would no longer know the id.
    """
    if style is DestinationStyle.RABBITMQ:
        return [durable_headers(style, durable_name)]
    return [{}, durable_headers(style, durable_name)]


def mirror_topic(queue: Destination) -> Destination:
    """The topic on which the broker mirrors ``queue``'s messages."""
    if queue.is_topic:
        raise ValueError(f"{queue} is a topic; only queues are mirrored")
    return Topic(QUEUE_MIRROR_PREFIX + queue.name)


def mirrored_queue(destination: str) -> str | None:
    """``/queue/Q`` for a mirror topic's address (``/topic/VirtualTopic.Mirror.Q``), else None.

    Both spellings a broker may use in a MESSAGE frame are understood:
    ``/topic/VirtualTopic.Mirror.Q`` and ``topic://VirtualTopic.Mirror.Q``;
    also the bare name (Artemis style).
    """
    for prefix in ("/topic/", "topic://", ""):
        if destination.startswith(prefix + QUEUE_MIRROR_PREFIX):
            name = destination[len(prefix) + len(QUEUE_MIRROR_PREFIX) :]
            return f"/queue/{name}" if name else None
    return None


def control_queue(namespace: str) -> Destination:
    """A namespace's workflow runner listens here for run_workflow / stop_workflow."""
    return Queue(f"swf.{namespace}.control")


def replies_topic(namespace: str) -> Destination:
    """workflow_started / workflow_completed / workflow_failed of a namespace."""
    return Topic(f"swf.{namespace}.replies")


def data_topic(namespace: str) -> Destination:
    """Data flow between the agents of a namespace (stf_ready, processing_complete, ...)."""
    return Topic(f"swf.{namespace}.data")


def slice_queue(namespace: str) -> Destination:
    """Work for the fast-processing workers of a namespace (competing consumers)."""
    return Queue(f"swf.{namespace}.slices")


def worker_topic(namespace: str) -> Destination:
    """Worker ramp up / down broadcasts of a namespace."""
    return Topic(f"swf.{namespace}.workers")


def logs_topic(namespace: str) -> Destination:
    """The log records of a namespace's agents (``log_batch``; the ingest records them)."""
    return Topic(f"swf.{namespace}.logs")

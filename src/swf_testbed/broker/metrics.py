"""Prometheus figures of the embedded broker, on an admin port (``broker --metrics-port``).

Read from :meth:`Broker.stats` at each scrape. The broker's state belongs to
its event loop: the scrape (on prometheus-client's HTTP thread) asks the loop
for a snapshot instead of reading the dictionaries while they change. Labels
are destination names (bounded by the testbed's topics and queues), never
message or connection ids. ``process_*`` (memory, CPU) comes from
prometheus-client's process collector.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from swf_testbed.broker.server import Broker

METRIC_NAMES = (
    "swf_broker_connections",
    "swf_broker_messages_in",
    "swf_broker_messages_out",
    "swf_broker_queue_depth",
    "swf_broker_consumers",
    "swf_broker_redeliveries",
    "swf_broker_held_bytes",
    "swf_broker_durable_messages",
    "swf_broker_durable_dropped",
    "swf_broker_queue_paged",
    "swf_broker_queue_bytes",
    "swf_broker_journal_bytes",
)
"""Every family this module exports (besides ``process_*``)."""


class BrokerCollector:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker

    def _snapshot(self) -> dict[str, Any]:
        loop = self.broker.loop

        async def take() -> dict[str, Any]:
            return self.broker.stats()

        return asyncio.run_coroutine_threadsafe(take(), loop).result(timeout=10)

    def describe(self) -> list[Metric]:
        return list(_families())

    def collect(self) -> Iterator[Metric]:
        stats = self._snapshot()
        (
            conns,
            msgs_in,
            msgs_out,
            depth,
            consumers,
            redeliveries,
            held,
            durable,
            dropped,
            paged,
            queue_bytes,
            journal_bytes,
        ) = _families()
        conns.add_metric([], stats["connections"])
        for dest, n in stats["messages_in"].items():
            msgs_in.add_metric([dest], n)
        for dest, n in stats["messages_out"].items():
            msgs_out.add_metric([dest], n)
        for name, queue in stats["queues"].items():
            depth.add_metric([f"/queue/{name}"], queue["messages"])
            consumers.add_metric([f"/queue/{name}"], queue["subscriptions"])
            paged.add_metric([f"/queue/{name}"], queue["paged"])
            queue_bytes.add_metric([f"/queue/{name}"], queue["bytes"])
        journal = stats["journal"]
        journal_bytes.add_metric([], journal["bytes"] if journal else 0)
        for name, n in stats["topics"].items():
            consumers.add_metric([f"/topic/{name}"], n)
        for name, n in stats["wildcard_topics"].items():
            consumers.add_metric([f"/topic/{name}"], n)
        redeliveries.add_metric([], stats["redeliveries"])
        held.add_metric([], stats["held_bytes"])
        by_topic: dict[str, list[int]] = {}
        for sub in stats["durable_subscriptions"].values():
            entry = by_topic.setdefault(f"/topic/{sub['topic']}", [0, 0])
            entry[0] += sub["messages"]
            entry[1] += sub["dropped"]
        for topic, (messages, lost) in by_topic.items():
            durable.add_metric([topic], messages)
            dropped.add_metric([topic], lost)
        yield from (
            conns,
            msgs_in,
            msgs_out,
            depth,
            consumers,
            redeliveries,
            held,
            durable,
            dropped,
            paged,
            queue_bytes,
            journal_bytes,
        )


def _families() -> tuple[Any, ...]:
    return (
        GaugeMetricFamily("swf_broker_connections", "Open STOMP connections"),
        CounterMetricFamily(
            "swf_broker_messages_in", "Messages sent to each destination", labels=["destination"]
        ),
        CounterMetricFamily(
            "swf_broker_messages_out",
            "Messages delivered to subscribers, by the destination "
            "they subscribed to (a wildcard pattern counts as one)",
            labels=["destination"],
        ),
        GaugeMetricFamily(
            "swf_broker_queue_depth",
            "Messages waiting in each queue (in memory and in the journal only)",
            labels=["destination"],
        ),
        GaugeMetricFamily(
            "swf_broker_consumers", "Subscriptions on each destination", labels=["destination"]
        ),
        CounterMetricFamily(
            "swf_broker_redeliveries",
            "Messages delivered again (NACK, or a consumer gone before its ACK)",
        ),
        GaugeMetricFamily(
            "swf_broker_held_bytes",
            "Message bytes the broker holds: queues, durable "
            "subscriptions, and what waits for slow connections",
        ),
        GaugeMetricFamily(
            "swf_broker_durable_messages",
            "Messages kept for durable subscriptions, by topic",
            labels=["destination"],
        ),
        CounterMetricFamily(
            "swf_broker_durable_dropped",
            "Messages dropped from full durable subscriptions, by topic",
            labels=["destination"],
        ),
        GaugeMetricFamily(
            "swf_broker_queue_paged",
            "Messages of each queue kept in the journal only (the queue is over its memory limit)",
            labels=["destination"],
        ),
        GaugeMetricFamily(
            "swf_broker_queue_bytes",
            "Message bytes each queue holds in memory (waiting or unacknowledged)",
            labels=["destination"],
        ),
        GaugeMetricFamily(
            "swf_broker_journal_bytes", "Bytes of the journal on disk (0: no journal)"
        ),
    )


def serve_metrics(broker: Broker, host: str, port: int) -> int:
    """Serve ``/metrics`` on ``host:port`` (0 = a free port) from a thread; returns the port."""
    registry = CollectorRegistry()
    registry.register(BrokerCollector(broker))
    ProcessCollector(registry=registry)
    server, _thread = start_http_server(port, host, registry=registry)
    return int(server.server_port)

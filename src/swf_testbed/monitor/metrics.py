"""Prometheus metrics of the monitor: ``/metrics`` on the web, and a metrics port on the ingest.

Two kinds, kept apart so that each figure is true where it is read:

* **From the tables** (:class:`TableCollector`, computed at each scrape of the
  web's ``/metrics``): messages by namespace and type, invalid messages by
  reason, agents by liveness, executions, runs, STF files and slices by status.
  They come from the database, so they are the same whichever web process
  answers, and they survive restarts. ``swf_messages_recorded_total`` is the
  row count of the message table: retention (``swf-testbed monitor prune``)
  lowers it, which Prometheus treats as a counter reset.
* **Of one process** (histograms and counters that only the process knows):
  the web's request latency by view (:data:`WEB_REGISTRY`), and the ingest's
  batch commit time, lag and outcomes (:data:`INGEST_REGISTRY`). The ingest
  is another process, often on another host: it serves its own registry on
  ``SWF_INGEST_METRICS_PORT`` (prometheus-client's small HTTP server), a second
  scrape target. That was chosen over prometheus-client's multiprocess mode,
  which needs a directory shared by the processes (one host) and wiped at each
  start, and cannot add the ingest's figures to a web on another machine.

No label holds an execution id, a run number or a message id: labels are
namespaces, message types, reasons, statuses, view names.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from inspect import iscoroutinefunction
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import ResolverMatch
from django.utils import timezone
from django.utils.decorators import sync_and_async_middleware
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

WEB_REGISTRY = CollectorRegistry()
"""What the web's ``/metrics`` serves: :class:`TableCollector`, request latency, stream clients."""

INGEST_REGISTRY = CollectorRegistry()
"""What the ingest's metrics port serves."""

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_LATENCY = Histogram(
    "swf_http_request_duration_seconds",
    "Time to answer an HTTP request of the monitor web, by view "
    "(until the response starts, for streams)",
    ["view", "method", "status"],
    registry=WEB_REGISTRY,
    buckets=_LATENCY_BUCKETS,
)

INGEST_BATCH_COMMIT = Histogram(
    "swf_ingest_batch_commit_seconds",
    "Time to record one batch of messages in one transaction, commit included",
    registry=INGEST_REGISTRY,
    buckets=_LATENCY_BUCKETS,
)
INGEST_LAG = Histogram(
    "swf_ingest_lag_seconds",
    "Per message: from its receipt off the broker to the commit of its batch",
    registry=INGEST_REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
INGEST_MESSAGES = Counter(
    "swf_ingest_messages",
    "Messages the ingest wrote, by outcome (stored, duplicate, invalid: stored with a reason)",
    ["outcome"],
    registry=INGEST_REGISTRY,
)


def observe_batch(received_at: Iterable[datetime], seconds: float, result: Any) -> None:
    """The ingest recorded a batch: its commit time, each message's lag, the outcomes."""
    INGEST_BATCH_COMMIT.observe(seconds)
    now = timezone.now()
    for when in received_at:
        INGEST_LAG.observe(max(0.0, (now - when).total_seconds()))
    INGEST_MESSAGES.labels("stored").inc(result.stored)
    INGEST_MESSAGES.labels("duplicate").inc(result.duplicates)
    INGEST_MESSAGES.labels("invalid").inc(result.invalid)


class TableCollector:
    """Figures counted in the monitor's tables at each scrape (true across processes)."""

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        from django.db import close_old_connections
        from django.db.models import Count, Sum

        from swf_testbed.monitor.api import models as m

        close_old_connections()
        recorded, invalid, agents, executions, runs, stf, slices = self._families()
        for row in (
            m.MessageCount.objects.filter(is_valid=True)
            .values("namespace", "msg_type")
            .annotate(n=Sum("count"))
            .order_by()
        ):
            if row["n"]:
                recorded.add_metric([row["namespace"], row["msg_type"]], row["n"])
        for reason_row in (
            m.WorkflowMessage.objects.filter(is_valid=False)
            .values("error_reason")
            .annotate(n=Count("id"))
            .order_by()
        ):
            invalid.add_metric([reason_row["error_reason"] or "unknown"], reason_row["n"])
        now = timezone.now()
        by_liveness = dict.fromkeys((str(x) for x in m.Liveness), 0)
        for agent in m.SystemAgent.objects.only(
            "operational_state", "last_heartbeat", "heartbeat_interval"
        ):
            state = str(agent.liveness(now))
            by_liveness[state] = by_liveness.get(state, 0) + 1
        for state, n in by_liveness.items():
            agents.add_metric([state], n)
        self._by_status(executions, m.WorkflowExecution, m.ExecutionStatus.values)
        ended = m.Run.objects.filter(end_time__isnull=False).count()
        runs.add_metric(["running"], m.Run.objects.count() - ended)
        runs.add_metric(["ended"], ended)
        self._by_status(stf, m.StfFile, m.FileStatus.values)
        self._by_status(slices, m.TFSlice, m.SliceStatus.values)
        yield from (recorded, invalid, agents, executions, runs, stf, slices)

    @staticmethod
    def _by_status(family: GaugeMetricFamily, model: Any, statuses: Iterable[str]) -> None:
        from django.db.models import Count

        counts = dict.fromkeys(statuses, 0)
        for row in model.objects.values("status").annotate(n=Count("pk")).order_by():
            counts[row["status"]] = row["n"]
        for status, n in counts.items():
            family.add_metric([status], n)

    @staticmethod
    def _families() -> tuple[Any, ...]:
        return (
            CounterMetricFamily(
                "swf_messages_recorded",
                "Valid messages in the message table, by namespace "
                "and msg_type (lowered by retention)",
                labels=["namespace", "msg_type"],
            ),
            CounterMetricFamily(
                "swf_messages_invalid",
                "Invalid messages in the message table (recorded with their reason), by reason",
                labels=["reason"],
            ),
            GaugeMetricFamily(
                "swf_agents", "Agents by liveness (from their last heartbeat)", labels=["liveness"]
            ),
            GaugeMetricFamily(
                "swf_workflow_executions", "Workflow executions by status", labels=["status"]
            ),
            GaugeMetricFamily(
                "swf_runs", "Runs: running (no end time yet) or ended", labels=["status"]
            ),
            GaugeMetricFamily("swf_stf_files", "STF files by status", labels=["status"]),
            GaugeMetricFamily("swf_tf_slices", "TF slices by status", labels=["status"]),
        )


class StreamCollector:
    """Clients of this web process's message stream."""

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily(
                "swf_stream_clients", "Message stream clients connected to this web process"
            )
        ]

    def collect(self) -> Iterator[Metric]:
        from swf_testbed.monitor.api import stream

        hub = stream.current_hub()
        yield GaugeMetricFamily(
            "swf_stream_clients",
            "Message stream clients connected to this web process",
            value=len(hub.clients) if hub else 0,
        )


_TABLES, _STREAMS = TableCollector(), StreamCollector()
WEB_REGISTRY.register(_TABLES)
WEB_REGISTRY.register(_STREAMS)


def exported_metric_names() -> set[str]:
    """Every metric family name the monitor (web and ingest) exports (for the dashboard's test)."""
    collectors: list[Any] = [
        HTTP_LATENCY,
        INGEST_BATCH_COMMIT,
        INGEST_LAG,
        INGEST_MESSAGES,
        _TABLES,
        _STREAMS,
    ]
    return {family.name for collector in collectors for family in collector.describe()}


def metrics_view(request: HttpRequest) -> HttpResponse:
    """``GET /metrics``: the Prometheus text format (anonymous
    when ``SWF_API_OPEN_READS`` is on).
    """
    from swf_testbed.monitor.api.permissions import reads_are_open

    if not reads_are_open() and not _logged_in(request):
        return HttpResponse("authentication required\n", status=401, content_type="text/plain")
    return HttpResponse(generate_latest(WEB_REGISTRY), content_type=CONTENT_TYPE_LATEST)


def _logged_in(request: HttpRequest) -> bool:
    header = request.headers.get("Authorization", "")
    if header:
        from rest_framework.authtoken.models import Token

        scheme, _, key = header.partition(" ")
        return (
            scheme.lower() == "token"
            and Token.objects.filter(key=key.strip(), user__is_active=True).exists()
        )
    return bool(request.user.is_authenticated)


def _view_name(request: HttpRequest) -> str:
    match: ResolverMatch | None = getattr(request, "resolver_match", None)
    if not match:
        return "unmatched"
    # a route without a name has only the private dotted path of its view to go by
    return match.view_name or match._func_path  # noqa: SLF001 -- no public name for unnamed routes


def _observe(request: HttpRequest, response: HttpResponse, started: float) -> None:
    HTTP_LATENCY.labels(
        _view_name(request),
        request.method if request.method in _METHODS else "other",
        f"{response.status_code // 100}xx",
    ).observe(time.perf_counter() - started)


_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


@sync_and_async_middleware
def request_latency(get_response: Callable[[HttpRequest], Any]) -> Callable[[HttpRequest], Any]:
    """Times every request by view name (a bounded set: the URL conf's names), method and status
    class.
    """
    if iscoroutinefunction(get_response):

        async def async_middleware(request: HttpRequest) -> HttpResponse:
            started = time.perf_counter()
            response: HttpResponse = await get_response(request)
            _observe(request, response, started)
            return response

        return async_middleware

    def middleware(request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response: HttpResponse = get_response(request)
        _observe(request, response, started)
        return response

    return middleware

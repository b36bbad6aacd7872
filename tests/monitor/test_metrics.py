"""Prometheus metrics after a run: the monitor web's ``/metrics``, the ingest's port, the embedded
broker's port.

Real processes: the embedded broker (with ``--metrics-port``), the ingest
(``SWF_INGEST_METRICS_PORT``) and the monitor web under uvicorn. Every scrape
is parsed with prometheus-client's own parser; the table figures must equal
what the monitor's tables hold.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import RUN_TOPIC
from swf_testbed.testing.brokers import free_port, start_embedded
from swf_testbed.testing.monitor import MonitorWebProcess

from .ingestlib import IngestProcess, database_url_of_tests, wait_for, wait_until_ingesting
from .test_stream import run_messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "swf-testbed.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, by (name, sorted labels); parsing fails the test on a malformed
    text.
    """
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def of(found: dict[Any, float], name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: value for (n, labels), value in found.items() if n == name}


@pytest.fixture
def stack() -> Iterator[dict[str, Any]]:
    broker_metrics = free_port()
    broker = start_embedded(args=["--metrics-port", str(broker_metrics)])
    ingest_metrics = free_port()
    ingest = IngestProcess(
        broker,
        "--client-id",
        f"metrics-{uuid.uuid4().hex[:8]}",
        env={"SWF_INGEST_METRICS_PORT": str(ingest_metrics)},
    ).start()
    web = MonitorWebProcess(database_url_of_tests()).start()
    client = BrokerClient(broker.settings(), client_name="metrics-test").start(wait=30)
    try:
        wait_until_ingesting(client, ingest)
        yield {
            "web": web,
            "client": client,
            "broker": f"http://127.0.0.1:{broker_metrics}/metrics",
            "ingest": f"http://127.0.0.1:{ingest_metrics}/metrics",
        }
    finally:
        client.close()
        web.stop()
        ingest.stop()
        broker.stop()


def test_after_a_run_the_metrics_equal_the_tables(stack: dict[str, Any]) -> None:
    from django.db.models import Count

    from swf_testbed.monitor.api import models as m

    ns = f"metrics-{uuid.uuid4().hex[:6]}"
    run = run_messages(ns, "exec-M", 7201, 6)
    for msg in run:
        stack["client"].send(RUN_TOPIC, msg)
    stack["client"].send(RUN_TOPIC, b"{not json")
    stack["client"].send(RUN_TOPIC, json.dumps({"msg_type": "no_such_type", "namespace": ns}))
    wait_for(
        lambda: (
            m.WorkflowMessage.objects.filter(namespace_id=ns).count() >= len(run)
            and m.WorkflowMessage.objects.filter(is_valid=False).count() >= 2
        ),
        60,
        "the run to be recorded",
    )

    base = stack["web"].url
    httpx.get(base + "/", timeout=30).raise_for_status()
    reply = httpx.get(base + "/metrics", timeout=30)
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    web = samples(reply.text)

    recorded = Counter(
        {
            (("msg_type", r["msg_type"]), ("namespace", r["namespace_id"] or "")): r["n"]
            for r in m.WorkflowMessage.objects.filter(is_valid=True)
            .values("namespace_id", "msg_type")
            .annotate(n=Count("id"))
        }
    )
    assert of(web, "swf_messages_recorded_total") == dict(recorded)
    assert of(web, "swf_messages_recorded_total")[(("msg_type", "stf_gen"), ("namespace", ns))] == 6
    invalid = {
        (("reason", r["error_reason"]),): r["n"]
        for r in m.WorkflowMessage.objects.filter(is_valid=False)
        .values("error_reason")
        .annotate(n=Count("id"))
    }
    assert of(web, "swf_messages_invalid_total") == invalid and sum(invalid.values()) == 2

    def by_status(name: str, model: Any, field: str = "status") -> None:
        exported = {
            dict(labels)["status"]: value for labels, value in of(web, name).items() if value
        }
        assert exported == {
            r[field]: r["n"] for r in model.objects.values(field).annotate(n=Count("pk"))
        }, name

    by_status("swf_workflow_executions", m.WorkflowExecution)
    by_status("swf_stf_files", m.StfFile)
    by_status("swf_tf_slices", m.TFSlice)
    assert (
        m.StfFile.objects.count() >= 6
    )  # the run's files were projected: the comparison above is not of zeros
    runs = of(web, "swf_runs")
    assert runs[(("status", "ended"),)] == m.Run.objects.filter(end_time__isnull=False).count()
    assert sum(runs.values()) == m.Run.objects.count() >= 1
    agents = of(web, "swf_agents")
    assert (
        sum(agents.values()) == m.SystemAgent.objects.count() >= 1
    )  # the probes' heartbeats made one

    again = samples(httpx.get(base + "/metrics", timeout=30).text)
    views = {
        dict(labels)["view"] for labels in of(again, "swf_http_request_duration_seconds_count")
    }
    assert {"metrics", "front:dashboard"} <= views
    assert not any(
        re.search(r"exec-|msg_id|7201", str(labels)) for (_, labels) in again
    )  # bounded labels

    ingest = samples(httpx.get(stack["ingest"], timeout=30).text)
    total = m.WorkflowMessage.objects.count()
    outcomes = {dict(k)["outcome"]: v for k, v in of(ingest, "swf_ingest_messages_total").items()}
    assert outcomes["stored"] == total and outcomes["invalid"] == 2
    assert of(ingest, "swf_ingest_batch_commit_seconds_count")[()] >= 1
    assert (
        of(ingest, "swf_ingest_lag_seconds_count")[()] == outcomes["stored"] + outcomes["duplicate"]
    )

    broker = samples(httpx.get(stack["broker"], timeout=30).text)
    assert (
        of(broker, "swf_broker_messages_in_total")[(("destination", "/topic/epictopic"),)]
        >= len(run) + 2
    )
    assert of(broker, "swf_broker_connections")[()] >= 2  # the ingest and this test
    assert sum(of(broker, "swf_broker_consumers").values()) >= 1
    assert sum(of(broker, "swf_broker_messages_out_total").values()) >= len(run)
    assert of(broker, "process_resident_memory_bytes")[()] > 0
    assert () in of(broker, "swf_broker_redeliveries_total") and () in of(
        broker, "swf_broker_held_bytes"
    )


def test_metrics_follow_the_open_reads_setting(client: Any) -> None:
    from django.contrib.auth.models import User
    from django.test import override_settings
    from rest_framework.authtoken.models import Token

    assert client.get("/metrics").status_code == 200
    with override_settings(SWF_API_OPEN_READS=False):
        assert client.get("/metrics").status_code == 401
        token = Token.objects.create(user=User.objects.create_user("prom", password="x" * 12)).key
        assert client.get("/metrics", HTTP_AUTHORIZATION=f"Token {token}").status_code == 200


def test_every_dashboard_query_names_an_exported_metric() -> None:
    from swf_testbed.broker.metrics import METRIC_NAMES
    from swf_testbed.monitor.metrics import exported_metric_names

    exported = exported_metric_names() | set(METRIC_NAMES) | {"process_resident_memory_bytes"}
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    ]
    assert len(queries) >= 10
    for query in queries:
        names = set(re.findall(r"\b((?:swf|process)_[a-z0-9_]+)", query))
        assert names, f"no metric in {query!r}"
        for name in names:
            base = re.sub(r"_(total|bucket|sum|count|created)$", "", name)
            assert name in exported or base in exported, f"{name} (in {query!r}) is not exported"

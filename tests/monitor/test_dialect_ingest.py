"""The ePIC v28 dialect through a real broker and the ingest process, into the real database.

A publisher speaking exactly like the v28 library (stomp.py, STOMP 1.1,
``client-id``, ``heart-beat: 30000,30000``, no msg_id) sends the wire
document's bodies; the ingest, reading naive times in Asia/Tokyo, records
them valid and projects them. Hostile bodies in the same stream are recorded
with their reason and cost nothing else. Run against both brokers; the
database is the tests' (SQLite, or PostgreSQL with ``DATABASE_URL``).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from swf_testbed.monitor.api import models as m
from swf_testbed.mq.client import BrokerClient
from swf_testbed.testing.brokers import BrokerProcess
from tests.support.v28 import V28Publisher, V28Run

from .ingestlib import IngestProcess, wait_for, wait_until_ingesting

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def ingest(any_broker: BrokerProcess) -> Iterator[IngestProcess]:
    proc = IngestProcess(
        any_broker,
        "--client-id",
        f"test-ingest-{uuid.uuid4().hex[:8]}",
        "--flush-ms",
        "50",
        env={"SWF_LEGACY_TIMEZONE": "Asia/Tokyo"},
    ).start()
    client = BrokerClient(any_broker.settings(), client_name=f"probe-{uuid.uuid4().hex[:6]}").start(
        wait=30
    )
    try:
        wait_until_ingesting(client, proc)
    finally:
        client.close()
    yield proc
    proc.kill()


def test_a_v28_run_through_the_broker_is_recorded_valid_and_projected(
    any_broker: BrokerProcess, ingest: IngestProcess
) -> None:
    tag = uuid.uuid4().int % 10**6
    run = V28Run(f"v28-{tag}", f"stf_datataking-alice-{tag:06d}", 200_000 + tag, stf_count=5)
    publisher = V28Publisher(any_broker, "workflow_runner-agent-alice-1")
    try:
        for body in run.lifecycle()[:2]:
            publisher.send("/topic/epictopic", body)
        # hostile bodies amid the run: each recorded with its reason, none costs anything else
        publisher.send("/topic/epictopic", {**run.slice(1, 0), "content": "not an object"})
        publisher.send("/topic/epictopic", {**run.start_run(), "run_id": "NaN"})
        publisher.send("/topic/epictopic", {**run.stf_gen(99), "simulation_tick": "1" * (1 << 20)})
        publisher.send("/topic/epictopic", "{not json")
        for body in run.lifecycle()[2:]:
            publisher.send("/topic/epictopic", body)
    finally:
        publisher.close()

    good = len(run.lifecycle())
    valid = m.WorkflowMessage.objects.filter(run_id=run.run_number, is_valid=True)
    wait_for(
        lambda: (
            valid.count() >= good
            and m.RunState.objects.filter(run_number=run.run_number, phase="ended").exists()
        ),
        90,
        f"{good} v28 messages of run {run.run_number}",
    )
    assert valid.count() == good
    assert set(valid.values_list("dialect", flat=True)) == {"epic-v28"}
    assert all(
        mid.startswith("mq:") for mid in valid.values_list("msg_id", flat=True)
    )  # the broker's message-id
    start = valid.get(msg_type="start_run")
    # 10:00:01 naive, read in Asia/Tokyo (UTC+9): 01:00:01 UTC
    assert start.sent_at == datetime.fromisoformat(run.time(1)).replace(tzinfo=UTC) - timedelta(
        hours=9
    )

    invalid = m.WorkflowMessage.objects.filter(
        is_valid=False, received_at__gte=start.received_at - timedelta(seconds=30)
    )
    wait_for(lambda: invalid.count() >= 4, 60, "the 4 hostile bodies")
    reasons = sorted(invalid.values_list("error_reason", flat=True))
    assert reasons == ["invalid_fields", "invalid_fields", "invalid_json", "too_large"]
    details = " ".join(invalid.values_list("validation_error", flat=True))
    assert (
        "content: must be a JSON object, not str" in details
        and "run_id: 'NaN' is not a run number" in details
    )

    row = m.Run.objects.get(run_number=run.run_number)
    assert row.execution_id == run.execution_id and row.namespace_id == run.namespace
    assert row.total_stf_files == 5 and m.StfFile.objects.filter(run=row).count() == 5
    assert list(
        m.SystemStateEvent.objects.filter(run_number=run.run_number)
        .order_by("timestamp")
        .values_list("event_type", "state")
    ) == [("run_imminent", "beam"), ("start_run", "run"), ("end_run", "run")]
    assert ingest.alive

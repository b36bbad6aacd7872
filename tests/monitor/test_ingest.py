"""The ingest as its own process, against the real brokers and the real database.

N messages published → N rows, exactly once: normally, when the ingest is
killed mid-batch and restarted, when the database is locked or its
connection is cut, and when the broker restarts.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, TypeVar

import pytest
import stomp
from django.db import connection

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import RUN_TOPIC, Destination, Queue, data_topic, slice_queue
from swf_testbed.testing.brokers import BrokerProcess, start_embedded

from .ingestlib import IngestProcess, recorded_through_sentinel, wait_for, wait_until_ingesting

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def client_for() -> Iterator[Any]:
    clients: list[BrokerClient] = []

    def make(broker: BrokerProcess) -> BrokerClient:
        client = BrokerClient(broker.settings(), client_name=f"test-{uuid.uuid4().hex[:6]}").start(
            wait=30
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ingests() -> Iterator[list[IngestProcess]]:
    started: list[IngestProcess] = []
    yield started
    for proc in started:
        proc.kill()


def _start(
    ingests: list[IngestProcess], broker: BrokerProcess, *args: str, **kw: Any
) -> IngestProcess:
    proc = IngestProcess(
        broker, "--client-id", f"test-ingest-{uuid.uuid4().hex[:8]}", *args, **kw
    ).start()
    ingests.append(proc)
    return proc


def _ours(prefix: str) -> int:
    return m.WorkflowMessage.objects.filter(msg_id__startswith=prefix).count()


_RunMessage = TypeVar("_RunMessage", bound=msgs.RunMessage)


def _run_msg(cls: type[_RunMessage], prefix: str, i: int, ns: str, **fields: Any) -> _RunMessage:
    return cls(
        msg_id=f"{prefix}{i:06d}",
        namespace=ns,
        sender="daq",
        execution_id=f"{ns}-exec",
        run_id=fields.pop("run_id", 4242),
        state="run",
        substate="physics",
        **fields,
    )


def _stf_gen(prefix: str, i: int, ns: str, run_id: int = 4242) -> msgs.StfGen:
    return _run_msg(
        msgs.StfGen,
        prefix,
        i,
        ns,
        run_id=run_id,
        filename=f"{prefix}.{i:06d}.stf",
        sequence=i,
        size_bytes=1000 + i,
        checksum="0a0b0c0d",
        tf_count=10,
        start="2026-01-01T00:00:00Z",
        end="2026-01-01T00:00:01Z",
    )


def _slice_result(
    prefix: str, i: int, ns: str, worker: str, slice_id: int | None = None
) -> msgs.SliceResult:
    return _run_msg(
        msgs.SliceResult,
        prefix,
        i,
        ns,
        slice_id=i if slice_id is None else slice_id,
        tf_filename=f"{prefix}.tf",
        worker_id=worker,
        status="completed",
        processing_time_s=0.1,
    )


# --------------------------------------------------------------------------- normal operation


def test_every_message_recorded_once_and_projected(
    any_broker: BrokerProcess, client_for: Any, ingests: list[IngestProcess]
) -> None:
    ns = f"ns{uuid.uuid4().hex[:6]}"
    prefix = f"t1-{uuid.uuid4().hex[:6]}-"
    ingest = _start(ingests, any_broker, "--flush-ms", "50")
    client = client_for(any_broker)
    wait_until_ingesting(client, ingest)

    sent: list[str] = []

    def send(dest: Destination, msg: msgs.Message) -> None:
        client.send(dest, msg)
        sent.append(msg.msg_id)

    send(RUN_TOPIC, _run_msg(msgs.RunImminent, prefix, 0, ns, run_conditions={"energy": 10}))
    send(RUN_TOPIC, _run_msg(msgs.StartRun, prefix, 1, ns))
    for i in range(2, 52):
        send(RUN_TOPIC, _stf_gen(prefix, i, ns))
    for i in range(52, 62):  # data flow on the namespace's topic
        send(
            data_topic(ns),
            _run_msg(
                msgs.StfReady,
                prefix,
                i,
                ns,
                filename=f"{prefix}.{i - 50:06d}.stf",
                url="file:///x",
                sequence=i - 50,
                size_bytes=1,
                checksum="00000001",
            ),
        )
    for i in range(62, 72):  # sent to a queue: reaches the monitor through the mirror topic
        send(
            slice_queue(ns),
            _run_msg(
                msgs.Slice,
                prefix,
                i,
                ns,
                slice_id=i,
                tf_filename=f"{prefix}.tf",
                stf_filename=f"{prefix}.000002.stf",
                tf_first=0,
                tf_last=9,
                tf_count=10,
            ),
        )
    for i in range(72, 82):
        send(data_topic(ns), _slice_result(prefix, i, ns, "worker-1", slice_id=i - 10))
    send(RUN_TOPIC, _run_msg(msgs.EndRun, prefix, 99, ns, total_stf_files=50))
    # bodies that are not valid messages are recorded too, never dropped
    client.send(RUN_TOPIC, b"{this is not json")
    client.send(
        RUN_TOPIC,
        json.dumps(
            {"msg_type": "no_such_type", "msg_id": f"{prefix}bad-1", "namespace": ns}
        ).encode(),
    )
    client.send(
        RUN_TOPIC,
        json.dumps(
            {
                "msg_type": "stf_gen",
                "msg_id": f"{prefix}bad-2",
                "namespace": ns,
                "sender": "daq",
                "<script>": "x",
            }
        ).encode(),
    )
    expected = len(sent) + 2  # bad-1, bad-2 (the non-JSON one has a broker-made id)

    for dest in (RUN_TOPIC, data_topic(ns), slice_queue(ns)):  # every path used above
        recorded_through_sentinel(
            lambda body, d=dest: client.send(d, body), 60, f"{dest}'s sentinel"
        )
    assert _ours(prefix) == expected
    stored = set(
        m.WorkflowMessage.objects.filter(msg_id__startswith=prefix).values_list("msg_id", flat=True)
    )
    assert stored == {*sent, f"{prefix}bad-1", f"{prefix}bad-2"}

    garbage = m.WorkflowMessage.objects.get(body="{this is not json")
    assert not garbage.is_valid and garbage.error_reason == "invalid_json"
    unknown = m.WorkflowMessage.objects.get(msg_id=f"{prefix}bad-1")
    assert (
        not unknown.is_valid
        and unknown.error_reason == "unknown_msg_type"
        and unknown.namespace_id == ns
    )
    invalid = m.WorkflowMessage.objects.get(msg_id=f"{prefix}bad-2")
    assert invalid.error_reason == "invalid_fields" and "filename" in invalid.validation_error

    slice_row = m.WorkflowMessage.objects.get(msg_id=f"{prefix}{62:06d}")
    assert slice_row.destination == str(slice_queue(ns))  # the original queue, not the mirror topic

    # projections
    run = m.Run.objects.get(run_number=4242)
    assert run.namespace_id == ns and run.execution_id == f"{ns}-exec" and run.end_time is not None
    assert run.run_conditions == {"energy": 10} and run.total_stf_files == 50
    assert m.StfFile.objects.filter(run=run).count() == 50
    assert m.StfFile.objects.filter(run=run, status="registered").count() == 10
    state = m.RunState.objects.get(run_number=4242)
    assert state.phase == "ended" and state.slices_created == 10 and state.slices_completed == 10
    assert list(
        m.SystemStateEvent.objects.filter(run_number=4242).values_list("event_type", flat=True)
    ) == ["run_imminent", "start_run", "end_run"]
    assert m.Worker.objects.get(worker_id="worker-1").slices_completed == 10
    assert m.SystemAgent.objects.filter(namespace_id="probe", instance_name="probe").exists()
    assert ingest.alive
    assert ingest.stop() == 0


def test_queue_message_of_a_plain_stomp_client_is_recorded_once_and_still_consumed(
    any_broker: BrokerProcess, client_for: Any, ingests: list[IngestProcess]
) -> None:
    """Not our client, no copy to the monitor: the broker's queue mirror is how the ingest sees it,
    and the queue's own consumer still receives every message."""
    ingest = _start(ingests, any_broker)
    wait_until_ingesting(client_for(any_broker), ingest)
    ns = f"ns{uuid.uuid4().hex[:6]}"
    prefix = f"tq-{uuid.uuid4().hex[:6]}-"
    queue = f"/queue/legacy.{uuid.uuid4().hex[:8]}"
    consumed: list[bytes] = []

    class Consumer(stomp.ConnectionListener):
        def on_message(self, frame: Any) -> None:
            consumed.append(frame.body)

    consumer = stomp.Connection([(any_broker.host, any_broker.port)], auto_decode=False)
    consumer.set_listener("consumer", Consumer())
    consumer.connect(wait=True)
    consumer.subscribe(queue, id="1", ack="auto")
    producer = stomp.Connection([(any_broker.host, any_broker.port)], auto_decode=False)
    producer.connect(wait=True)
    n = 10
    bodies = [_stf_gen(prefix, i, ns).to_bytes() for i in range(n)]
    try:
        for body in bodies:
            producer.send(queue, body, headers={"persistent": "true"})
        sentinel = recorded_through_sentinel(
            lambda body: producer.send(queue, body, headers={"persistent": "true"}), 60
        )
        wait_for(lambda: sentinel in consumed, 60, "the consumer to receive the sentinel")
        assert _ours(prefix) == n
        assert sorted(consumed) == sorted([*bodies, sentinel])
        rows = m.WorkflowMessage.objects.filter(msg_id__startswith=prefix)
        assert set(rows.values_list("destination", flat=True)) == {
            queue
        }  # the queue, not its mirror topic
        assert all(rows.values_list("is_valid", flat=True))
    finally:
        producer.disconnect()
        consumer.disconnect()


# --------------------------------------------------------------------------- crash


@pytest.mark.parametrize("via", ["topic", "queue"])
def test_killed_mid_batch_and_restarted_loses_and_duplicates_nothing(
    via: str, any_broker: BrokerProcess, client_for: Any, ingests: list[IngestProcess]
) -> None:
    ns = f"ns{uuid.uuid4().hex[:6]}"
    prefix = f"t2-{uuid.uuid4().hex[:6]}-"
    queue = Queue(f"swf.test.{uuid.uuid4().hex[:8]}")
    client_id = f"test-ingest-{uuid.uuid4().hex[:8]}"
    args = [
        "--client-id",
        client_id,
        "--batch-size",
        "50",
        "--flush-ms",
        "20",
        "--destination",
        str(queue),
    ]
    first = IngestProcess(any_broker, *args).start()
    ingests.append(first)
    client = client_for(any_broker)
    wait_until_ingesting(client, first)

    n = 3000
    dest = data_topic(ns) if via == "topic" else queue

    def publish() -> None:
        for i in range(n):
            msg = (
                _slice_result(prefix, i, ns, "worker-k")
                if i % 2
                else _stf_gen(prefix, i, ns, run_id=7000)
            )
            client.send(dest, msg)

    sender = threading.Thread(target=publish)
    sender.start()
    wait_for(lambda: _ours(prefix) >= 300, 60, "the first batches")
    first.kill()  # SIGKILL: no flush, no goodbye; part of a batch is in hand, unacknowledged
    killed_at = _ours(prefix)
    assert killed_at < n, "the ingest finished before it could be killed; the test proves nothing"
    sender.join()

    second = IngestProcess(any_broker, *args).start()
    ingests.append(second)
    wait_for(lambda: _ours(prefix) >= n, 90, f"all {n} messages after the restart")
    time.sleep(1.0)
    assert _ours(prefix) == n
    # projected exactly once too: a double projection would double the worker's counter
    assert m.Worker.objects.get(worker_id="worker-k").slices_completed == n // 2
    assert m.StfFile.objects.filter(run__run_number=7000).count() == n - n // 2
    assert second.stop() == 0


# --------------------------------------------------------------------------- database outages


def test_locked_sqlite_database_is_waited_out(
    activemq_broker: BrokerProcess, client_for: Any, ingests: list[IngestProcess]
) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("SQLite locking")
    prefix = f"t3-{uuid.uuid4().hex[:6]}-"
    ns = f"ns{uuid.uuid4().hex[:6]}"
    ingest = _start(ingests, activemq_broker, env={"SWF_SQLITE_BUSY_TIMEOUT_S": "0.2"})
    client = client_for(activemq_broker)
    wait_until_ingesting(client, ingest)

    locker = sqlite3.connect(connection.settings_dict["NAME"], timeout=30, isolation_level=None)
    locker.execute("BEGIN EXCLUSIVE")  # nobody else may write (or, outside WAL readers, read) now
    try:
        for i in range(200):
            client.send(data_topic(ns), _stf_gen(prefix, i, ns, run_id=7100))
        time.sleep(3.0)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    wait_for(lambda: _ours(prefix) >= 200, 60, "the messages after the lock")
    time.sleep(0.5)
    assert _ours(prefix) == 200
    assert "database unavailable" in ingest.log(), "the lock was never hit; the test proves nothing"
    assert ingest.alive


def test_postgres_connection_cut_is_survived(
    activemq_broker: BrokerProcess, client_for: Any, ingests: list[IngestProcess]
) -> None:
    if connection.vendor != "postgresql":
        pytest.skip("PostgreSQL connection termination")
    prefix = f"t4-{uuid.uuid4().hex[:6]}-"
    ns = f"ns{uuid.uuid4().hex[:6]}"
    ingest = _start(ingests, activemq_broker, "--flush-ms", "20")
    client = client_for(activemq_broker)
    wait_until_ingesting(client, ingest)

    def cut() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return int(cursor.fetchone()[0])

    killed = 0
    for i in range(400):
        client.send(data_topic(ns), _stf_gen(prefix, i, ns, run_id=7200))
        if i % 50 == 25:
            time.sleep(0.1)
            killed += cut()
    # and a lock held for a while: the ingest waits, then goes on
    with connection.cursor() as cursor:
        cursor.execute("BEGIN")
        cursor.execute("LOCK TABLE monitor_workflowmessage IN ACCESS EXCLUSIVE MODE")
        for i in range(400, 500):
            client.send(data_topic(ns), _stf_gen(prefix, i, ns, run_id=7200))
        time.sleep(2.0)
        cursor.execute("COMMIT")
    wait_for(lambda: _ours(prefix) >= 500, 60, "the messages after the outages")
    time.sleep(0.5)
    assert _ours(prefix) == 500
    assert killed > 0, "no ingest connection was cut; the test proves nothing"
    assert ingest.alive


# --------------------------------------------------------------------------- broker outage


def test_broker_restart_is_survived(client_for: Any, ingests: list[IngestProcess]) -> None:
    broker = start_embedded()
    try:
        prefix = f"t5-{uuid.uuid4().hex[:6]}-"
        ns = f"ns{uuid.uuid4().hex[:6]}"
        ingest = _start(ingests, broker)
        client = client_for(broker)
        wait_until_ingesting(client, ingest)
        for i in range(20):
            client.send(data_topic(ns), _stf_gen(prefix, i, ns, run_id=7300))
        wait_for(lambda: _ours(prefix) >= 20, 30, "messages before the restart")

        broker.stop()
        broker = start_embedded(port=broker.port)
        wait_until_ingesting(client, ingest)  # both reconnected and resubscribed by themselves
        for i in range(20, 40):
            client.send(data_topic(ns), _stf_gen(prefix, i, ns, run_id=7300))
        wait_for(lambda: _ours(prefix) >= 40, 30, "messages after the restart")
        assert _ours(prefix) == 40 and ingest.alive
    finally:
        broker.stop()


def test_message_the_database_refuses_is_stored_invalid_with_reason_and_acked(
    activemq_broker: BrokerProcess, client_for: Any, ingests: list[IngestProcess]
) -> None:
    if connection.vendor != "sqlite":
        pytest.skip("the refusal is a SQLite trigger")
    prefix = f"t9-{uuid.uuid4().hex[:6]}-"
    ns = f"ns{uuid.uuid4().hex[:6]}"
    refused = f"{prefix}{3:06d}"
    table = m.WorkflowMessage._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TRIGGER refuse_one BEFORE INSERT ON {table} "
            f"WHEN NEW.msg_id = '{refused}' AND NEW.is_valid "
            "BEGIN SELECT RAISE(ABORT, 'no such value here'); END"
        )
    try:
        ingest = _start(ingests, activemq_broker)
        client = client_for(activemq_broker)
        wait_until_ingesting(client, ingest)
        msgs_sent = [_stf_gen(prefix, i, ns, run_id=7900) for i in range(10)]
        assert refused in {msg.msg_id for msg in msgs_sent}, "the refused id is not sent"
        for msg in msgs_sent:
            client.send(data_topic(ns), msg)
        wait_for(lambda: _ours(prefix) >= 10, 60, "the batch with the refused message")
        row = m.WorkflowMessage.objects.get(msg_id=refused)
        assert not row.is_valid
        assert row.error_reason.startswith("refused by the database: ")
        assert "no such value here" in row.error_reason
        valid = m.WorkflowMessage.objects.filter(msg_id__startswith=prefix, is_valid=True)
        assert valid.count() == 9
        assert "left unacknowledged" not in ingest.log()
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER IF EXISTS refuse_one")

"""Ingest throughput: messages persisted per second against a bare stomp.py consumer, same run.

Starts a broker (the embedded one by default, or ActiveMQ Classic) and a fresh
monitor database (SQLite in a temporary directory, or a temporary database on
the PostgreSQL server named by ``--database-url``), then, with the same
pre-built bodies sent by one stomp.py producer in its own process:

1. baseline: a bare stomp.py consumer (``client-individual``, an ACK per
   message, the ingest's prefetch) receives N messages from a topic; its rate
   is N over the time from the first SEND to the last MESSAGE;
2. ingest: ``manage.py ingest`` (its own process, as in production) records
   another N messages; its rate is N over the time from the first SEND until
   all N rows are committed (and projected: the mix is stf_gen, slice and
   slice_result, which each update bookkeeping tables).

Prints both rates and their ratio (ingest / baseline; the aim is ≥ 0.5 on
SQLite), checks that no message was lost or stored twice, and prints as its
very last line one JSON object with the figures. ``--quick``: 3 000 messages.

Usage: ``python bench/ingest.py [--quick] [--messages N] [--broker embedded|activemq]
[--database-url postgres://postgres@127.0.0.1:5432/test] [--batch-size B] [--profile FILE]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import stomp

from swf_testbed import messages as msgs
from swf_testbed.mq.destinations import data_topic
from swf_testbed.testing.brokers import BrokerProcess, start_activemq, start_embedded
from swf_testbed.testing.databases import create_postgres_database

NAMESPACE = "bench"
STALL_S = 30.0


def build_bodies(n: int, tag: str) -> list[bytes]:
    """A realistic mix: STFs, slices of their samples, and slice results."""
    bodies = []
    common = {
        "namespace": NAMESPACE,
        "execution_id": f"bench-{tag}",
        "run_id": 1,
        "state": "run",
        "substate": "physics",
    }
    for i in range(n):
        kind = i % 10
        if kind < 4:
            msg: msgs.Message = msgs.StfGen(
                sender="daq",
                filename=f"swf.{tag}.{i:07d}.stf",
                sequence=i,
                size_bytes=2_000_000_000,
                checksum="0a0b0c0d",
                tf_count=1000,
                start="2026-01-01T00:00:00Z",
                end="2026-01-01T00:00:01Z",
                **common,
            )
        elif kind < 7:
            msg = msgs.Slice(
                sender="fastproc",
                slice_id=i,
                tf_filename=f"swf.{tag}.{i // 100:05d}.tf",
                stf_filename=f"swf.{tag}.{i // 100:05d}.stf",
                tf_first=0,
                tf_last=9,
                tf_count=10,
                **common,
            )
        else:
            msg = msgs.SliceResult(
                sender=f"worker-{i % 8}",
                slice_id=i,
                tf_filename=f"swf.{tag}.{i // 100:05d}.tf",
                worker_id=f"worker-{i % 8}",
                status="completed",
                processing_time_s=0.5,
                **common,
            )
        bodies.append(msg.to_bytes())
    return bodies


def _produce(host: str, port: int, destination: str, bodies: list[bytes], started: Any) -> None:
    conn = stomp.Connection([(host, port)], heartbeats=(0, 0), auto_decode=False)
    conn.connect(wait=True)
    started.value = time.time()
    for body in bodies:
        conn.send(
            destination=destination,
            body=body,
            headers={"persistent": "true", "content-type": "application/json"},
        )
    conn.disconnect()


def produce(broker: BrokerProcess, destination: str, bodies: list[bytes]) -> tuple[mp.Process, Any]:
    started = mp.Value("d", 0.0)
    proc = mp.Process(
        target=_produce, args=(broker.host, broker.port, destination, bodies, started)
    )
    proc.start()
    return proc, started


class _Consumer(stomp.ConnectionListener):
    def __init__(self, conn: stomp.Connection, expected: int) -> None:
        self.conn = conn
        self.expected = expected
        self.count = 0
        self.last = 0.0
        self.done = threading.Event()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.count += 1
        self.last = time.time()
        self.conn.ack(
            frame.headers.get("ack") or frame.headers["message-id"], frame.headers["subscription"]
        )
        if self.count >= self.expected:
            self.done.set()


def baseline(broker: BrokerProcess, n: int, prefetch: int) -> float:
    destination = str(data_topic(NAMESPACE))
    conn = stomp.Connection([(broker.host, broker.port)], heartbeats=(0, 0), auto_decode=False)
    listener = _Consumer(conn, n)
    conn.set_listener("", listener)
    conn.connect(wait=True)
    conn.subscribe(
        destination=destination,
        id="1",
        ack="client-individual",
        headers={"activemq.prefetchSize": str(prefetch)},
    )
    time.sleep(0.5)
    proc, started = produce(broker, destination, build_bodies(n, "base"))
    last_count, last_change = 0, time.time()
    while not listener.done.wait(0.2):
        if listener.count != last_count:
            last_count, last_change = listener.count, time.time()
        elif time.time() - last_change > STALL_S:
            break
    proc.join()
    conn.disconnect()
    if listener.count < n:
        raise SystemExit(f"baseline consumer lost messages: {listener.count} of {n}")
    return n / (listener.last - started.value)


# --------------------------------------------------------------------------- database


def make_database(url: str | None, workdir: Path) -> tuple[str, Any]:
    """A fresh database URL, and a function that removes it."""
    if not url:
        return f"sqlite:///{workdir / 'bench.sqlite3'}", lambda: None
    return create_postgres_database(url, prefix="swf_bench")


class Counter:
    """Counts committed rows from outside the ingest process."""

    def __init__(self, url: str) -> None:
        self.url = url
        if url.startswith("sqlite:///"):
            import sqlite3

            self.conn: Any = sqlite3.connect(url[len("sqlite:///") :], timeout=30)
        else:
            import psycopg

            self.conn = psycopg.connect(url, autocommit=True)

    def count(self, where: str) -> int:
        cur = self.conn.execute(f"SELECT count(*) FROM monitor_workflowmessage WHERE {where}")
        return int(cur.fetchone()[0])

    def distinct(self, where: str) -> int:
        cur = self.conn.execute(
            f"SELECT count(DISTINCT msg_id) FROM monitor_workflowmessage WHERE {where}"
        )
        return int(cur.fetchone()[0])


def run_ingest(
    broker: BrokerProcess,
    n: int,
    db_url: str,
    workdir: Path,
    batch_size: int,
    profile: Path | None = None,
) -> dict[str, Any]:
    env = {
        **os.environ,
        **broker.env,
        "DATABASE_URL": db_url,
        "SWF_HOME": str(workdir),
        "DJANGO_SETTINGS_MODULE": "swf_testbed.monitor.settings",
    }
    manage = [sys.executable, "-m", "swf_testbed.monitor.manage"]
    subprocess.run([*manage, "migrate", "-v", "0"], env=env, check=True)
    log = open(workdir / "ingest.log", "ab")  # noqa: SIM115 - closed below
    if (
        profile is not None
    ):  # the writer (main) thread under cProfile, written when the ingest exits
        manage = [
            sys.executable,
            "-m",
            "cProfile",
            "-o",
            str(profile),
            "-m",
            "swf_testbed.monitor.manage",
        ]
    ingest = subprocess.Popen(
        [
            *manage,
            "ingest",
            "--no-migrate",
            "--batch-size",
            str(batch_size),
            "--client-id",
            f"bench-{uuid.uuid4().hex[:6]}",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    counter = Counter(db_url)
    try:
        # wait until subscribed: probes until one is recorded
        conn = stomp.Connection([(broker.host, broker.port)], heartbeats=(0, 0), auto_decode=False)
        conn.connect(wait=True)
        deadline = time.time() + 60
        while counter_safe(counter, "msg_type = 'heartbeat'") == 0:
            if time.time() > deadline or ingest.poll() is not None:
                raise SystemExit(
                    f"the ingest did not start:\n{(workdir / 'ingest.log').read_text()[-2000:]}"
                )
            probe = msgs.Heartbeat(
                namespace=NAMESPACE,
                sender="probe",
                agent_name="probe",
                agent_type="probe",
                instance_id="p",
                pid=1,
                hostname="h",
                operational_state="READY",
                interval_s=60,
            )
            conn.send(destination=str(data_topic(NAMESPACE)), body=probe.to_bytes())
            time.sleep(0.3)
        conn.disconnect()
        where = "msg_type <> 'heartbeat'"
        proc, started = produce(broker, str(data_topic(NAMESPACE)), build_bodies(n, "ingest"))
        last, last_change = 0, time.time()
        while True:
            count = counter.count(where)
            now = time.time()
            if count >= n:
                break
            if count != last:
                last, last_change = count, now
            elif now - last_change > STALL_S:
                break
            time.sleep(0.02)
        finished = time.time()
        proc.join()
        time.sleep(0.5)
        stored, distinct = counter.count(where), counter.distinct(where)
        return {"rate": n / (finished - started.value), "stored": stored, "distinct": distinct}
    finally:
        ingest.terminate()
        ingest.wait(30)
        log.close()


def counter_safe(counter: Counter, where: str) -> int:
    try:
        return counter.count(where)
    except Exception:  # noqa: BLE001 - the table may be locked for a moment
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 000 messages (well under a minute)")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--broker", choices=["embedded", "activemq"], default="embedded")
    parser.add_argument(
        "--database-url", default=None, help="PostgreSQL server to create a temporary database on"
    )
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="run the ingest's writer thread under cProfile into FILE (slows it down)",
    )
    args = parser.parse_args()
    n = args.messages or (3000 if args.quick else 20_000)

    workdir = Path(tempfile.mkdtemp(prefix="swf-bench-ingest-"))
    broker = start_embedded() if args.broker == "embedded" else start_activemq()
    db_url, drop = make_database(args.database_url, workdir)
    try:
        base_rate = baseline(broker, n, prefetch=max(args.batch_size * 2, 100))
        result = run_ingest(
            broker,
            n,
            db_url,
            workdir,
            args.batch_size,
            args.profile.resolve() if args.profile else None,
        )
    finally:
        broker.stop()
        drop()
    lost = n - result["distinct"]
    duplicated = result["stored"] - result["distinct"]
    database = "postgresql" if args.database_url else "sqlite"
    ratio = result["rate"] / base_rate
    print(f"broker {args.broker}, database {database}, {n} messages, batch {args.batch_size}")
    print(f"  bare stomp.py consumer: {base_rate:9.0f} msg/s received")
    print(f"  monitor ingest:         {result['rate']:9.0f} msg/s persisted and projected")
    print(f"  ratio ingest/baseline:  {ratio:9.2f}   (lost {lost}, duplicated {duplicated})")
    figures = {
        "benchmark": "ingest",
        "broker": args.broker,
        "database": database,
        "messages": n,
        "batch_size": args.batch_size,
        "baseline_msgs_per_s": round(base_rate, 1),
        "ingest_msgs_per_s": round(result["rate"], 1),
        "ratio": round(ratio, 3),
        "lost": lost,
        "duplicated": duplicated,
    }
    print(json.dumps(figures))
    return 1 if lost or duplicated else 0


if __name__ == "__main__":
    sys.exit(main())

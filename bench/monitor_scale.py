"""Monitor at scale: the messages list (UI and API) and facet counts over a million messages.

Seeds a fresh database (SQLite in a temporary directory, or a temporary
database on the PostgreSQL server named by ``--database-url``) with N
WorkflowMessages spread over 100 executions (realistic bodies, types,
senders, runs), builds the facet counts, then times, in process through
Django's test client (URL routing, filtering, template rendering / JSON),
``--repeat`` requests of each of:

* the messages list page, and the API list (``?limit=50``): unfiltered, and
  filtered by ``execution_id``, ``msg_type``, ``sender``;
* the facet counts (all six facets) under the same filters.

Prints p50 / p95 in milliseconds (the aim is p95 < 150 ms) and, as the very
last line, one JSON object with all figures. ``--quick``: 100 000 messages.

Usage: ``python bench/monitor_scale.py [--quick] [--messages N] [--database-url URL] [--repeat R]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from swf_testbed.testing.databases import create_postgres_database

EXECUTIONS = 100
TYPES = [
    ("stf_gen", 30),
    ("slice", 25),
    ("slice_result", 25),
    ("heartbeat", 12),
    ("tf_file_registered", 5),
    ("start_run", 1),
    ("end_run", 1),
    ("workflow_started", 1),
]
SENDERS = {
    "stf_gen": ["daq"],
    "slice": ["fastproc"],
    "slice_result": [f"worker-{i}" for i in range(12)],
    "heartbeat": ["daq", "data", "processing", "fastmon", "fastproc"],
    "tf_file_registered": ["fastmon"],
    "start_run": ["daq"],
    "end_run": ["daq"],
    "workflow_started": ["runner"],
}


def make_database(url: str | None, workdir: Path) -> tuple[str, Any]:
    """A fresh database URL, and a function that removes it (closing Django's connections first)."""
    if not url:
        return f"sqlite:///{workdir / 'scale.sqlite3'}", lambda: None
    db_url, drop_database = create_postgres_database(url, prefix="swf_scale")

    def drop() -> None:
        from django.db import connections

        connections.close_all()
        drop_database()

    return db_url, drop


def open_monitor(db_url: str, workdir: Path) -> None:
    """Set up the monitor's Django in this process on ``db_url`` (``SWF_HOME`` in ``workdir``) and
    migrate it."""
    os.environ.update(
        {
            "DATABASE_URL": db_url,
            "SWF_HOME": str(workdir),
            "DJANGO_SETTINGS_MODULE": "swf_testbed.monitor.settings",
        }
    )
    from swf_testbed.monitor import setup

    setup()
    from swf_testbed.monitor.db import migrate

    migrate()


def seed(n: int) -> float:
    from swf_testbed.monitor.api import facets
    from swf_testbed.monitor.api.models import Namespace, WorkflowMessage

    rng = random.Random(42)
    types = [t for t, w in TYPES for _ in range(w)]
    namespaces = [f"user{i}" for i in range(10)]
    Namespace.objects.bulk_create([Namespace(name=ns) for ns in namespaces])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    per_exec = n // EXECUTIONS
    t0 = time.perf_counter()
    rows: list[WorkflowMessage] = []
    for e in range(EXECUTIONS):
        ns = namespaces[e % len(namespaces)]
        execution_id = f"stf_datataking-{ns}-{e:04d}"
        run_base = 100_000 + e * 3
        for i in range(per_exec):
            msg_type = rng.choice(types)
            sender = rng.choice(SENDERS[msg_type])
            run_id = None if msg_type == "heartbeat" else run_base + i * 3 // per_exec
            when = start + timedelta(seconds=e * 3600 + i * 0.3)
            body = {
                "msg_type": msg_type,
                "msg_id": f"m{e:03d}-{i:07d}",
                "namespace": ns,
                "sender": sender,
                "timestamp": when.isoformat(),
                "execution_id": execution_id if run_id else None,
                "run_id": run_id,
                "state": "run",
                "substate": "physics",
                "filename": f"swf.{run_id}.{i:06d}.stf",
                "size_bytes": 2_000_000_000,
                "checksum": "0a0b0c0d",
            }
            rows.append(
                WorkflowMessage(
                    msg_id=body["msg_id"],
                    msg_type=msg_type,
                    namespace_id=ns,
                    execution_id=execution_id if run_id else "",
                    run_id=run_id,
                    sender=sender,
                    destination="/topic/epictopic",
                    sent_at=when,
                    received_at=when + timedelta(milliseconds=3),
                    schema_version=1,
                    body=json.dumps(body),
                    headers={"destination": "/topic/epictopic"},
                    is_valid=(i % 5000 != 17),
                )
            )
            if len(rows) >= 20_000:
                WorkflowMessage.objects.bulk_create(rows, batch_size=2000)
                rows.clear()
    WorkflowMessage.objects.bulk_create(rows, batch_size=2000)
    facets.rebuild_counts()
    return time.perf_counter() - t0


def timed(fn: Any, repeat: int) -> dict[str, float]:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 000 messages")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument(
        "--database-url", default=None, help="PostgreSQL server to create a temporary database on"
    )
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    n = args.messages or (100_000 if args.quick else 1_000_000)

    workdir = Path(tempfile.mkdtemp(prefix="swf-bench-scale-"))
    db_url, drop = make_database(args.database_url, workdir)
    try:
        open_monitor(db_url, workdir)
        from django.db import connection
        from django.test import Client

        from swf_testbed.monitor.api import facets

        seconds = seed(n)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        else:
            with connection.cursor() as cursor:
                cursor.execute("ANALYZE")
        print(
            f"seeded {n} messages over {EXECUTIONS} executions in {seconds:.0f} s "
            f"({connection.vendor})"
        )
        client = Client(HTTP_HOST="localhost")
        filters = {
            "unfiltered": {},
            "execution_id": {"execution_id": "stf_datataking-user7-0057"},
            "msg_type": {"msg_type": "slice_result"},
            "sender": {"sender": "worker-3"},
        }
        results: dict[str, dict[str, float]] = {}

        def get(path: str, params: dict[str, str]) -> None:
            response = client.get(path, params)
            if response.status_code != 200:
                raise SystemExit(f"{path} {params}: HTTP {response.status_code}")

        for label, params in filters.items():
            results[f"page_{label}"] = timed(lambda p=params: get("/messages/", p), args.repeat)
            results[f"api_{label}"] = timed(
                lambda p=params: get("/api/workflow-messages/", {**p, "limit": "50"}), args.repeat
            )
            results[f"facets_{label}"] = timed(lambda p=params: facets.facet_counts(p), args.repeat)
    finally:
        drop()
    width = max(len(k) for k in results)
    print(f"{'request':<{width}}  {'p50 ms':>8}  {'p95 ms':>8}")
    for key, value in results.items():
        print(f"{key:<{width}}  {value['p50_ms']:>8}  {value['p95_ms']:>8}")
    worst = max(v["p95_ms"] for v in results.values())
    print(f"worst p95: {worst} ms (aim < 150 ms)")
    print(
        json.dumps(
            {
                "benchmark": "monitor_scale",
                "database": connection.vendor,
                "messages": n,
                "executions": EXECUTIONS,
                "seed_seconds": round(seconds, 1),
                "worst_p95_ms": worst,
                **{k: v for k, v in results.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The whole agent chain with the monitor ingest, as fast as it goes, end to end.

Starts a broker (the embedded one by default, ``--broker activemq`` for
ActiveMQ Classic), the monitor ingest as a real process (``python -m
swf_testbed.cli monitor ingest --client-id <unique>``, ``SWF_HOME`` a fresh
temporary directory, so its SQLite database is there) and the agent chain of
one namespace as real processes (``swf-testbed agent run``): workflow runner,
data, processing, fastmon, fast processing and 4 workers. Then, once per STF
sampling rate (0.05 and 1.0), it sends ``run_workflow``
(``fast_processing_default``, time scale 0: the DAQ runs as fast as the
consumers keep up, paced by the runner on ``processing_complete``) for 1000
STFs (``--quick``: 100) and watches two things:

* the broker: a bare stomp.py subscriber counts every message of the
  execution (run topic, data topic, worker topic, replies topic, and the
  monitor topic for the copies of queue traffic: slices and slice results)
  until every expected message has been seen: N ``stf_gen``, N ``stf_ready``,
  N ``processing_complete``, as many ``tf_file_registered`` (samples) as
  fastmon reports having sent (its heartbeat counters), and a completed
  ``slice_result`` for every slice of those samples;
* the monitor: a poller reads the ingest's SQLite file (read-only SQL, every
  20 ms, only the rows committed since its last poll, so that it costs the
  ingest next to nothing) and counts the ``WorkflowMessage`` rows of the
  execution by ``msg_type``, until it holds every expected record: for each of the six
  kinds above, the chain's expectation or as many distinct ``msg_id`` as the
  broker subscriber saw, whichever is larger (retried slices and failed slice
  results are messages too).

A stall (nothing new for ``--stall`` seconds, on the broker and then in the
database) ends a wait, and whatever is missing counts as lost.

Reported per rate, end to end (``run_workflow`` sent → the first poll at
which the monitor held every expected record): STFs per second, and chain
messages per second (every message of the execution the broker subscriber
saw, counted once by ``msg_id``) over that span, and their ratio to the raw
broker throughput measured in the same run on the same broker (one bare
stomp.py producer and one consumer, in its own process, on a topic). Also,
from the broker-side observation alone (the chain without the ingest):
STFs/s and messages/s to the last expected message seen on the broker,
STFs/s to the last ``processing_complete`` (the STF stream without the
slices' tail), and the ingest's lag (monitor complete − chain complete).

``lost`` = expected records missing from the monitor at the end (which
includes anything the chain itself lost); ``duplicated`` = messages the
broker subscriber saw more than once (by identity: STF file name, sample
name, slice id and retry, slice result), plus rows the monitor holds twice
for one ``msg_id`` (none, it is unique there). The target at sampling rate
0.05 is 167 STF/s: 100× ePIC real time (an STF is about 0.6 s of data).

The last line is one JSON object: the figures of the 0.05 run at the top
level (``stfs``, ``stf_per_s``, ``msgs_per_s``, ``broker_msgs_per_s``,
``ratio``, and the chain-only ``chain_stf_per_s``, ``chain_msgs_per_s``,
``ingest_lag_s``), ``lost`` and ``duplicated`` summed over both runs, and
every run under ``runs``. The exit status is non-zero when anything was lost
or duplicated.

Each run also reports the CPU time every process spent on it (broker,
ingest, each agent; from the operating system's accounting, so unaffected by
profiling overhead) in microseconds per message of the run, under ``cpu_us_per_msg``.

``--profile DIR`` runs every agent and the ingest under ``cProfile`` (all
threads) and writes one ``<agent>.prof`` per agent and ``ingest.prof`` into DIR
when they exit.

``--database-url postgres://…`` puts the ingest on a fresh database of that
PostgreSQL server (dropped at the end) instead of SQLite: with ``--broker
activemq``, the production pair.

Usage: ``python bench/pipeline.py [--quick] [--stfs N] [--broker embedded|activemq]
[--database-url postgres://…]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil
import stomp

from swf_testbed.messages import RunWorkflow
from swf_testbed.mq import BrokerClient
from swf_testbed.mq.destinations import (
    HEARTBEAT_TOPIC,
    MONITOR_TOPIC,
    RUN_TOPIC,
    control_queue,
    data_topic,
    replies_topic,
    worker_topic,
)
from swf_testbed.testing.brokers import BrokerProcess, start_activemq, start_embedded
from swf_testbed.testing.databases import create_postgres_database

TARGET_STF_PER_S = 167.0
RATES = (0.05, 1.0)
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """
import atexit, cProfile, pstats, sys, threading, time
out, args = sys.argv[1], sys.argv[2:]
# each thread's own CPU time, not wall time: a thread waiting for the GIL or the database does not
# charge the wait to the function it happens to be in
profiles = [cProfile.Profile(time.thread_time)]
lock = threading.Lock()
_run = threading.Thread.run
def run(self, *a, **k):
    p = cProfile.Profile(time.thread_time)
    with lock:
        profiles.append(p)
    p.enable()
    try:
        return _run(self, *a, **k)
    finally:
        p.disable()
threading.Thread.run = run
def dump():
    stats = None
    with lock:
        for p in profiles:
            try:
                p.create_stats()
                stats = pstats.Stats(p) if stats is None else stats.add(p)
            except Exception:
                pass
    if stats is not None:
        stats.dump_stats(out)
atexit.register(dump)
profiles[0].enable()
from swf_testbed.cli import app
app(args=args, prog_name="swf-testbed")
"""
"""Runs ``swf-testbed ARGS…`` under cProfile (every thread, each timed by its own CPU time):
``python -c LAUNCHER OUT.prof ARGS…``."""


# --------------------------------------------------------------------------- raw broker baseline


def _raw_consumer(host: str, port: int, destination: str, n: int, ready: Any, results: Any) -> None:
    done = threading.Event()
    times: list[float] = []

    class Listener(stomp.ConnectionListener):
        def __init__(self) -> None:
            self.subscribed = threading.Event()

        def on_receipt(self, frame: Any) -> None:
            self.subscribed.set()

        def on_message(self, frame: Any) -> None:
            json.loads(frame.body)
            times.append(time.time())
            if len(times) >= n:
                done.set()

    conn = stomp.Connection([(host, port)], auto_decode=False)
    listener = Listener()
    conn.set_listener("raw", listener)
    conn.connect(wait=True)
    conn.subscribe(destination, id="1", ack="auto", headers={"receipt": "sub"})
    listener.subscribed.wait(30)
    ready.set()
    done.wait(120)
    results.put({"count": len(times), "last": times[-1] if times else 0.0})
    conn.disconnect()


def raw_throughput(broker: BrokerProcess, n: int) -> dict[str, Any]:
    """One bare stomp.py producer → one consumer (own process) on a topic: messages per second."""
    ctx = mp.get_context("spawn")
    destination = f"/topic/bench.raw.{uuid.uuid4().hex[:8]}"
    ready, results = ctx.Event(), ctx.Queue()
    proc = ctx.Process(
        target=_raw_consumer,
        args=(broker.host, broker.port, destination, n, ready, results),
        daemon=True,
    )
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("raw consumer did not subscribe")
    body = {
        "msg_type": "stf_ready",
        "namespace": "bench",
        "sender": "raw",
        "run_id": 1,
        "execution_id": "x" * 40,
        "filename": "swf.000001.000001.stf",
        "url": "file:///swf/exit-buffer/swf.000001.000001.stf",
        "checksum": "0000abcd",
        "size_bytes": 2_000_000_000,
        "tf_count": 1000,
    }
    bodies = [
        json.dumps({**body, "sequence": i, "msg_id": uuid.uuid4().hex}).encode() for i in range(n)
    ]
    conn = stomp.Connection([(broker.host, broker.port)], auto_decode=False)
    conn.connect(wait=True)
    start = time.time()
    for b in bodies:
        conn.send(destination, b, headers={"persistent": "true"})
    report = results.get(timeout=180)
    conn.disconnect()
    proc.join(10)
    seconds = max(report["last"] - start, 1e-9)
    return {
        "messages": n,
        "received": report["count"],
        "msgs_per_s": report["count"] / seconds,
        "body_bytes": len(bodies[0]),
    }


# ------------------------------------------------------------------------- the chain and the ingest


class CpuMeter:
    """CPU seconds (user + system) of named processes, read from the operating system."""

    def __init__(self, procs: dict[str, subprocess.Popen[bytes] | None]) -> None:
        self.procs = {name: psutil.Process(p.pid) for name, p in procs.items() if p is not None}

    def sample(self) -> dict[str, float]:
        out = {}
        for name, proc in self.procs.items():
            try:
                times = proc.cpu_times()
            except psutil.Error:
                continue
            out[name] = times.user + times.system + times.children_user + times.children_system
        return out

    @staticmethod
    def per_message_us(
        before: dict[str, float], after: dict[str, float], msgs: int
    ) -> dict[str, float]:
        """Microseconds of CPU per message of the run, by process (and ``total``)."""
        spent = {name: after[name] - before[name] for name in after if name in before}
        spent["total"] = sum(spent.values())
        return {name: round(seconds * 1e6 / max(msgs, 1), 1) for name, seconds in spent.items()}


def _child_env(broker: BrokerProcess) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **broker.env, "PYTHONPATH": path}


@dataclass
class Agents:
    broker: BrokerProcess
    namespace: str
    workers: int
    pace_window: int
    profile_dir: Path | None
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="swf-bench-pipeline-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def specs(self) -> dict[str, tuple[str, list[str]]]:
        out = {
            "runner": (
                "swf_testbed.agents.runner:WorkflowRunner",
                ["--set", f"pace_window={self.pace_window}"],
            ),
            "data": ("swf_testbed.agents.data:DataAgent", []),
            "processing": ("swf_testbed.agents.processing:ProcessingAgent", []),
            "fastmon": ("swf_testbed.agents.fastmon:FastMonAgent", []),
            "fast-processing": ("swf_testbed.agents.fast_processing:FastProcessingAgent", []),
        }
        for i in range(1, self.workers + 1):
            out[f"worker-{i}"] = ("swf_testbed.agents.worker:WorkerAgent", [])
        return out

    def start(self) -> None:
        env = _child_env(self.broker)
        for name, (target, extra) in self.specs().items():
            args = [
                "agent",
                "run",
                target,
                "--name",
                name,
                "--namespace",
                self.namespace,
                "--heartbeat-interval",
                "1",
                *extra,
            ]
            if self.profile_dir is not None:
                cmd = [
                    sys.executable,
                    "-c",
                    LAUNCHER,
                    str(self.profile_dir / f"{name}.prof"),
                    *args,
                ]
            else:
                cmd = [sys.executable, "-m", "swf_testbed.cli", *args]
            with open(self.logs / f"{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(
                    cmd, env=env, stdout=out, stderr=subprocess.STDOUT
                )

    def stop(self) -> None:
        _terminate(self.procs.values())


def _terminate(procs: Any) -> None:
    procs = list(procs)
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Ingest:
    """``swf-testbed monitor ingest`` as its own process, its SQLite database in a fresh
    ``SWF_HOME`` (or the PostgreSQL database of ``database_url``)."""

    broker: BrokerProcess
    home: Path
    profile_dir: Path | None = None
    database_url: str | None = None
    """PostgreSQL (a fresh database); ``None``: SQLite in ``home``."""
    client_id: str = field(default_factory=lambda: f"bench-ingest-{uuid.uuid4().hex[:8]}")
    proc: subprocess.Popen[bytes] | None = None

    @property
    def database(self) -> Path:
        return self.home / "monitor.sqlite3"

    @property
    def log(self) -> Path:
        return self.home / "ingest.log"

    def start(self) -> None:
        env = _child_env(self.broker)
        env.pop("DATABASE_URL", None)  # empty: SQLite at $SWF_HOME/monitor.sqlite3
        if self.database_url:
            env["DATABASE_URL"] = self.database_url
        env["SWF_HOME"] = str(self.home)
        args = ["monitor", "ingest", "--client-id", self.client_id]
        if self.profile_dir is not None:
            cmd = [sys.executable, "-c", LAUNCHER, str(self.profile_dir / "ingest.prof"), *args]
        else:
            cmd = [sys.executable, "-m", "swf_testbed.cli", *args]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(
                f"the ingest exited ({self.proc.returncode}):\n{self.log.read_text()[-2000:]}"
            )

    def stop(self) -> None:
        if self.proc is not None:
            _terminate([self.proc])


class MonitorDb:
    """Read-only SQL on the ingest's database: ``WorkflowMessage`` rows.

    SQLite (its file, opened read-only) or PostgreSQL (``url``; one autocommit connection, so that
    each poll sees what was committed before it).
    """

    TABLE = "monitor_workflowmessage"

    def __init__(self, path: Path, url: str | None = None) -> None:
        self.path = path
        self.url = url
        self._conn: Any = None

    def _connection(self) -> Any:
        if self._conn is None:
            if self.url:
                import psycopg

                self._conn = psycopg.connect(self.url, autocommit=True)
            else:
                self._conn = sqlite3.connect(
                    f"{self.path.as_uri()}?mode=ro", uri=True, timeout=30, check_same_thread=False
                )
        return self._conn

    def _query(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        if self.url:
            import psycopg

            try:
                return list(self._connection().execute(sql.replace("?", "%s"), params).fetchall())
            except psycopg.errors.UndefinedTable:  # not migrated yet
                return []
        try:
            return list(self._connection().execute(sql, params).fetchall())
        except sqlite3.OperationalError:  # not migrated yet, or locked for a moment
            return []

    def count_heartbeats(self, namespace: str) -> int:
        rows = self._query(
            f"SELECT count(*) FROM {self.TABLE} WHERE namespace = ? AND msg_type = 'heartbeat'",
            (namespace,),
        )
        return int(rows[0][0]) if rows else 0

    def max_id(self) -> int:
        rows = self._query(f"SELECT max(id) FROM {self.TABLE}", ())
        return int(rows[0][0] or 0) if rows else 0

    def rows_after(self, last_id: int) -> list[tuple[int, str, str]]:
        """(id, msg_type, execution_id) of the rows committed after ``last_id``.

        The ingest is the one writer of these rows and commits its batches one
        after the other (SQLite has one writer at a time anyway), so ids are
        committed in order: a poller that remembers the largest id it has seen
        reads each row once, and each poll costs what is new, not what the
        table holds.
        """
        rows = self._query(
            f"SELECT id, msg_type, execution_id FROM {self.TABLE} WHERE id > ? ORDER BY id",
            (last_id,),
        )
        return [(int(i), str(t), str(e)) for i, t, e in rows]

    def msg_ids(self, execution_id: str) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        for t, mid in self._query(
            f"SELECT msg_type, msg_id FROM {self.TABLE} WHERE execution_id = ?", (execution_id,)
        ):
            out.setdefault(str(t), set()).add(str(mid))
        return out

    def duplicate_rows(self, execution_id: str) -> int:
        rows = self._query(
            f"SELECT count(*) - count(DISTINCT msg_id) FROM {self.TABLE} WHERE execution_id = ?",
            (execution_id,),
        )
        return int(rows[0][0]) if rows else 0

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class MonitorWatch(threading.Thread):
    """Polls the monitor's row counts of one execution; keeps every change with the time it was
    first seen."""

    def __init__(
        self, db: MonitorDb, execution_id: str, after_id: int, interval: float = 0.02
    ) -> None:
        super().__init__(name="monitor-watch", daemon=True)
        self.db = db
        self.execution_id = execution_id
        self.after_id = after_id
        self.interval = interval
        self.history: list[tuple[float, dict[str, int]]] = []
        self.lock = threading.Lock()
        self._halt = threading.Event()

    def run(self) -> None:
        counts: Counter[str] = Counter()
        last_id = self.after_id
        while not self._halt.is_set():
            rows = self.db.rows_after(last_id)
            now = time.time()
            mine = [t for _, t, e in rows if e == self.execution_id]
            if rows:
                last_id = rows[-1][0]
            if mine:
                counts.update(mine)
                with self.lock:
                    self.history.append((now, dict(counts)))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def latest(self) -> tuple[float, dict[str, int]]:
        with self.lock:
            return self.history[-1] if self.history else (0.0, {})

    def first_complete(self, target: dict[str, int]) -> float | None:
        """When the monitor first held ``target`` rows of every msg_type (None: not yet)."""
        with self.lock:
            for t, counts in self.history:
                if all(counts.get(k, 0) >= n for k, n in target.items()):
                    return t
        return None


class Counting(stomp.ConnectionListener):
    """Counts the namespace's messages by identity; json only (no schema), to stay light."""

    KINDS: ClassVar[tuple[str, ...]] = (
        "stf_gen",
        "stf_ready",
        "processing_complete",
        "tf_file_registered",
        "slice",
        "slice_completed",
    )
    MSG_TYPE: ClassVar[dict[str, str]] = {"slice_completed": "slice_result"}
    """The monitor's msg_type of each kind (the same name unless listed)."""

    def __init__(self, namespace: str) -> None:
        self.ns = namespace
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.reset()
        self.subscribed = 0
        self.beats: dict[str, dict[str, Any]] = {}
        self.states: dict[str, str] = {}

    def reset(self, request_id: str | None = None) -> None:
        self.request_id = request_id
        self.execution_id: str | None = None
        self.seen: dict[str, Counter[Any]] = {k: Counter() for k in self.KINDS}
        self.ids: dict[str, set[str]] = {}
        """msg_ids of the execution by msg_type (each message once, whichever destination(s) it
        came by)."""
        self.total = 0
        self.replies: list[dict[str, Any]] = []
        self.slice_sizes: dict[str, int] = {}
        self.last_change = time.monotonic()
        self.last_seen = time.time()
        self.last_new: dict[str, float] = {}

    def on_receipt(self, frame: Any) -> None:
        with self.lock:
            self.subscribed += 1
            self.changed.notify_all()

    def on_message(self, frame: Any) -> None:
        now = time.time()
        try:
            m = json.loads(frame.body)
        except ValueError:
            return
        if m.get("namespace") != self.ns:
            return
        t = m.get("msg_type")
        with self.lock:
            if t == "heartbeat":
                self.beats[m["agent_name"]] = m.get("counters", {})
                self.states[m["agent_name"]] = m.get("operational_state", "")
                self.changed.notify_all()
                return
            if t in ("workflow_started", "workflow_completed", "workflow_failed"):
                self.replies.append(m)
                if t == "workflow_started" and m.get("in_reply_to") == self.request_id:
                    self.execution_id = m[
                        "execution_id"
                    ]  # before the run's first message is looked at
            eid = self.execution_id
            if eid is None or m.get("execution_id") != eid:
                self.changed.notify_all()
                return
            ids = self.ids.setdefault(t, set())
            if m["msg_id"] not in ids:
                ids.add(m["msg_id"])
                self.total += 1
            key: Any
            if t in ("stf_gen", "stf_ready", "processing_complete"):
                kind, key = t, m["filename"]
            elif t == "tf_file_registered":
                kind, key = t, m["tf_filename"]
                self.slice_sizes[key] = m["tf_count"]
            elif t == "slice":
                kind, key = t, (m["slice_id"], m.get("retries", 0))
            elif t == "slice_result" and m.get("status") == "completed":
                kind, key = "slice_completed", m["slice_id"]
            else:
                kind = ""
            if kind:
                if key not in self.seen[kind]:
                    self.last_new[kind] = now
                self.seen[kind][key] += 1
                self.last_change = time.monotonic()
                self.last_seen = now
            self.changed.notify_all()


@dataclass
class RunFigures:
    rate: float
    stfs: int
    seconds: float
    """run_workflow sent → the monitor held every expected record."""
    stf_per_s: float
    msgs: int
    msgs_per_s: float
    expected: dict[str, int]
    """Expected records of the chain, by kind (counted on the broker)."""
    seen: dict[str, int]
    """Distinct ones seen on the broker, by kind."""
    monitor_expected: dict[str, int]
    """Rows the monitor must hold, by msg_type."""
    monitor_held: dict[str, int]
    lost: int
    """Expected records missing from the monitor at the end (the chain's losses included)."""
    duplicated: int
    chain_lost: int
    """Expected messages never seen on the broker."""
    chain_seconds: float
    """run_workflow sent → last expected message seen on the broker (the chain without the
    ingest)."""
    chain_stf_per_s: float
    chain_msgs_per_s: float
    stf_stream_per_s: float
    """STFs per second through data and processing alone (to the last processing_complete)."""
    ingest_lag_s: float
    cpu_us_per_msg: dict[str, float] = field(default_factory=dict)
    """CPU microseconds per message of the run, by process, from run_workflow sent to monitor
    complete."""
    broker_msgs_per_s: float = 0.0
    ratio: float = 0.0
    chain_ratio: float = 0.0
    status: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def _wait_started(counting: Counting, request_id: str) -> str:
    """The execution id from the runner's reply to run_workflow (call with counting.lock held)."""
    deadline = time.monotonic() + 60
    while not any(r.get("in_reply_to") == request_id for r in counting.replies):
        if time.monotonic() > deadline:
            raise RuntimeError("no reply to run_workflow")
        counting.changed.wait(0.5)
    reply = next(r for r in counting.replies if r.get("in_reply_to") == request_id)
    if reply["msg_type"] != "workflow_started":
        raise RuntimeError(f"run_workflow refused: {reply}")
    counting.last_change = time.monotonic()
    return str(reply["execution_id"])


def one_run(
    agents: Agents,
    counting: Counting,
    client: BrokerClient,
    ingest: Ingest,
    db: MonitorDb,
    stfs: int,
    rate: float,
    slices_per_sample: int,
    stall: float,
    cpu: CpuMeter,
) -> RunFigures:
    ns = agents.namespace
    before = dict(counting.beats.get("fastmon", {}))
    request = RunWorkflow(
        namespace=ns,
        sender="bench",
        workflow_name="stf_datataking",
        config="fast_processing_default",
        time_scale=0,
        params={
            "stf_count": stfs,
            "stf_sampling_rate": rate,
            "slices_per_sample": slices_per_sample,
        },
    )
    after_id = db.max_id()  # the monitor's rows of this execution all come after it
    with counting.lock:
        counting.reset(request.msg_id)
    cpu_before = cpu.sample()
    start = time.time()
    client.send(control_queue(ns), request)
    with counting.lock:
        eid = _wait_started(counting, request.msg_id)
    watch = MonitorWatch(db, eid, after_id)
    watch.start()

    def expected() -> dict[str, int]:
        fastmon = counting.beats.get("fastmon", {})
        seen_by_fastmon = fastmon.get("stf_seen", 0) - before.get("stf_seen", 0)
        sampled = fastmon.get("stf_sampled", 0) - before.get("stf_sampled", 0)
        slices = sum(min(slices_per_sample, n) for n in counting.slice_sizes.values())
        return {
            "stf_gen": stfs,
            "stf_ready": stfs,
            "processing_complete": stfs,
            # fastmon's own count, once its heartbeat shows it saw every STF
            "tf_file_registered": sampled if seen_by_fastmon >= stfs else -1,
            "slice": slices,
            "slice_completed": slices,
        }

    def unique(kind: str) -> int:
        return (
            len(counting.seen[kind])
            if kind != "slice"
            else len({k[0] for k in counting.seen["slice"]})
        )

    # 1. the chain, on the broker
    with counting.lock:
        while True:
            exp = expected()
            done = exp["tf_file_registered"] >= 0 and all(unique(k) >= v for k, v in exp.items())
            completed = any(
                r.get("execution_id") == eid and r["msg_type"] != "workflow_started"
                for r in counting.replies
            )
            if done and completed:
                break
            if time.monotonic() - counting.last_change > stall:
                print(f"  stalled on the broker: nothing new for {stall:g} s", file=sys.stderr)
                break
            counting.changed.wait(0.2)
        chain_end = counting.last_seen
        exp = expected()
        if exp["tf_file_registered"] < 0:
            exp["tf_file_registered"] = unique("tf_file_registered")
        seen = {k: unique(k) for k in counting.KINDS}
        chain_lost = sum(max(0, exp[k] - seen[k]) for k in counting.KINDS)
        dup = sum(n - 1 for k in counting.KINDS for n in counting.seen[k].values() if n > 1)
        msgs = counting.total
        stream_end = counting.last_new.get("processing_complete", chain_end)
        broker_ids = {
            counting.MSG_TYPE.get(k, k): set(counting.ids.get(counting.MSG_TYPE.get(k, k), ()))
            for k in counting.KINDS
        }
        final = next(
            (
                r
                for r in counting.replies
                if r.get("execution_id") == eid and r["msg_type"] != "workflow_started"
            ),
            {},
        )
    target = {
        counting.MSG_TYPE.get(k, k): max(exp[k], len(broker_ids[counting.MSG_TYPE.get(k, k)]))
        for k in counting.KINDS
    }

    # 2. the monitor, in its database
    last_counts = watch.latest()[1]
    progress = time.monotonic()
    while watch.first_complete(target) is None:
        ingest.check_alive()
        counts = watch.latest()[1]
        if counts != last_counts:
            last_counts, progress = counts, time.monotonic()
        elif time.monotonic() - progress > stall:
            print(f"  stalled in the monitor: nothing new for {stall:g} s", file=sys.stderr)
            break
        time.sleep(0.05)
    cpu_after = cpu.sample()
    watch.stop()
    end = watch.first_complete(target) or time.time()
    held_ids = db.msg_ids(eid)
    held = {t: len(held_ids.get(t, ())) for t in target}
    lost = sum(
        max(target[t] - held[t], len(broker_ids[t] - held_ids.get(t, set()))) for t in target
    )
    dup += db.duplicate_rows(eid)

    seconds = max(end - start, 1e-9)
    chain_seconds = max(chain_end - start, 1e-9)
    return RunFigures(
        rate=rate,
        stfs=stfs,
        seconds=seconds,
        stf_per_s=stfs / seconds,
        msgs=msgs,
        msgs_per_s=msgs / seconds,
        expected=exp,
        seen=seen,
        monitor_expected=target,
        monitor_held=held,
        lost=lost,
        duplicated=dup,
        chain_lost=chain_lost,
        chain_seconds=chain_seconds,
        chain_stf_per_s=stfs / chain_seconds,
        chain_msgs_per_s=msgs / chain_seconds,
        stf_stream_per_s=stfs / max(stream_end - start, 1e-9),
        ingest_lag_s=max(0.0, end - chain_end),
        cpu_us_per_msg=CpuMeter.per_message_us(cpu_before, cpu_after, msgs),
        status=final.get("status", final.get("msg_type", "no reply")),
    )


def _wait_ready(
    counting: Counting, names: set[str], ingest: Ingest, db: MonitorDb, namespace: str
) -> None:
    """Every agent READY on the broker, and the ingest recording (it holds their heartbeats)."""
    deadline = time.monotonic() + 120
    with counting.lock:
        while {n for n, s in counting.states.items() if s == "READY"} < names:
            if time.monotonic() > deadline:
                raise RuntimeError(f"agents not READY: {counting.states}")
            counting.changed.wait(0.5)
    while db.count_heartbeats(namespace) == 0:
        ingest.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the ingest records nothing:\n{ingest.log.read_text()[-2000:]}")
        time.sleep(0.2)


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 STFs per run instead of 1000")
    parser.add_argument(
        "--stfs", type=int, default=None, help="STFs per run (default 1000, --quick 100)"
    )
    parser.add_argument("--broker", choices=("embedded", "activemq"), default="embedded")
    parser.add_argument(
        "--rates",
        default=",".join(str(r) for r in RATES),
        help="STF sampling rates, comma-separated",
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slices-per-sample", type=int, default=15)
    parser.add_argument(
        "--pace-window", type=int, default=100, help="STFs in flight the runner allows"
    )
    parser.add_argument(
        "--raw-messages", type=int, default=None, help="raw baseline messages (default 5000)"
    )
    parser.add_argument(
        "--stall", type=float, default=30.0, help="seconds without progress that end a wait"
    )
    parser.add_argument(
        "--profile", type=Path, default=None, metavar="DIR", help="cProfile every agent into DIR"
    )
    parser.add_argument(
        "--database-url",
        default=None,
        metavar="postgres://…",
        help="the ingest on a fresh database of this PostgreSQL server (default: SQLite)",
    )
    args = parser.parse_args(argv)
    stfs = args.stfs or (100 if args.quick else 1000)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    raw_n = args.raw_messages or (3000 if args.quick else 5000)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()

    log(f"starting the {args.broker} broker …")
    broker = start_embedded() if args.broker == "embedded" else start_activemq()
    ns = f"bench{uuid.uuid4().hex[:6]}"
    agents = Agents(broker, ns, args.workers, args.pace_window, args.profile)
    db_url, drop_database = None, None
    if args.database_url:
        db_url, drop_database = create_postgres_database(args.database_url, prefix="swf_bench_pipe")
    home = Path(tempfile.mkdtemp(prefix="swf-bench-pipeline-home-"))
    ingest = Ingest(broker, home, args.profile, db_url)
    db = MonitorDb(ingest.database, db_url)
    runs: list[RunFigures] = []
    conn: stomp.Connection | None = None
    client: BrokerClient | None = None
    try:
        log(
            f"raw broker throughput: {raw_n} messages, "
            "one stomp.py producer → one consumer on a topic …"
        )
        raw = raw_throughput(broker, raw_n)
        log(f"  {raw['msgs_per_s']:.0f} msg/s ({raw['received']}/{raw['messages']} received)")

        counting = Counting(ns)
        conn = stomp.Connection([(broker.host, broker.port)], auto_decode=False, heartbeats=(0, 0))
        conn.set_listener("count", counting)
        conn.connect(wait=True)
        dests = [
            RUN_TOPIC,
            data_topic(ns),
            worker_topic(ns),
            replies_topic(ns),
            MONITOR_TOPIC,
            HEARTBEAT_TOPIC,
        ]
        for i, dest in enumerate(dests):
            conn.subscribe(str(dest), id=str(i), ack="auto", headers={"receipt": f"sub{i}"})
        with counting.lock:
            while counting.subscribed < len(dests):
                counting.changed.wait(1)

        log(
            f"starting the monitor ingest (SWF_HOME {ingest.home}) "
            f"and {len(agents.specs())} agent processes "
            f"in namespace {ns} (logs in {agents.logs}) …"
        )
        ingest.start()
        agents.start()
        _wait_ready(counting, set(agents.specs()), ingest, db, ns)
        client = BrokerClient(broker.settings(), client_name="bench-control").start()
        cpu = CpuMeter({"broker": broker.proc, "ingest": ingest.proc, **agents.procs})

        for rate in rates:
            log(f"run: {stfs} STFs at time scale 0, sampling rate {rate:g} …")
            fig = one_run(
                agents,
                counting,
                client,
                ingest,
                db,
                stfs,
                rate,
                args.slices_per_sample,
                args.stall,
                cpu,
            )
            fig.broker_msgs_per_s = raw["msgs_per_s"]
            fig.ratio = fig.msgs_per_s / raw["msgs_per_s"] if raw["msgs_per_s"] else 0.0
            fig.chain_ratio = fig.chain_msgs_per_s / raw["msgs_per_s"] if raw["msgs_per_s"] else 0.0
            runs.append(fig)
            log(
                f"  end to end (monitor complete): {fig.stf_per_s:.1f} STF/s, "
                f"{fig.msgs_per_s:.0f} msg/s ({fig.msgs} messages in {fig.seconds:.2f} s), "
                f"ratio to raw broker {fig.ratio:.3f}, "
                f"lost {fig.lost}, duplicated {fig.duplicated}, {fig.status}"
            )
            log(
                f"  chain alone (broker): {fig.chain_stf_per_s:.1f} STF/s, "
                f"{fig.chain_msgs_per_s:.0f} msg/s in {fig.chain_seconds:.2f} s "
                f"({fig.stf_stream_per_s:.1f} STF/s through data and processing), "
                f"lost {fig.chain_lost}; ingest lag {fig.ingest_lag_s:.2f} s"
            )
            log(f"    expected {fig.expected}")
            log(f"    seen     {fig.seen}")
            log(f"    monitor  {fig.monitor_held} of {fig.monitor_expected}")
            log(
                "    CPU µs per message: "
                + ", ".join(f"{k} {v:g}" for k, v in fig.cpu_us_per_msg.items())
            )
            time.sleep(1.5)  # let heartbeats settle (READY) before the next run
    finally:
        if client is not None:
            client.close()
        agents.stop()
        ingest.stop()
        db.close()
        if drop_database is not None:
            drop_database()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.disconnect()
        broker.stop()

    print()
    print(
        f"{'sampling rate':>14} {'STFs':>6} {'STF/s':>9} {'msg/s':>9} "
        f"{'chain STF/s':>12} {'chain msg/s':>12} "
        f"{'lag s':>6} {'lost':>5} {'dup':>5} {'raw msg/s':>10} {'ratio':>6}"
    )
    for fig in runs:
        print(
            f"{fig.rate:>14g} {fig.stfs:>6} {fig.stf_per_s:>9.1f} {fig.msgs_per_s:>9.0f} "
            f"{fig.chain_stf_per_s:>12.1f} {fig.chain_msgs_per_s:>12.0f} "
            f"{fig.ingest_lag_s:>6.2f} {fig.lost:>5} "
            f"{fig.duplicated:>5} {fig.broker_msgs_per_s:>10.0f} {fig.ratio:>6.3f}"
        )
    headline = next((f for f in runs if f.rate == 0.05), runs[0])
    print(
        f"target at sampling rate 0.05: {TARGET_STF_PER_S:.0f} STF/s (100x ePIC real time); "
        f"measured {headline.stf_per_s:.1f} STF/s end to end"
    )
    lost = sum(f.lost for f in runs)
    dup = sum(f.duplicated for f in runs)
    figures = {
        "broker": args.broker,
        "database": "postgresql" if db_url else "sqlite",
        "stfs": headline.stfs,
        "sampling_rate": headline.rate,
        "stf_per_s": round(headline.stf_per_s, 1),
        "msgs_per_s": round(headline.msgs_per_s, 1),
        "chain_stf_per_s": round(headline.chain_stf_per_s, 1),
        "chain_msgs_per_s": round(headline.chain_msgs_per_s, 1),
        "ingest_lag_s": round(headline.ingest_lag_s, 3),
        "lost": lost,
        "duplicated": dup,
        "broker_msgs_per_s": round(headline.broker_msgs_per_s, 1),
        "ratio": round(headline.ratio, 4),
        "chain_ratio": round(headline.chain_ratio, 4),
        "target_stf_per_s": TARGET_STF_PER_S,
        "meets_target": headline.stf_per_s >= TARGET_STF_PER_S and headline.lost == 0,
        "workers": args.workers,
        "pace_window": args.pace_window,
        "runs": {f"{f.rate:g}": f.as_dict() for f in runs},
    }
    sys.stdout.flush()
    print(json.dumps(figures), flush=True)
    return 0 if lost == 0 and dup == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

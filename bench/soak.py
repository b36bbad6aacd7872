"""Soak: a real-time ePIC-rate run for a long time on the embedded defaults.

Not a CI test: it lasts ``--minutes`` (default 30) of wall time. It drives the
real product, as a user would: a fresh ``SWF_HOME``, a ``testbed.toml`` on the
embedded defaults (the embedded broker, the monitor web and ingest on SQLite,
every agent, all under the testbed's own supervisord), then ``swf-testbed
run`` of ``stf_datataking`` with ``fast_processing_default`` at real time
(``time_scale = 1``): one STF every 0.6 s, sampling 0.05, for as many STFs as
fit in the run.

While it runs, three observers:

* a bare stomp.py subscriber on ``/topic/epictopic`` and ``/topic/swf.>``
  (every testbed topic, including the monitor's copies of queue traffic)
  notes each message of the namespace by ``msg_id``: the messages *sent*;
* a poller reads the monitor's SQLite file read-only every 0.1 s (only rows
  newer than its last poll) and notes when each ``msg_id`` first appears: the
  messages *recorded*, and their lag = first seen in the monitor − the
  message's own timestamp (set by the sender as it sends). The lag from the
  ingest's ``received_at`` is reported too;
* a sampler reads CPU and RSS of supervisord's every process (psutil) every
  ``--sample`` seconds.

Reported: messages sent vs recorded (and which kinds went missing), lag p50 /
p99 / max, and per process RSS and CPU at the start (one minute in, after
warm-up) and at the end, with the growth between them. The last line is one
JSON object; the exit status is non-zero when a message sent was not recorded.

    .venv/bin/python bench/soak.py                  # 30 minutes
    .venv/bin/python bench/soak.py --minutes 3      # a short try
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import stomp

from swf_testbed.orchestrator.starter import render
from swf_testbed.testing.brokers import free_port, wait_for_port

STF_INTERVAL_S = 0.6
"""ePIC: an STF is about 0.6 s of data."""
SAMPLING = 0.05
SLICE_TIME_S = 1.0
"""Wall seconds a worker spends on a slice: 2 workers then keep up with 15 slices per ~12 s."""
PROCESSING_TIME_S = 0.3
"""Wall seconds of prompt processing per STF, below the 0.6 s between STFs."""
WARMUP_S = 60.0


def testbed_toml(
    namespace: str, broker_port: int, monitor_port: int, stfs: int, minutes: float
) -> str:
    """``swf-testbed init``'s testbed.toml (every agent, two workers, embedded services), paced to
    real time."""
    text = render(namespace)
    # the default ports by value (two sections have a port); the run's own keys whatever the
    # starter's value
    for pattern, new in (
        (r"port = 61613\b", f"port = {broker_port}"),
        (r"port = 8002\b", f"port = {monitor_port}"),
        (r"time_scale = \S+", "time_scale = 1"),
        (r"stf_count = \S+", f"stf_count = {stfs}"),
        (r"stf_sampling_rate = \S+", f"stf_sampling_rate = {SAMPLING}"),
    ):
        text, found = re.subn(rf"(?m)^{pattern}", new, text, count=1)
        if not found:
            raise SystemExit(
                f"swf-testbed init's testbed.toml no longer has {pattern!r}: update bench/soak.py"
            )
    extra = (
        f"stf_interval = {STF_INTERVAL_S}\nphysics_period_duration = {minutes * 60 + 60:.0f}\n"
        f"slice_processing_time = {SLICE_TIME_S}\nprocessing_time = {PROCESSING_TIME_S}"
    )
    return re.sub(r"(?m)^\[parameters\].*$", lambda m: f"{m.group(0)}\n{extra}", text, count=1)


class Sent(stomp.ConnectionListener):
    """Every message of one namespace seen on the broker, by msg_id, with its type."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self.types: dict[str, str] = {}
        self.lock = threading.Lock()
        self.frozen = False

    def on_message(self, frame: Any) -> None:
        headers = frame.headers
        if headers.get("namespace") != self.namespace or self.frozen:
            return
        msg_id = headers.get("msg_id")
        if msg_id:
            with self.lock:
                self.types.setdefault(msg_id, headers.get("msg_type", "?"))

    def snapshot(self) -> dict[str, str]:
        with self.lock:
            return dict(self.types)


def _utc(text: str) -> float:
    """A Django SQLite datetime ('YYYY-MM-DD HH:MM:SS[.ffffff]', UTC) as epoch seconds."""
    value = datetime.fromisoformat(text)
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


class Recorded(threading.Thread):
    """Polls the monitor's SQLite file for new rows of the namespace; notes when each msg_id
    appeared."""

    def __init__(self, path: Path, namespace: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.path, self.namespace, self.interval = path, namespace, interval
        self.seen: dict[str, tuple[float, float | None, float]] = {}
        """msg_id -> (first seen here, sent_at, received_at), epoch seconds."""
        self.last_id = 0
        self.done = threading.Event()

    def run(self) -> None:
        db: sqlite3.Connection | None = None
        while not self.done.is_set():
            try:
                if db is None:
                    if not self.path.exists():
                        time.sleep(self.interval)
                        continue
                    db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
                self.poll(db)
            except sqlite3.Error:
                with contextlib.suppress(Exception):
                    db and db.close()
                db = None
            time.sleep(self.interval)

    def poll(self, db: sqlite3.Connection) -> None:
        rows = db.execute(
            "SELECT id, msg_id, sent_at, received_at FROM monitor_workflowmessage "
            "WHERE id > ? AND namespace = ? ORDER BY id",
            (self.last_id, self.namespace),
        ).fetchall()
        now = time.time()
        for row_id, msg_id, sent_at, received_at in rows:
            self.last_id = max(self.last_id, row_id)
            self.seen.setdefault(
                msg_id, (now, _utc(sent_at) if sent_at else None, _utc(received_at))
            )


@dataclass
class ProcessSample:
    at: float
    rss: int
    cpu_s: float


class Sampler(threading.Thread):
    """RSS and CPU time of supervisord and every process under it, by program name."""

    def __init__(self, supervisord_pid: int, every: float) -> None:
        super().__init__(daemon=True)
        self.supervisord_pid, self.every = supervisord_pid, every
        self.samples: dict[str, list[ProcessSample]] = {}
        self.done = threading.Event()

    @staticmethod
    def name_of(proc: psutil.Process) -> str:
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            if env.get("SUPERVISOR_PROCESS_NAME"):
                return env["SUPERVISOR_PROCESS_NAME"]
        with contextlib.suppress(psutil.Error):
            return " ".join(proc.cmdline()[1:3])[:40]
        return str(proc.pid)

    def sample(self) -> None:
        now = time.time()
        try:
            root = psutil.Process(self.supervisord_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for proc in procs:
            try:
                name = "supervisord" if proc.pid == self.supervisord_pid else self.name_of(proc)
                with proc.oneshot():
                    times = proc.cpu_times()
                    self.samples.setdefault(name, []).append(
                        ProcessSample(now, proc.memory_info().rss, times.user + times.system)
                    )
            except psutil.Error:
                continue

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def process_figures(sampler: Sampler, started: float, ended: float) -> dict[str, dict[str, float]]:
    """Per process: RSS one minute in and at the end; CPU % over the first and the last five
    minutes."""
    out: dict[str, dict[str, float]] = {}
    window = 300.0
    for name, samples in sorted(sampler.samples.items()):
        during = [s for s in samples if started <= s.at <= ended + sampler.every]
        if len(during) < 2:
            continue
        first = next((s for s in during if s.at >= started + WARMUP_S), during[0])
        last = during[-1]

        def cpu(a: ProcessSample, b: ProcessSample) -> float:
            return 100.0 * (b.cpu_s - a.cpu_s) / max(b.at - a.at, 1e-9)

        head_end = next((s for s in during if s.at >= first.at + window), last)
        tail_start = next((s for s in reversed(during) if s.at <= last.at - window), first)
        out[name] = {
            "rss_start_mb": round(first.rss / 2**20, 1),
            "rss_end_mb": round(last.rss / 2**20, 1),
            "rss_peak_mb": round(max(s.rss for s in during) / 2**20, 1),
            "rss_growth_mb": round((last.rss - first.rss) / 2**20, 1),
            "cpu_start_pct": round(cpu(first, head_end), 1),
            "cpu_end_pct": round(cpu(tail_start, last), 1),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (wall time)")
    parser.add_argument(
        "--sample", type=float, default=15.0, help="seconds between CPU/RSS samples"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the runtime directory (logs, database)"
    )
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="swf-soak-"))
    namespace = f"soak-{uuid.uuid4().hex[:6]}"
    broker_port, monitor_port = free_port(), free_port()
    stfs = int(args.minutes * 60 / STF_INTERVAL_S)
    config = home / "testbed.toml"
    config.write_text(testbed_toml(namespace, broker_port, monitor_port, stfs, args.minutes))
    env = {**os.environ, "SWF_HOME": str(home)}
    for key in ("ACTIVEMQ_HOST", "ACTIVEMQ_PORT", "DATABASE_URL", "SWF_MONITOR_URL"):
        env.pop(key, None)
    cli = [sys.executable, "-m", "swf_testbed.cli"]

    def log(text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    log(f"soak: {stfs} STFs at one per {STF_INTERVAL_S} s, namespace {namespace}, runtime {home}")
    subprocess.run([*cli, "up", str(config)], env=env, check=True, stdout=subprocess.DEVNULL)
    try:
        status = json.loads(
            subprocess.run(
                [*cli, "status", "--json", "-c", str(config)],
                env=env,
                capture_output=True,
                text=True,
            ).stdout
        )
        wait_for_port("127.0.0.1", broker_port, 30)

        sent = Sent(namespace)
        conn = stomp.Connection([("127.0.0.1", broker_port)], heartbeats=(0, 0))
        conn.set_listener("sent", sent)
        conn.connect(wait=True)
        conn.subscribe("/topic/epictopic", id="epic", ack="auto")
        conn.subscribe("/topic/swf.>", id="swf", ack="auto")
        recorded = Recorded(home / "monitor.sqlite3", namespace)
        recorded.start()
        sampler = Sampler(int(status["supervisord"]["pid"]), args.sample)
        sampler.sample()
        sampler.start()

        started = time.time()
        run_log = home / "run.log"
        with open(run_log, "wb") as out:
            code = subprocess.run(
                [*cli, "run", str(config), "--drain-timeout", "600"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            ).returncode
        ended = time.time()
        sampler.sample()
        sampler.done.set()
        log(f"swf-testbed run exited {code} after {ended - started:.0f} s")

        time.sleep(2.0)  # the last heartbeats still in flight to the subscriber
        sent.frozen = True
        sent_types = sent.snapshot()
        deadline = time.time() + 300
        while time.time() < deadline and not set(sent_types) <= set(recorded.seen):
            time.sleep(1.0)
        recorded.done.set()
        with contextlib.suppress(Exception):
            conn.disconnect()
    finally:
        subprocess.run(
            [*cli, "stop", "--all", "-c", str(config)], env=env, stdout=subprocess.DEVNULL
        )

    missing = sorted(set(sent_types) - set(recorded.seen))
    missing_by_type: dict[str, int] = {}
    for msg_id in missing:
        missing_by_type[sent_types[msg_id]] = missing_by_type.get(sent_types[msg_id], 0) + 1
    lags = [
        seen - sent_at
        for msg_id, (seen, sent_at, _r) in recorded.seen.items()
        if msg_id in sent_types and sent_at is not None
    ]
    ingest_lags = [
        recv - sent_at
        for msg_id, (_s, sent_at, recv) in recorded.seen.items()
        if msg_id in sent_types and sent_at is not None
    ]
    kinds: dict[str, int] = {}
    for kind in sent_types.values():
        kinds[kind] = kinds.get(kind, 0) + 1
    procs = process_figures(sampler, started, ended)
    tail = run_log.read_text(errors="replace").strip().splitlines()[-3:]

    figures: dict[str, Any] = {
        "minutes": round((ended - started) / 60, 1),
        "stfs_asked": stfs,
        "run_exit": code,
        "sent": len(sent_types),
        "recorded": len(set(sent_types) & set(recorded.seen)),
        "missing": len(missing),
        "missing_by_type": missing_by_type,
        "sent_by_type": kinds,
        "lag_p50_s": round(statistics.median(lags), 3) if lags else None,
        "lag_p99_s": round(percentile(lags, 0.99) or 0, 3) if lags else None,
        "lag_max_s": round(max(lags), 3) if lags else None,
        "ingest_receive_lag_p50_s": round(statistics.median(ingest_lags), 3)
        if ingest_lags
        else None,
        "ingest_receive_lag_p99_s": round(percentile(ingest_lags, 0.99) or 0, 3)
        if ingest_lags
        else None,
        "processes": procs,
        "run_tail": tail,
    }
    print(f"run: exit {code}; " + " | ".join(tail[-2:]))
    print(
        f"messages: sent {figures['sent']}, recorded {figures['recorded']}, "
        f"missing {figures['missing']} "
        f"{missing_by_type or ''}"
    )
    print(
        f"lag (timestamp -> visible in the monitor): p50 {figures['lag_p50_s']} s, "
        f"p99 {figures['lag_p99_s']} s, max {figures['lag_max_s']} s"
    )
    print(
        f"{'process':<28}{'RSS start':>11}{'RSS end':>10}{'peak':>8}{'growth':>8}"
        f"{'CPU% start':>12}{'CPU% end':>10}"
    )
    for name, p in procs.items():
        print(
            f"{name:<28}{p['rss_start_mb']:>9.1f}MB{p['rss_end_mb']:>8.1f}MB{p['rss_peak_mb']:>6.1f}MB"
            f"{p['rss_growth_mb']:>+6.1f}MB{p['cpu_start_pct']:>12.1f}{p['cpu_end_pct']:>10.1f}"
        )
    if not args.keep:
        import shutil

        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps(figures))
    return 0 if not missing and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

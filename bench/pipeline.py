"""The whole agent chain, as fast as it goes, counted on the broker.

Starts a broker (the embedded one by default, ``--broker activemq`` for
ActiveMQ Classic) and the agent chain of one namespace as real processes
(``swf-testbed agent run``): workflow runner, data, processing, fastmon, fast
processing and 4 workers. Then, once per STF sampling rate (0.05 and 1.0),
sends ``run_workflow`` (``fast_processing_default``, time scale 0: the DAQ
runs as fast as the consumers keep up, paced by the runner on
``processing_complete``) for 1000 STFs (``--quick``: 100), and counts every
message of the namespace on the broker (run topic, data topic, worker topic,
replies topic, and the monitor topic for the copies of queue traffic: slices
and slice results) with a bare stomp.py subscriber, until every expected
message has been seen: N ``stf_gen``, N ``stf_ready``, N
``processing_complete``, as many ``tf_file_registered`` as fastmon reports
having sent (its heartbeat counters), and a completed ``slice_result`` for
every slice of those samples. A stall (nothing new for ``--stall`` seconds)
ends the wait, and whatever is missing counts as lost.

Reported per rate: STFs per second end to end (``run_workflow`` sent → last
expected message seen; also, for diagnosis, to the last ``processing_complete``:
the STF stream alone, without the slices' tail), chain messages per second over
the same span (every
message the chain sent, counted once), lost and duplicated messages (by
their identity: STF file name, sample name, slice id), and the raw broker
throughput measured in the same run on the same broker with one bare
stomp.py producer and one consumer (in its own process) on a topic, and the
ratio chain msgs/s ÷ raw msgs/s. The target at sampling rate 0.05 is 167
STF/s: 100× ePIC real time (an STF is about 0.6 s of data).

The last line is one JSON object: the figures of the 0.05 run at the top
level (``stfs``, ``stf_per_s``, ``msgs_per_s``, ``broker_msgs_per_s``,
``ratio``), ``lost`` and ``duplicated`` summed over both runs, and every run
under ``runs``. The exit status is non-zero when anything was lost or
duplicated.

``--profile DIR`` runs every agent under ``cProfile`` (all threads) and
writes one ``<agent>.prof`` per agent into DIR when it exits.

``--tcp-nodelay`` is an experiment: it starts the agents with TCP_NODELAY set
on their stomp.py sockets, which ``swf_testbed.mq.client`` does not do (yet).
Without it, Nagle's algorithm holds back a client's ACK frame until the broker
acknowledges its previous write (up to the 40 ms delayed ACK): a worker with a
prefetch of 1 then waits about 40 ms per slice, whatever the slice costs.
Measured here (embedded broker, 1000 STFs): 98 → ~1100 STF/s at sampling
rate 0.05, 6 → ~190 STF/s at 1.0.

TODO(monitor): add the monitor ingest process to the chain (it subscribes to
every destination and records each message in the database) once it exists,
and report how far it lags behind the chain and whether it recorded every
message exactly once.

Usage: ``python bench/pipeline.py [--quick] [--stfs N] [--broker embedded|activemq]``
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

TARGET_STF_PER_S = 167.0
RATES = (0.05, 1.0)
ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = """
import atexit, cProfile, pstats, socket, sys, threading
nodelay, out, args = sys.argv[1] == "1", sys.argv[2], sys.argv[3:]
if nodelay:  # experiment: what the client would do with TCP_NODELAY on its sockets
    import stomp.transport as transport
    _connect = transport.Transport.attempt_connection
    def attempt_connection(self):
        _connect(self)
        if self.socket is not None:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    transport.Transport.attempt_connection = attempt_connection
profiles = [cProfile.Profile()] if out else []
lock = threading.Lock()
if out:
    _run = threading.Thread.run
    def run(self, *a, **k):
        p = cProfile.Profile()
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
    proc = ctx.Process(target=_raw_consumer, args=(broker.host, broker.port, destination, n, ready, results),
                       daemon=True)
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("raw consumer did not subscribe")
    body = {"msg_type": "stf_ready", "namespace": "bench", "sender": "raw", "run_id": 1, "execution_id": "x" * 40,
            "filename": "swf.000001.000001.stf", "url": "file:///swf/exit-buffer/swf.000001.000001.stf",
            "checksum": "0000abcd", "size_bytes": 2_000_000_000, "tf_count": 1000}
    bodies = [json.dumps({**body, "sequence": i, "msg_id": uuid.uuid4().hex}).encode() for i in range(n)]
    conn = stomp.Connection([(broker.host, broker.port)], auto_decode=False)
    conn.connect(wait=True)
    start = time.time()
    for b in bodies:
        conn.send(destination, b, headers={"persistent": "true"})
    report = results.get(timeout=180)
    conn.disconnect()
    proc.join(10)
    seconds = max(report["last"] - start, 1e-9)
    return {"messages": n, "received": report["count"], "msgs_per_s": report["count"] / seconds,
            "body_bytes": len(bodies[0])}


# --------------------------------------------------------------------------- the chain


@dataclass
class Agents:
    broker: BrokerProcess
    namespace: str
    workers: int
    pace_window: int
    profile_dir: Path | None
    tcp_nodelay: bool = False
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="swf-bench-pipeline-")))
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def specs(self) -> dict[str, tuple[str, list[str]]]:
        out = {
            "runner": ("swf_testbed.agents.runner:WorkflowRunner", ["--set", f"pace_window={self.pace_window}"]),
            "data": ("swf_testbed.agents.data:DataAgent", []),
            "processing": ("swf_testbed.agents.processing:ProcessingAgent", []),
            "fastmon": ("swf_testbed.agents.fastmon:FastMonAgent", []),
            "fast-processing": ("swf_testbed.agents.fast_processing:FastProcessingAgent", []),
        }
        for i in range(1, self.workers + 1):
            out[f"worker-{i}"] = ("swf_testbed.agents.worker:WorkerAgent", [])
        return out

    def start(self) -> None:
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, **self.broker.env, "PYTHONPATH": path}
        for name, (target, extra) in self.specs().items():
            args = ["agent", "run", target, "--name", name, "--namespace", self.namespace,
                    "--heartbeat-interval", "1", *extra]
            if self.profile_dir is not None or self.tcp_nodelay:
                out = str(self.profile_dir / f"{name}.prof") if self.profile_dir is not None else ""
                cmd = [sys.executable, "-c", LAUNCHER, "1" if self.tcp_nodelay else "0", out, *args]
            else:
                cmd = [sys.executable, "-m", "swf_testbed.cli", *args]
            with open(self.logs / f"{name}.log", "ab") as out:
                self.procs[name] = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Counting(stomp.ConnectionListener):
    """Counts the namespace's messages by identity; json only (no schema), to stay light."""

    KINDS = ("stf_gen", "stf_ready", "processing_complete", "tf_file_registered", "slice", "slice_completed")

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
        self.msg_ids: set[str] = set()
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
                    self.execution_id = m["execution_id"]  # before the run's first message is looked at
            eid = self.execution_id
            if eid is None or m.get("execution_id") != eid:
                self.changed.notify_all()
                return
            if m["msg_id"] not in self.msg_ids:  # each message once, whichever destination(s) it came by
                self.msg_ids.add(m["msg_id"])
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
    stf_per_s: float
    msgs: int
    msgs_per_s: float
    expected: dict[str, int]
    seen: dict[str, int]
    lost: int
    duplicated: int
    stf_chain_per_s: float = 0.0
    """STFs per second through data and processing alone (to the last processing_complete)."""
    broker_msgs_per_s: float = 0.0
    ratio: float = 0.0
    status: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 2) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def one_run(agents: Agents, counting: Counting, client: BrokerClient, stfs: int, rate: float, slices_per_sample: int,
            stall: float) -> RunFigures:
    ns = agents.namespace
    before = dict(counting.beats.get("fastmon", {}))
    request = RunWorkflow(namespace=ns, sender="bench", workflow_name="stf_datataking",
                          config="fast_processing_default", time_scale=0,
                          params={"stf_count": stfs, "stf_sampling_rate": rate, "slices_per_sample": slices_per_sample})
    with counting.lock:
        counting.reset(request.msg_id)
    start = time.time()
    client.send(control_queue(ns), request)
    with counting.lock:
        deadline = time.monotonic() + 60
        while not any(r.get("in_reply_to") == request.msg_id for r in counting.replies):
            if time.monotonic() > deadline:
                raise RuntimeError("no reply to run_workflow")
            counting.changed.wait(0.5)
        reply = next(r for r in counting.replies if r.get("in_reply_to") == request.msg_id)
        if reply["msg_type"] != "workflow_started":
            raise RuntimeError(f"run_workflow refused: {reply}")
        eid = reply["execution_id"]
        counting.last_change = time.monotonic()

    def expected() -> dict[str, int]:
        fastmon = counting.beats.get("fastmon", {})
        seen_by_fastmon = fastmon.get("stf_seen", 0) - before.get("stf_seen", 0)
        sampled = fastmon.get("stf_sampled", 0) - before.get("stf_sampled", 0)
        slices = sum(min(slices_per_sample, n) for n in counting.slice_sizes.values())
        return {"stf_gen": stfs, "stf_ready": stfs, "processing_complete": stfs,
                # fastmon's own count, once its heartbeat shows it saw every STF
                "tf_file_registered": sampled if seen_by_fastmon >= stfs else -1,
                "slice": slices, "slice_completed": slices}

    def unique(kind: str) -> int:
        return len(counting.seen[kind]) if kind != "slice" else len({k[0] for k in counting.seen["slice"]})

    with counting.lock:
        while True:
            exp = expected()
            done = exp["tf_file_registered"] >= 0 and all(unique(k) >= v for k, v in exp.items())
            completed = any(r.get("execution_id") == eid and r["msg_type"] != "workflow_started"
                            for r in counting.replies)
            if done and completed:
                break
            if time.monotonic() - counting.last_change > stall:
                print(f"  stalled: nothing new for {stall:g} s", file=sys.stderr)
                break
            counting.changed.wait(0.2)
        end = counting.last_seen
        exp = expected()
        if exp["tf_file_registered"] < 0:
            exp["tf_file_registered"] = unique("tf_file_registered")
        seen = {k: unique(k) for k in counting.KINDS}
        lost = sum(max(0, exp[k] - seen[k]) for k in counting.KINDS)
        dup = sum(n - 1 for k in counting.KINDS for n in counting.seen[k].values() if n > 1)
        msgs = counting.total
        chain_end = counting.last_new.get("processing_complete", end)
        final = next((r for r in counting.replies if r.get("execution_id") == eid
                      and r["msg_type"] != "workflow_started"), {})
    seconds = max(end - start, 1e-9)
    return RunFigures(rate=rate, stfs=stfs, seconds=seconds, stf_per_s=stfs / seconds, msgs=msgs,
                      msgs_per_s=msgs / seconds, expected=exp, seen=seen, lost=lost, duplicated=dup,
                      stf_chain_per_s=stfs / max(chain_end - start, 1e-9),
                      status=final.get("status", final.get("msg_type", "no reply")))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 STFs per run instead of 1000")
    parser.add_argument("--stfs", type=int, default=None, help="STFs per run (default 1000, --quick 100)")
    parser.add_argument("--broker", choices=("embedded", "activemq"), default="embedded")
    parser.add_argument("--rates", default=",".join(str(r) for r in RATES), help="STF sampling rates, comma-separated")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--slices-per-sample", type=int, default=15)
    parser.add_argument("--pace-window", type=int, default=100, help="STFs in flight the runner allows")
    parser.add_argument("--raw-messages", type=int, default=None, help="raw baseline messages (default 5000)")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds without progress that end a run")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR", help="cProfile every agent into DIR")
    parser.add_argument("--tcp-nodelay", action="store_true",
                        help="experiment: agents' sockets with TCP_NODELAY (the client does not set it)")
    args = parser.parse_args(argv)
    stfs = args.stfs or (100 if args.quick else 1000)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]
    raw_n = args.raw_messages or (3000 if args.quick else 5000)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()

    log = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    log(f"starting the {args.broker} broker …")
    broker = start_embedded() if args.broker == "embedded" else start_activemq()
    ns = f"bench{uuid.uuid4().hex[:6]}"
    agents = Agents(broker, ns, args.workers, args.pace_window, args.profile, args.tcp_nodelay)
    runs: list[RunFigures] = []
    conn: stomp.Connection | None = None
    client: BrokerClient | None = None
    try:
        log(f"raw broker throughput: {raw_n} messages, one stomp.py producer → one consumer on a topic …")
        raw = raw_throughput(broker, raw_n)
        log(f"  {raw['msgs_per_s']:.0f} msg/s ({raw['received']}/{raw['messages']} received)")

        counting = Counting(ns)
        conn = stomp.Connection([(broker.host, broker.port)], auto_decode=False, heartbeats=(0, 0))
        conn.set_listener("count", counting)
        conn.connect(wait=True)
        dests = [RUN_TOPIC, data_topic(ns), worker_topic(ns), replies_topic(ns), MONITOR_TOPIC, HEARTBEAT_TOPIC]
        for i, dest in enumerate(dests):
            conn.subscribe(str(dest), id=str(i), ack="auto", headers={"receipt": f"sub{i}"})
        with counting.lock:
            while counting.subscribed < len(dests):
                counting.changed.wait(1)

        log(f"starting {len(agents.specs())} agent processes in namespace {ns} (logs in {agents.logs}) …")
        agents.start()
        names = set(agents.specs())
        deadline = time.monotonic() + 120
        with counting.lock:
            while {n for n, s in counting.states.items() if s == "READY"} < names:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"agents not READY: {counting.states}")
                counting.changed.wait(0.5)
        client = BrokerClient(broker.settings(), client_name="bench-control").start()

        for rate in rates:
            log(f"run: {stfs} STFs at time scale 0, sampling rate {rate:g} …")
            fig = one_run(agents, counting, client, stfs, rate, args.slices_per_sample, args.stall)
            fig.broker_msgs_per_s = raw["msgs_per_s"]
            fig.ratio = fig.msgs_per_s / raw["msgs_per_s"] if raw["msgs_per_s"] else 0.0
            runs.append(fig)
            log(f"  {fig.stf_per_s:.1f} STF/s end to end ({fig.stf_chain_per_s:.1f} STF/s through data and "
                f"processing), {fig.msgs_per_s:.0f} msg/s "
                f"({fig.msgs} messages in {fig.seconds:.2f} s), "
                f"lost {fig.lost}, duplicated {fig.duplicated}, ratio to raw broker {fig.ratio:.3f}, {fig.status}")
            log(f"    expected {fig.expected}")
            log(f"    seen     {fig.seen}")
            time.sleep(1.5)  # let heartbeats settle (READY) before the next run
    finally:
        if client is not None:
            client.close()
        agents.stop()
        if conn is not None:
            try:
                conn.disconnect()
            except Exception:  # noqa: BLE001
                pass
        broker.stop()

    print()
    print(f"{'sampling rate':>14} {'STFs':>6} {'STF/s':>9} {'msg/s':>9} {'lost':>5} {'dup':>5} "
          f"{'raw msg/s':>10} {'ratio':>6}")
    for fig in runs:
        print(f"{fig.rate:>14g} {fig.stfs:>6} {fig.stf_per_s:>9.1f} {fig.msgs_per_s:>9.0f} {fig.lost:>5} "
              f"{fig.duplicated:>5} {fig.broker_msgs_per_s:>10.0f} {fig.ratio:>6.3f}")
    headline = next((f for f in runs if f.rate == 0.05), runs[0])
    print(f"target at sampling rate 0.05: {TARGET_STF_PER_S:.0f} STF/s (100x ePIC real time); "
          f"measured {headline.stf_per_s:.1f} STF/s")
    lost = sum(f.lost for f in runs)
    dup = sum(f.duplicated for f in runs)
    figures = {
        "broker": args.broker, "stfs": headline.stfs, "sampling_rate": headline.rate,
        "stf_per_s": round(headline.stf_per_s, 1), "msgs_per_s": round(headline.msgs_per_s, 1),
        "stf_chain_per_s": round(headline.stf_chain_per_s, 1),
        "lost": lost, "duplicated": dup, "broker_msgs_per_s": round(headline.broker_msgs_per_s, 1),
        "ratio": round(headline.ratio, 4), "target_stf_per_s": TARGET_STF_PER_S,
        "meets_target": headline.stf_per_s >= TARGET_STF_PER_S and headline.lost == 0,
        "workers": args.workers, "pace_window": args.pace_window, "tcp_nodelay": args.tcp_nodelay,
        "runs": {f"{f.rate:g}": f.as_dict() for f in runs},
    }
    sys.stdout.flush()
    print(json.dumps(figures), flush=True)
    return 0 if lost == 0 and dup == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

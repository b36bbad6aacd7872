"""Broker throughput: the embedded broker against ActiveMQ Classic and RabbitMQ, same client.

Starts the embedded broker and ActiveMQ on free loopback ports
(``swf_testbed.testing.brokers``), uses RabbitMQ's STOMP plugin where it
answers (``SWF_TEST_RABBITMQ_STOMP``, in a virtual host of its own, deleted
afterwards) and, for each pattern (topic 1→1, topic 1→3, queue 1→4 with
competing consumers) sends N JSON bodies of about 200 bytes from one stomp.py
producer. The consumers are stomp.py clients, each in its own process so the
GIL does not couple them to the producer or to each other. Topics use
``auto`` ack; the queue uses ``client-individual`` with an ACK per message
and a prefetch of 100. The client code is the same for every broker; only
the spelling differs (RabbitMQ's prefetch header is ``prefetch-count``).

The two persistent rows send ``persistent:true`` with a receipt on every
SEND, at most 100 awaiting their RECEIPT (a window, as an agent runtime would
keep): the embedded broker journals them in its ``--data-dir`` and confirms
after the group's fsync, ActiveMQ stores them in KahaDB, RabbitMQ in a
durable queue.

Measured: messages delivered per second end to end, from the first SEND to
the last MESSAGE received by any consumer, counting every consumer's copy of
a fanned-out message as one delivery; and the mean per-consumer rate (what
each consumer received over the same span, measured to its own last
message). Every delivery is checked: nothing lost, nothing duplicated.

Prints a Rich table and, as the very last line, one JSON object with all
figures. Each figure is the median of 3 runs (the brokers taking turns);
``--quick`` runs 3 000 messages per pattern instead of 20 000, once.

Usage: ``python bench/broker_throughput.py [--quick] [--messages N] [--brokers LIST]``
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field, replace
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import stomp
from rich.console import Console
from rich.table import Table

from swf_testbed.mq.destinations import Destination
from swf_testbed.testing.brokers import (
    RABBITMQ_STOMP,
    BrokerProcess,
    rabbitmq_stomp,
    rabbitmq_vhost,
    start_activemq,
    start_embedded,
)

BROKERS = ("embedded", "activemq", "rabbitmq")
DISPLAY = {"embedded": "embedded", "activemq": "ActiveMQ", "rabbitmq": "RabbitMQ"}
PREFETCH = 100
STALL_S = 10.0  # no new delivery for this long after the last send: the rest is lost


@dataclass(frozen=True)
class Pattern:
    key: str
    label: str
    kind: str  # "topic" | "queue"
    consumers: int
    persistent: bool = (
        False  # persistent:true, each SEND with a receipt, RECEIPT_WINDOW outstanding
    )

    @property
    def ack(self) -> str:
        return "auto" if self.kind == "topic" else "client-individual"

    def deliveries(self, messages: int) -> int:
        """Deliveries expected in total: every subscriber gets every message of a topic."""
        return messages * self.consumers if self.kind == "topic" else messages


PATTERNS = (
    Pattern("topic_1_1", "topic 1→1", "topic", 1),
    Pattern("topic_1_3", "topic 1→3", "topic", 3),
    Pattern("queue_1_4", "queue 1→4", "queue", 4),
    Pattern("queue-persistent_1_1", "queue 1→1 persistent", "queue", 1, persistent=True),
    Pattern("queue-persistent_1_4", "queue 1→4 persistent", "queue", 4, persistent=True),
)
RECEIPT_WINDOW = (
    100  # persistent rows: most sends awaiting their RECEIPT, as an agent runtime would keep
)


class _Receipts(stomp.ConnectionListener):
    """The producer's window of outstanding receipts."""

    def __init__(self) -> None:
        self.window = threading.Semaphore(RECEIPT_WINDOW)
        self.received = 0

    def on_receipt(self, frame: Any) -> None:
        self.received += 1
        self.window.release()

    def acquire(self) -> None:
        if not self.window.acquire(timeout=60):
            raise RuntimeError("no RECEIPT for a persistent send within 60 s")


# --------------------------------------------------------------------------- consumer process


class _Counter(stomp.ConnectionListener):
    def __init__(
        self, conn: stomp.Connection, messages: int, ack: bool, counter: Synchronized[int]
    ) -> None:
        self.conn = conn
        self.ack = ack
        self.seen = bytearray(messages)
        self.count = 0
        self.extra = 0  # bodies whose seq is out of range (should never happen)
        self.first = 0.0
        self.last = 0.0
        self.counter = counter
        self.subscribed = threading.Event()

    def on_receipt(self, frame: Any) -> None:
        self.subscribed.set()

    def on_message(self, frame: Any) -> None:
        now = time.time()
        if self.ack:
            self.conn.ack(frame.headers["message-id"], frame.headers["subscription"])
        seq = json.loads(frame.body)["seq"]
        if 0 <= seq < len(self.seen):
            if self.seen[seq] < 255:
                self.seen[seq] += 1
        else:
            self.extra += 1
        if not self.count:
            self.first = now
        self.last = now
        self.count += 1
        self.counter.value = self.count  # single writer: no lock needed


@dataclass(frozen=True)
class Endpoint:
    """How a consumer process reaches a broker (picklable, unlike a BrokerProcess)."""

    host: str
    port: int
    vhost: str
    login: dict[str, str]

    @classmethod
    def of(cls, broker: BrokerProcess) -> Endpoint:
        return cls(broker.host, broker.port, broker.vhost, broker.connect_kwargs())

    def connect(self) -> stomp.Connection:
        return stomp.Connection([(self.host, self.port)], auto_decode=False, vhost=self.vhost)


def consume(
    endpoint: Endpoint,
    destination: str,
    headers: dict[str, str],
    ack: str,
    messages: int,
    counter: Synchronized[int],
    ready: Any,
    stop: Any,
    results: Any,
) -> None:
    """One consumer: subscribe, count and check every message until told to stop, report."""
    conn = endpoint.connect()
    listener = _Counter(conn, messages, ack != "auto", counter)
    conn.set_listener("counter", listener)
    conn.connect(wait=True, **endpoint.login)
    conn.subscribe(destination, id="1", ack=ack, headers={**headers, "receipt": "subscribed"})
    if not listener.subscribed.wait(30):
        raise RuntimeError(f"no RECEIPT for SUBSCRIBE {destination}")
    ready.set()
    stop.wait()
    results.put(
        {
            "count": listener.count,
            "first": listener.first,
            "last": listener.last,
            "seen": bytes(listener.seen),
            "extra": listener.extra,
        }
    )
    conn.disconnect()


# --------------------------------------------------------------------------- one measurement


@dataclass
class Result:
    rate: float  # deliveries per second, end to end
    per_consumer: float  # mean of each consumer's own rate
    delivered: int
    expected: int
    lost: int
    duplicated: int
    seconds: float
    counts: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.delivered == self.expected


def make_bodies(messages: int) -> list[bytes]:
    """JSON bodies of about 200 bytes, shaped like the testbed's stf_gen messages."""
    bodies = []
    for seq in range(messages):
        body = {
            "msg_type": "stf_gen",
            "namespace": "bench",
            "sender": "bench-producer",
            "msg_id": uuid.UUID(int=seq).hex,
            "timestamp": "2025-01-01T00:00:00.000000+00:00",
            "run_id": 100001,
            "seq": seq,
            "filename": f"swf.100001.{seq:06d}.stf",
        }
        bodies.append(json.dumps(body, separators=(",", ":")).encode())
    return bodies


def _wait_for_deliveries(
    counters: list[Synchronized[int]], expected: int, label: str, console: Console
) -> None:
    """Until the consumers counted ``expected`` deliveries, or nothing came for STALL_S."""
    last_total, last_change = -1, time.monotonic()
    while True:
        total = sum(c.value for c in counters)
        if total >= expected:
            return
        if total != last_total:
            last_total, last_change = total, time.monotonic()
        elif time.monotonic() - last_change > STALL_S:
            console.print(f"[red]{label}: stalled at {total} of {expected}[/red]")
            return
        time.sleep(0.01)


def run_pattern(
    broker: BrokerProcess, pattern: Pattern, bodies: list[bytes], console: Console
) -> Result:
    ctx = mp.get_context("spawn")
    target = Destination(f"bench.{pattern.key}.{uuid.uuid4().hex}", pattern.kind)
    destination = target.address(broker.style)
    subscribe_headers = target.subscribe_headers(broker.style, prefetch=PREFETCH)
    endpoint = Endpoint.of(broker)
    messages = len(bodies)
    stop = ctx.Event()
    results = ctx.Queue()
    counters = [ctx.Value("q", 0, lock=False) for _ in range(pattern.consumers)]
    readies = [ctx.Event() for _ in range(pattern.consumers)]
    procs = [
        ctx.Process(
            target=consume,
            daemon=True,
            args=(
                endpoint,
                destination,
                subscribe_headers,
                pattern.ack,
                messages,
                counters[i],
                readies[i],
                stop,
                results,
            ),
        )
        for i in range(pattern.consumers)
    ]
    for proc in procs:
        proc.start()
    try:
        for proc, ready in zip(procs, readies, strict=True):
            if not ready.wait(60):
                raise RuntimeError(f"consumer {proc.pid} did not subscribe on {broker.name}")

        producer = endpoint.connect()
        receipts = _Receipts()
        producer.set_listener("receipts", receipts)
        producer.connect(wait=True, **endpoint.login)
        expected = pattern.deliveries(messages)
        start = time.time()
        if pattern.persistent:
            for i, body in enumerate(bodies):
                receipts.acquire()
                producer.send(destination, body, headers={"persistent": "true", "receipt": f"r{i}"})
        else:
            for body in bodies:
                producer.send(destination, body)

        _wait_for_deliveries(counters, expected, f"{broker.name} {pattern.label}", console)
        time.sleep(0.2)  # late duplicates, if any, show up in the counts
        if pattern.persistent:
            for _ in range(RECEIPT_WINDOW):  # every send confirmed
                receipts.acquire()
        producer.disconnect()
        stop.set()
        reports = [results.get(timeout=60) for _ in procs]
    finally:
        stop.set()
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)

    counts = [r["count"] for r in reports]
    delivered = sum(counts)
    last = max((r["last"] for r in reports if r["count"]), default=start)
    seconds = max(last - start, 1e-9)
    per_consumer = [r["count"] / max(r["last"] - start, 1e-9) for r in reports if r["count"]]
    if pattern.kind == "topic":
        lost = sum(r["seen"].count(0) for r in reports)
        duplicated = sum(sum(n - 1 for n in r["seen"] if n > 1) for r in reports)
    else:  # the consumers share the queue: each message once over all of them
        merged = [sum(col) for col in zip(*(r["seen"] for r in reports), strict=True)]
        lost = merged.count(0)
        duplicated = sum(n - 1 for n in merged if n > 1)
    duplicated += sum(r["extra"] for r in reports)
    return Result(
        delivered / seconds,
        sum(per_consumer) / max(len(per_consumer), 1),
        delivered,
        pattern.deliveries(messages),
        lost,
        duplicated,
        seconds,
        counts,
    )


def measure(
    brokers: dict[str, BrokerProcess],
    bodies: list[bytes],
    warmup: list[bytes],
    repeat: int,
    console: Console,
) -> dict[str, dict[str, Result]]:
    """Every pattern on every broker, ``repeat`` times: the median run's figures per broker."""
    results: dict[str, dict[str, Result]] = {p.key: {} for p in PATTERNS}
    for broker in brokers.values():  # JIT, connection set-up, first-destination costs
        run_pattern(broker, PATTERNS[0], warmup, console)
    for pattern in PATTERNS:
        runs: dict[str, list[Result]] = {name: [] for name in brokers}
        for _ in range(repeat):  # the brokers take turns, so drifts of the machine hit each
            for name, broker in brokers.items():
                result = run_pattern(broker, pattern, bodies, console)
                runs[name].append(result)
                flag = (
                    ""
                    if result.ok
                    else f"  [red]LOST {result.lost} DUPLICATED {result.duplicated}[/red]"
                )
                console.print(
                    f"{name:>9} {pattern.label}: {result.rate:9.0f} msg/s "
                    f"({result.delivered}/{result.expected} in {result.seconds:.2f} s, "
                    f"per consumer {result.counts}){flag}"
                )
        for name, found in runs.items():
            median = sorted(found, key=lambda r: r.rate)[len(found) // 2]
            # the median run's rates; a loss or duplicate in any run counts
            results[pattern.key][name] = replace(
                median,
                lost=sum(r.lost for r in found),
                duplicated=sum(r.duplicated for r in found),
                delivered=median.delivered
                if all(r.ok for r in found)
                else min(r.delivered for r in found),
            )

    return results


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="a small run: 3 000 messages per pattern"
    )
    parser.add_argument(
        "--messages", type=int, default=None, help="messages per pattern (default 20 000)"
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        help="runs per pattern and broker, the median is reported (default 3; 1 with --quick)",
    )
    parser.add_argument(
        "--brokers",
        default=None,
        help="comma-separated subset of: embedded,activemq,rabbitmq (default all three, "
        "RabbitMQ where its STOMP plugin answers)",
    )
    args = parser.parse_args(argv)
    messages = args.messages or (3_000 if args.quick else 20_000)
    repeat = max(1, args.repeat or (1 if args.quick else 3))
    names = [n.strip() for n in (args.brokers or ",".join(BROKERS)).split(",") if n.strip()]
    if not names or any(n not in BROKERS for n in names):
        parser.error(f"--brokers takes a subset of {','.join(BROKERS)}")

    console = Console(stderr=True, soft_wrap=True)
    out = Console(width=None if sys.stdout.isatty() else 120)
    bodies = make_bodies(messages)
    warmup = make_bodies(min(2_000, messages))
    brokers: dict[str, BrokerProcess] = {}
    with contextlib.ExitStack() as cleanup:
        for name in list(names):
            console.print(f"starting {name} broker …")
            broker = _start(name, cleanup)
            if broker is None:
                if args.brokers:
                    parser.error(f"RabbitMQ's STOMP plugin does not answer at {RABBITMQ_STOMP}")
                console.print(
                    f"RabbitMQ's STOMP plugin does not answer at {RABBITMQ_STOMP}: no row"
                )
                names.remove(name)
                continue
            brokers[name] = broker
        results = measure(brokers, bodies, warmup, repeat, console)

    table = Table(
        title=f"STOMP throughput: {messages} messages of ~{len(bodies[-1])} B per pattern, "
        f"stomp.py clients, median of {repeat}"
    )
    table.add_column("pattern")
    for name in names:
        table.add_column(f"{DISPLAY[name]} msg/s", justify="right")
    ratios = [other for other in ("activemq", "rabbitmq") if {"embedded", other} <= set(names)]
    for other in ratios:
        table.add_column(f"ratio embedded/{DISPLAY[other]}", justify="right", no_wrap=True)
    for name in names:
        table.add_column(f"{DISPLAY[name]} per consumer", justify="right")

    figures: dict[str, Any] = {}
    all_ok = True
    for pattern in PATTERNS:
        row = results[pattern.key]
        entry: dict[str, Any] = {}
        cells = [pattern.label]
        for name in names:
            r = row[name]
            all_ok &= r.ok
            entry[name] = round(r.rate, 1)
            cells.append(f"{r.rate:,.0f}" + ("" if r.ok else " (LOSS)"))
        for other in ratios:  # "ratio" is embedded/ActiveMQ, "ratio_rabbitmq" embedded/RabbitMQ
            ratio = row["embedded"].rate / row[other].rate if row[other].rate else None
            key = "ratio" if other == "activemq" else f"ratio_{other}"
            entry[key] = round(ratio, 3) if ratio is not None else None
            cells.append(f"{ratio:.2f}" if ratio is not None else "–")
        entry["per_consumer"] = {name: round(row[name].per_consumer, 1) for name in names}
        entry["lost"] = {name: row[name].lost for name in names}
        entry["duplicated"] = {name: row[name].duplicated for name in names}
        cells.extend(f"{row[name].per_consumer:,.0f}" for name in names)
        table.add_row(*cells)
        figures[pattern.key] = entry
    figures["messages"] = messages
    figures["repeat"] = repeat
    figures["body_bytes"] = len(bodies[-1])
    figures["ok"] = all_ok
    out.print(table)
    sys.stdout.flush()
    print(json.dumps(figures), flush=True)
    return 0 if all_ok else 1


def _start(name: str, cleanup: contextlib.ExitStack) -> BrokerProcess | None:
    """One broker of the comparison, stopped (or its virtual host deleted) on ``cleanup``.

    The embedded broker journals persistent messages (``--data-dir``), ActiveMQ in KahaDB,
    its default; RabbitMQ is the running server, in a virtual host of its own.
    """
    if name == "rabbitmq":
        return rabbitmq_stomp(cleanup.enter_context(rabbitmq_vhost("swf-bench")))
    if name == "embedded":
        broker = start_embedded(args=["--data-dir", tempfile.mkdtemp(prefix="swf-bench-journal-")])
    else:
        broker = start_activemq()
    cleanup.callback(broker.stop)
    return broker


if __name__ == "__main__":
    sys.exit(main())

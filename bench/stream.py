"""Idle message streams against page loads: does holding hundreds of SSE clients slow the monitor?

Starts the monitor's web (``swf-testbed monitor serve``, uvicorn, one process)
on a fresh SQLite database seeded with N messages, then times ``--repeat``
loads of each of three pages (dashboard ``/``, messages list ``/messages/``,
API ``/api/workflow-messages/?limit=50``), one at a time over HTTP:

1. baseline: no stream open;
2. with ``--streams`` clients (default 200) connected to ``/api/messages/stream/``
   and idle (their filter matches nothing; the process's poller runs as usual);
3. the baseline again, after the streams are closed (drift on a shared machine).

Prints p50 / p95 per phase and the ratio p95 with streams / p95 without (the
mean of the two baselines); the aim is a ratio under 2. Last line: one JSON object.

Usage: ``python bench/stream.py [--quick] [--streams N] [--repeat R] [--messages N]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.monitor_scale import open_monitor  # noqa: E402 -- after the path is set

PAGES = ("/", "/messages/", "/api/workflow-messages/?limit=50")


def seed(n: int) -> str:
    """N valid messages recorded as the ingest records them; returns an API token."""
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from swf_testbed.messages import Heartbeat, StfGen
    from swf_testbed.monitor.api.recording import Incoming, record

    now = datetime.now(UTC)
    batch: list[Incoming] = []
    for i in range(n):
        if i % 10 == 0:
            msg: Any = Heartbeat(
                namespace="bench",
                sender=f"agent-{i % 7}",
                agent_name=f"agent-{i % 7}",
                agent_type="bench",
                instance_id=f"i{i % 7}",
                pid=1,
                hostname="h",
                operational_state="READY",
                interval_s=30,
            )
        else:
            msg = StfGen(
                namespace="bench",
                sender="daq",
                execution_id=f"exec-{i // 1000}",
                run_id=1000 + i // 1000,
                state="run",
                substate="physics",
                filename=f"swf.{i:08d}.stf",
                sequence=i,
                size_bytes=1000,
                checksum="0000abcd",
                tf_count=10,
                start=now,
                end=now,
            )
        batch.append(Incoming(body=msg.to_bytes(), destination="/topic/epictopic"))
        if len(batch) == 500:
            record(batch)
            batch = []
    if batch:
        record(batch)
    user = User.objects.create_user("bench", password=uuid.uuid4().hex)
    return str(Token.objects.create(user=user).key)


def page_times(base: str, repeat: int) -> dict[str, float]:
    times: list[float] = []
    with httpx.Client(base_url=base, timeout=60) as client:
        for page in PAGES:  # warm up
            client.get(page).raise_for_status()
        for _ in range(repeat):
            for page in PAGES:
                t = time.perf_counter()
                client.get(page).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
    times.sort()
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[min(len(times) - 1, round(0.95 * (len(times) - 1)))], 1),
        "requests": len(times),
    }


class IdleStreams:
    """N SSE clients held open by one asyncio loop in a thread (as N remote followers would)."""

    def __init__(self, base: str, token: str, count: int) -> None:
        self.base, self.token, self.count = base, token, count
        self.connected = 0
        self.failures: list[str] = []
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, client: httpx.AsyncClient, index: int) -> None:
        assert self._stop is not None
        try:
            async with client.stream(
                "GET",
                "/api/messages/stream/",
                params={"namespace": f"nobody-{index}"},
                headers={"Authorization": f"Token {self.token}"},
            ) as response:
                if response.status_code != 200:
                    self.failures.append(f"HTTP {response.status_code}")
                    return
                lines = response.aiter_lines()
                async for line in lines:
                    if line.startswith("event: connected"):
                        self.connected += 1
                        break
                reader = asyncio.ensure_future(self._drain(lines))
                await self._stop.wait()
                reader.cancel()
        except Exception as exc:  # noqa: BLE001 - counted and reported
            self.failures.append(repr(exc))

    @staticmethod
    async def _drain(lines: Any) -> None:
        async for _ in lines:  # heartbeats
            pass

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        limits = httpx.Limits(max_connections=self.count + 10, max_keepalive_connections=0)
        async with httpx.AsyncClient(
            base_url=self.base, limits=limits, timeout=httpx.Timeout(60, read=None)
        ) as client:
            await asyncio.gather(*(self._one(client, i) for i in range(self.count)))

    def open(self, timeout: float = 300) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while self.connected < self.count and not self.failures and time.monotonic() < deadline:
            time.sleep(0.1)
        if self.connected < self.count:
            raise SystemExit(
                f"only {self.connected} of {self.count} streams connected: {self.failures[:3]}"
            )

    def close(self) -> None:
        if self._loop and self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer page loads and messages")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=None, help="loads of each page per phase")
    parser.add_argument("--messages", type=int, default=None)
    args = parser.parse_args()
    repeat = args.repeat or (30 if args.quick else 100)
    n = args.messages or (2_000 if args.quick else 20_000)

    workdir = Path(tempfile.mkdtemp(prefix="swf-bench-stream-"))
    db_url = f"sqlite:///{workdir / 'stream.sqlite3'}"
    open_monitor(db_url, workdir)
    from swf_testbed.testing.monitor import MonitorWebProcess

    token = seed(n)
    web = MonitorWebProcess(db_url).start()
    try:
        before = page_times(web.url, repeat)
        print(f"no streams:        p50 {before['p50_ms']} ms, p95 {before['p95_ms']} ms")
        streams = IdleStreams(web.url, token, args.streams)
        t = time.perf_counter()
        streams.open()
        connect_s = time.perf_counter() - t
        status = httpx.get(
            web.url + "/api/messages/stream/status/",
            headers={"Authorization": f"Token {token}"},
            timeout=60,
        ).json()
        with_streams = page_times(web.url, repeat)
        print(
            f"{status['connected_clients']} idle streams: p50 {with_streams['p50_ms']} ms, "
            f"p95 {with_streams['p95_ms']} ms (all connected in {connect_s:.1f} s)"
        )
        streams.close()
        after = page_times(web.url, repeat)
        print(f"no streams again:  p50 {after['p50_ms']} ms, p95 {after['p95_ms']} ms")
    finally:
        web.stop()
    baseline = (before["p95_ms"] + after["p95_ms"]) / 2
    ratio = round(with_streams["p95_ms"] / baseline, 2) if baseline else None
    print(f"p95 with {args.streams} streams / without: {ratio} (aim < 2)")
    print(
        json.dumps(
            {
                "benchmark": "stream",
                "streams": args.streams,
                "connected": status["connected_clients"],
                "messages": n,
                "page_loads_per_phase": with_streams["requests"],
                "connect_s": round(connect_s, 1),
                "without_streams": before,
                "with_streams": with_streams,
                "without_streams_after": after,
                "baseline_p95_ms": round(baseline, 1),
                "with_streams_p95_ms": with_streams["p95_ms"],
                "ratio": ratio,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

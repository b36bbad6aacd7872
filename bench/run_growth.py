"""Run growth: does the ingest's cost per STF stay flat as a run grows?

Records one run of N STFs at sampling 1.0 the way the ingest does
(``recording.record``, one transaction per batch), each STF as the chain
sends it: ``stf_gen``, ``stf_ready``, ``tf_file_registered``, 15 ``slice``,
15 ``slice_result``, ``processing_complete`` (34 messages). A batch holds
5 STFs (170 messages, what the ingest's 100 ms flush gathers at about 50
STF/s). The CPU time of this process is measured per STF over windows of
the run: the first 100 STFs, STFs 901–1 000 and 9 901–10 000.

Two ways of keeping the runs' counters, each on a fresh database, one
after the other in the same run:

* ``differences``: what the ingest does (``run_counters``);
* ``recount``: the same, plus an exact count of the run after every batch,
  which is what the ingest did before (``recount_run``), for comparison.

Each window's figure is also given as a ratio to the first window of the same
way: 1.0 is flat. Last line: one JSON object with every figure.

Usage: ``python bench/run_growth.py [--quick] [--stfs N] [--database-url URL]``
(``--quick``: 1 000 STFs; ``--database-url``: a PostgreSQL server, on which a
temporary database is made for each way).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.monitor_scale import make_database, open_monitor  # noqa: E402 -- after the path is set

SLICES = 15
STFS_PER_BATCH = 5
WINDOW = 100
RUN = 424242


def stf_messages(i: int) -> list[Any]:
    """The messages of STF ``i`` of the run, at sampling 1.0."""
    from swf_testbed import messages as msgs

    common: dict[str, Any] = {
        "namespace": "growth",
        "execution_id": "growth-exec",
        "run_id": RUN,
        "state": "run",
        "substate": "physics",
    }
    stf = f"swf.{RUN}.{i:06d}.stf"
    sample = f"swf.{RUN}.{i:06d}.tf.0001"
    out: list[Any] = [
        msgs.StfGen(
            sender="daq",
            filename=stf,
            sequence=i,
            size_bytes=2_000_000_000,
            checksum="0a0b0c0d",
            tf_count=1000,
            start="2026-01-01T00:00:00Z",
            end="2026-01-01T00:00:01Z",
            **common,
        ),
        msgs.StfReady(
            sender="data",
            filename=stf,
            url=f"file:///buffer/{stf}",
            sequence=i,
            size_bytes=2_000_000_000,
            checksum="0a0b0c0d",
            **common,
        ),
        msgs.TfFileRegistered(
            sender="fastmon",
            stf_filename=stf,
            tf_filename=sample,
            tf_first=0,
            tf_last=999,
            tf_count=1000,
            size_bytes=1_000_000,
            **common,
        ),
    ]
    for s in range(SLICES):
        out.append(
            msgs.Slice(
                sender="fast-processing",
                slice_id=i * SLICES + s,
                tf_filename=sample,
                stf_filename=stf,
                tf_first=s * 66,
                tf_last=s * 66 + 65,
                tf_count=66,
                **common,
            )
        )
    for s in range(SLICES):
        out.append(
            msgs.SliceResult(
                sender=f"worker-{s % 4}",
                slice_id=i * SLICES + s,
                tf_filename=sample,
                worker_id=f"worker-{s % 4}",
                status="completed",
                processing_time_s=0.01,
                **common,
            )
        )
    out.append(
        msgs.ProcessingComplete(sender="processing", filename=stf, processing_time_s=0.5, **common)
    )
    return out


def windows_of(n: int) -> list[tuple[int, int]]:
    """(first, last) STF numbers of each measured window, 1-based."""
    ends = [size for size in (100, 1_000, 10_000, 100_000) if size < n] + [n]
    return [(max(1, end - WINDOW + 1), end) for end in ends]


def measure(n: int, recount_each_batch: bool) -> dict[str, Any]:
    from django.db import transaction

    from swf_testbed.monitor.api import models as m
    from swf_testbed.monitor.api import run_counters
    from swf_testbed.monitor.api.recording import Incoming, record

    windows = windows_of(n)
    wall_start = time.perf_counter()
    marks = {first - 1 for first, _ in windows} | {last for _, last in windows}
    cpu = 0.0  # of recording only: building the bodies is the senders' work
    cpu_at: dict[int, float] = {0: cpu}
    for start in range(0, n, STFS_PER_BATCH):
        stop = min(n, start + STFS_PER_BATCH)
        batch = [
            Incoming(body=msg.to_bytes(), destination="/topic/epictopic")
            for i in range(start, stop)
            for msg in stf_messages(i)
        ]
        began = time.process_time()
        record(batch)
        if recount_each_batch:
            with transaction.atomic():
                run_counters.recount(RUN)
        cpu += time.process_time() - began
        for mark in marks:
            if start < mark <= stop:
                cpu_at[mark] = cpu
    state = m.RunState.objects.get(run_number=RUN)
    exact = run_counters.counted(RUN)
    assert {k: getattr(state, k) for k in exact} == exact, "the counters are not the count"
    assert state.slices_completed == n * SLICES, state.slices_completed
    per_stf = {}
    for first, last in windows:
        # cpu between the marks first-1 and last; windows start on batch boundaries
        us = (cpu_at[last] - cpu_at[first - 1]) / (last - first + 1) * 1e6
        per_stf[f"{first}-{last}"] = round(us)
    base = next(iter(per_stf.values()))
    return {
        "cpu_us_per_stf": per_stf,
        "ratio_to_first": {k: round(v / base, 2) for k, v in per_stf.items()},
        "wall_s": round(time.perf_counter() - wall_start, 1),
        "slices": state.slices_created,
    }


def run_way(n: int, recount_each_batch: bool, database_url: str | None) -> dict[str, Any]:
    """One way on a fresh database, in a child process (Django is set up once per process)."""
    import subprocess

    argv = [sys.executable, __file__, "--child", "--stfs", str(n)]
    if recount_each_batch:
        argv.append("--recount")
    if database_url:
        argv += ["--database-url", database_url]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"run_growth child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="swf-bench-growth-"))
    db_url, drop = make_database(args.database_url, workdir)
    try:
        open_monitor(db_url, workdir)
        from django.db import connection

        figures = measure(args.stfs, args.recount)
        figures["database"] = connection.vendor
    finally:
        drop()
    print(json.dumps(figures))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 000 STFs")
    parser.add_argument("--stfs", type=int, default=None, help="STFs in the run (default 10 000)")
    parser.add_argument("--database-url", default=None, help="a PostgreSQL server")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--recount", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.stfs = args.stfs or (1_000 if args.quick else 10_000)
    if args.child:
        return child(args)

    from rich.console import Console
    from rich.table import Table

    ways = {
        "differences": run_way(args.stfs, False, args.database_url),
        "recount": run_way(args.stfs, True, args.database_url),
    }
    table = Table(
        title=f"Ingest CPU per STF as one run grows to {args.stfs} STFs "
        f"({SLICES} slices each, {ways['differences']['database']})"
    )
    table.add_column("STFs")
    for way in ways:
        table.add_column(f"{way}: µs/STF", justify="right")
        table.add_column(f"{way}: ÷ first", justify="right")
    for window in ways["differences"]["cpu_us_per_stf"]:
        cells = [window]
        for figures in ways.values():
            cells += [
                f"{figures['cpu_us_per_stf'][window]:,}",
                f"{figures['ratio_to_first'][window]:.2f}",
            ]
        table.add_row(*cells)
    Console().print(table)
    last = list(ways["differences"]["cpu_us_per_stf"])[-1]
    summary = {
        "stfs": args.stfs,
        "database": ways["differences"]["database"],
        "ways": ways,
        "last_window": last,
        "growth": ways["differences"]["ratio_to_first"][last],
        "growth_recount": ways["recount"]["ratio_to_first"][last],
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

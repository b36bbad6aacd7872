"""Scale-out across hosts: STF/s at sampling 1.0 with the workers on 1, 2 and 3 hosts.

The layout of docs/operations.md, in network namespaces
(``swf_testbed.testing.hosts``): host A runs ActiveMQ and the monitor (on
PostgreSQL, ``SWF_TEST_POSTGRES_URL``, a fresh database per layout), host B
the chain, hosts W1…Wn four workers each, every host its own testbed.toml
and supervisord; ``swf-testbed run`` on B. For each layout: STF/s from the
run's start (its execution announced) to its end (every slice done), and the
CPU seconds each host's processes used meanwhile, ActiveMQ's JVM apart.

Every namespace shares this machine's cores: the figure shows how the cost
is spread over hosts, not more capacity. The baseline is the one-host layout
of the same run: STF/s and CPU per STF are printed as ratios to it.

Needs root (network namespaces) and ActiveMQ Classic. Prints a Rich table
and, as the last line, one JSON object with all figures.

Usage: ``python bench/hosts.py [--quick] [--stfs N] [--layouts 1,2,3]``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from rich.console import Console
from rich.table import Table

from swf_testbed.testing.brokers import activemq_available, start_activemq
from swf_testbed.testing.databases import create_postgres_database
from swf_testbed.testing.hosts import Host, Hosts, netns_unavailable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the hosts' testbed.toml files are the multi-host tests' own

from tests.multihost.testbeds import (  # noqa: E402 - needs the sys.path insert above
    BROKER_PORT,
    Output,
    Site,
    chain_host_toml,
    monitor_host_toml,
    ok,
    socket_url,
    workers_host_toml,
)
from tests.orchestrator.conftest import shutdown_all  # noqa: E402 - after the sys.path insert

WORKERS_PER_HOST = 4
SLICES_PER_SAMPLE = 15


@dataclass
class Layout:
    worker_hosts: int
    stfs: int
    slices: int
    seconds: float
    cpu_s: dict[str, float]  # host name -> CPU seconds of its processes during the run
    broker_cpu_s: float

    @property
    def stf_per_s(self) -> float:
        return self.stfs / self.seconds

    def cpu_per_stf_ms(self, host: str) -> float:
        return 1000 * self.cpu_s.get(host, 0.0) / self.stfs

    @property
    def total_cpu_per_stf_ms(self) -> float:
        return 1000 * (sum(self.cpu_s.values()) + self.broker_cpu_s) / self.stfs


def _netns_pids(host: Host) -> list[int]:
    done = subprocess.run(
        ["ip", "netns", "pids", host.netns], capture_output=True, text=True, check=False
    )
    return [int(p) for p in done.stdout.split()]


def _cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) each live process has used so far."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = t.user + t.system
    return out


def _used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds used between two samples (a process new since ``before`` counts from 0)."""
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def _broker_pids(pid: int | None) -> set[int]:
    """The broker's process and its children (the launcher's JVM)."""
    if pid is None:
        return set()
    try:
        proc = psutil.Process(pid)
        return {pid, *(c.pid for c in proc.children(recursive=True))}
    except psutil.Error:
        return set()


def run_layout(
    worker_hosts: int, stfs: int, postgres_url: str, workdir: Path, console: Console
) -> Layout:
    names = ["a", "b", *[f"w{i}" for i in range(1, worker_hosts + 1)]]
    database_url, drop = create_postgres_database(postgres_url)
    sites: dict[str, Site] = {}
    broker = None
    with Hosts(names) as hosts:
        try:
            a = hosts["a"]
            workers = [hosts[n] for n in names[2:]]
            sites = {h.name: Site(h, workdir / f"{worker_hosts}-{h.name}") for h in hosts}
            broker = start_activemq(
                port=BROKER_PORT,
                host=a.address,
                workdir=workdir / f"{worker_hosts}-activemq",
                in_host=a,
            )
            sites["a"].write(monitor_host_toml(a, socket_url(database_url)))
            pools = {f"worker_{w.name}": (w, WORKERS_PER_HOST) for w in workers}
            sites["b"].write(
                chain_host_toml(a, pools, stfs=stfs, slices_per_sample=SLICES_PER_SAMPLE)
            )
            for w in workers:
                sites[w.name].write(workers_host_toml(a, f"worker_{w.name}", WORKERS_PER_HOST))
            for name in ["a", *[w.name for w in workers]]:
                ok(sites[name].cli("up"))
            console.print(f"{worker_hosts} worker host(s): running {stfs} STFs …")
            run = sites["b"].popen("run")
            out = Output(run)
            while "execution " not in out.text and run.poll() is None:
                time.sleep(0.05)
            t0 = time.monotonic()
            jvm = _broker_pids(broker.proc.pid if broker.proc else None)
            before = {h.name: _cpu(_netns_pids(h)) for h in hosts}
            code = run.wait(timeout=3600)
            seconds = time.monotonic() - t0
            after = {h.name: _cpu(_netns_pids(h)) for h in hosts}
            out.thread.join(5)
            slices = stfs * SLICES_PER_SAMPLE
            if code != 0 or f"{slices} of {slices} slices done" not in out.text:
                raise RuntimeError(f"the run on {worker_hosts} worker host(s) failed:\n{out.text}")
            used = {
                name: _used(
                    {p: v for p, v in before[name].items() if p not in jvm},
                    {p: v for p, v in after[name].items() if p not in jvm},
                )
                for name in before
            }
            broker_used = _used(
                {p: v for p, v in before["a"].items() if p in jvm},
                {p: v for p, v in after["a"].items() if p in jvm},
            )
            return Layout(worker_hosts, stfs, slices, seconds, used, broker_used)
        finally:
            for site in sites.values():
                shutdown_all(site.dir / "home")
            if broker is not None:
                broker.stop()
            drop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 STFs per layout instead of 48")
    parser.add_argument("--stfs", type=int, default=None, help="STFs per layout (default 48)")
    parser.add_argument("--layouts", default="1,2,3", help="worker host counts (default 1,2,3)")
    args = parser.parse_args(argv)
    stfs = args.stfs or (12 if args.quick else 48)
    layouts = [int(n) for n in args.layouts.split(",") if n.strip()]
    console = Console(stderr=True, soft_wrap=True)
    reason = netns_unavailable()
    if reason is not None:
        console.print(f"[red]cannot make hosts: {reason}[/red]")
        return 2
    if not activemq_available():
        console.print("[red]ActiveMQ Classic is not installed (apt-get install -y activemq)[/red]")
        return 2
    postgres_url = os.environ.get(
        "SWF_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test"
    )
    workdir = Path(tempfile.mkdtemp(prefix="swf-bench-hosts-"))
    results = [run_layout(n, stfs, postgres_url, workdir, console) for n in layouts]

    base = results[0]
    table = Table(
        title=f"Scale-out: {stfs} STFs at sampling 1.0, {SLICES_PER_SAMPLE} slices a sample, "
        f"{WORKERS_PER_HOST} workers a host; all hosts share this machine's cores"
    )
    for column in (
        "worker hosts",
        "STF/s",
        f"÷ {base.worker_hosts} host",
        "CPU ms/STF: A (monitor)",
        "ActiveMQ",
        "B (chain)",
        "each worker host",
        "total",
        f"total ÷ {base.worker_hosts} host",
    ):
        table.add_column(column, justify="right")
    figures: dict[str, object] = {"stfs": stfs, "slices_per_sample": SLICES_PER_SAMPLE}
    for r in results:
        per_worker_host = [
            r.cpu_per_stf_ms(name) for name in r.cpu_s if re.fullmatch(r"w\d+", name)
        ]
        table.add_row(
            str(r.worker_hosts),
            f"{r.stf_per_s:.1f}",
            f"{r.stf_per_s / base.stf_per_s:.2f}",
            f"{r.cpu_per_stf_ms('a'):.1f}",
            f"{1000 * r.broker_cpu_s / r.stfs:.1f}",
            f"{r.cpu_per_stf_ms('b'):.1f}",
            " / ".join(f"{v:.1f}" for v in per_worker_host),
            f"{r.total_cpu_per_stf_ms:.1f}",
            f"{r.total_cpu_per_stf_ms / base.total_cpu_per_stf_ms:.2f}",
        )
        figures[f"worker_hosts_{r.worker_hosts}"] = {
            "stf_per_s": round(r.stf_per_s, 2),
            "ratio": round(r.stf_per_s / base.stf_per_s, 3),
            "seconds": round(r.seconds, 2),
            "cpu_ms_per_stf": {k: round(r.cpu_per_stf_ms(k), 2) for k in r.cpu_s},
            "broker_cpu_ms_per_stf": round(1000 * r.broker_cpu_s / r.stfs, 2),
            "total_cpu_ms_per_stf": round(r.total_cpu_per_stf_ms, 2),
        }
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    sys.stdout.flush()
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

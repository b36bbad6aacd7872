"""A worker host lost mid-run: its slices go to the host that stays up, nothing is lost.

Host A runs ActiveMQ and the monitor, B the chain, C and D four workers each.
The slices outnumber the workers (a backlog), so each of C's workers holds an
unacknowledged slice (prefetch 1) when C's link is cut. ActiveMQ's heart-beats
find C's connections dead, its slices go to D, and the run completes with
every slice recorded once and completed. Then C comes back: its workers
reconnect and beat again.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.testing.brokers import BrokerProcess
from swf_testbed.testing.hosts import Host
from tests.orchestrator.conftest import shutdown_all
from tests.support.collect import eventually

from .testbeds import (
    NAMESPACE,
    MakeHosts,
    Output,
    Site,
    chain_host_toml,
    count,
    monitor_api,
    monitor_host_toml,
    ok,
    rows,
    run_number_of,
    socket_url,
    workers_host_toml,
)

pytestmark = [pytest.mark.slow, pytest.mark.activemq]

STFS = 12
SLICES_PER_SAMPLE = 10
SLICES = STFS * SLICES_PER_SAMPLE
WORKERS = 4  # on each of C and D
HEARTBEAT_MS = 2000  # the workers' STOMP heart-beats: a dead link is found in a few seconds
WAIT = 120.0  # s, for each step of the scenario
WORKER_ENV = f'env = {{ ACTIVEMQ_HEARTBEAT_MS = "{HEARTBEAT_MS}" }}\n'


def test_a_worker_host_cut_off_mid_run_loses_nothing(
    make_hosts: MakeHosts,
    activemq_on: Callable[[Host], BrokerProcess],
    fresh_postgres_database: str,
    tmp_path: Path,
) -> None:
    hosts = make_hosts(["a", "b", "c", "d"])
    a, b, c, d = (hosts[n] for n in "abcd")
    sites = {h.name: Site(h, tmp_path / h.name) for h in hosts}
    try:
        activemq_on(a)
        sites["a"].write(monitor_host_toml(a, socket_url(fresh_postgres_database)))
        sites["b"].write(
            chain_host_toml(
                a,
                {"worker_c": (c, WORKERS), "worker_d": (d, WORKERS)},
                stfs=STFS,
                slices_per_sample=SLICES_PER_SAMPLE,
                time_scale=100,
                parameters="slice_processing_time = 100.0\n",  # 1 s a slice at 100x
            )
        )
        sites["c"].write(workers_host_toml(a, "worker_c", WORKERS, WORKER_ENV))
        sites["d"].write(workers_host_toml(a, "worker_d", WORKERS, WORKER_ENV))
        for name in "acd":
            ok(sites[name].cli("up"))
        run = sites["b"].popen("run")
        out = Output(run)
        execution_id = out.execution_id(WAIT)

        with a.inside(), monitor_api(a) as api:
            run_number = run_number_of(api, execution_id, WAIT)

            def c_busy_with_a_backlog() -> bool:
                made = count(api, "/tf-slices/", run_number=run_number)
                done = count(api, "/tf-slices/", run_number=run_number, status="completed")
                by_c = sum(
                    count(api, "/tf-slices/", run_number=run_number, assigned_worker=w)
                    for w in _instance_ids(api, "worker_c")
                )
                return by_c >= WORKERS and made - done >= 2 * 2 * WORKERS

            eventually(c_busy_with_a_backlog, WAIT, "C busy, a backlog waiting")
            cut_at = time.time()
            c.cut()

            def c_down() -> bool:
                agents = rows(api, "/systemagents/", namespace=NAMESPACE)
                return all(
                    r["liveness"] != "ok"
                    for r in agents
                    if r["instance_name"].startswith("worker_c")
                )

            eventually(c_down, WAIT, "C's workers seen silent in the monitor")
            silent_at = time.time()
            assert run.wait(timeout=300) == 0, out.text
            done_at = time.time()
            assert f"{SLICES} of {SLICES} slices done" in out.text, out.text

            c.restore()
            restored_at = time.time()

            def c_back() -> bool:
                agents = rows(api, "/systemagents/", namespace=NAMESPACE)
                c_agents = [r for r in agents if r["instance_name"].startswith("worker_c")]
                return len(c_agents) == WORKERS and all(
                    r["liveness"] == "ok"
                    and r["mq_connected"]
                    and datetime.fromisoformat(r["last_heartbeat"]).timestamp() > restored_at
                    for r in c_agents
                )

            eventually(c_back, WAIT, "C's workers beating again after the link came back")
            back_at = time.time()

            # every slice recorded once and completed
            assert count(api, "/tf-slices/", run_number=run_number) == SLICES
            assert count(api, "/tf-slices/", run_number=run_number, status="completed") == SLICES
            results = rows(
                api, "/workflow-messages/", execution_id=execution_id, msg_type="slice_result"
            )
            senders: dict[tuple[str, int], set[str]] = defaultdict(set)
            for r in results:
                body = r["message_content"]
                senders[(body["tf_filename"], body["slice_id"])].add(r["sender"])
            assert len(senders) == SLICES
            d_ids = set(_instance_ids(api, "worker_d"))
            completed_by_d = sum(
                count(api, "/tf-slices/", run_number=run_number, assigned_worker=w) for w in d_ids
            )
            assert completed_by_d > 0
            twice = sorted(k for k, s in senders.items() if len(s) > 1)
            print(
                f"\nhost C cut: silent in the monitor after {silent_at - cut_at:.1f} s, run "
                f"complete {done_at - cut_at:.1f} s after the cut; "
                f"C back {back_at - restored_at:.1f} s after the restore; "
                f"{len(results)} results for {SLICES} slices, "
                f"{len(twice)} slices done on both C and D; lost 0"
            )
    finally:
        for site in sites.values():
            shutdown_all(site.dir / "home")


def _instance_ids(api: Any, prefix: str) -> list[str]:
    return [
        r["instance_id"]
        for r in rows(api, "/systemagents/", namespace=NAMESPACE)
        if r["instance_name"].startswith(prefix)
    ]

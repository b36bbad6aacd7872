"""One testbed across three hosts (docs/operations.md's layout), each under its own supervisord.

Host A runs ActiveMQ and the monitor; host B the chain agents; host C the
workers. Each host has its own testbed.toml and ``SWF_HOME`` and starts its
supervisord with ``swf-testbed up``; ``swf-testbed run`` on host B waits for
the agents of B (its supervisord) and of C (the monitor's record of their
heartbeats, which must name host C) and runs 24 STFs at sampling 1.0.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from swf_testbed.testing.brokers import BrokerProcess
from swf_testbed.testing.hosts import Host
from tests.orchestrator.conftest import shutdown_all

from .testbeds import (
    CHAIN,
    NAMESPACE,
    MakeHosts,
    Site,
    chain_host_toml,
    count,
    monitor_api,
    monitor_host_toml,
    ok,
    rows,
    socket_url,
    workers_host_toml,
)

pytestmark = [pytest.mark.slow, pytest.mark.activemq]

STFS = 24
SLICES_PER_SAMPLE = 15
WORKERS_ON_C = 4


def test_three_hosts_run_one_testbed_and_every_slice_is_done_once(
    make_hosts: MakeHosts,
    activemq_on: Callable[[Host], BrokerProcess],
    fresh_postgres_database: str,
    tmp_path: Path,
) -> None:
    hosts = make_hosts(["a", "b", "c"])
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    sites = {h.name: Site(h, tmp_path / h.name) for h in hosts}
    try:
        activemq_on(a)
        sites["a"].write(monitor_host_toml(a, socket_url(fresh_postgres_database)))
        sites["b"].write(
            chain_host_toml(
                a, {"worker_c": (c, WORKERS_ON_C)}, stfs=STFS, slices_per_sample=SLICES_PER_SAMPLE
            )
        )
        sites["c"].write(workers_host_toml(a, "worker_c", WORKERS_ON_C))
        ok(sites["a"].cli("up"))
        ok(sites["c"].cli("up"))
        out = ok(sites["b"].cli("run", timeout=600))
        assert f"{STFS} STFs produced, {STFS} processed" in out, out
        slices = STFS * SLICES_PER_SAMPLE
        assert f"{slices} of {slices} slices done" in out, out
        execution_id = out.split("workflow completed: execution ")[1].split(",")[0]

        status = json.loads(sites["c"].cli("status", "--json").stdout)
        hosts_of = {row["process"]: row.get("host") for row in status["programs"]}
        assert hosts_of.get("runner") == b.hostname, status
        assert hosts_of.get("worker_c_00") == c.hostname, status

        with a.inside(), monitor_api(a) as api:
            runs = api.get("/runs/", params={"execution_id": execution_id}).json()
            assert len(runs) == 1
            run_number = runs[0]["run_number"]
            assert count(api, "/tf-slices/", run_number=run_number) == slices
            assert count(api, "/tf-slices/", run_number=run_number, status="completed") == slices
            results = count(
                api, "/workflow-messages/", execution_id=execution_id, msg_type="slice_result"
            )
            assert results == slices  # each slice done once: one result each
            host_of = {
                r["instance_name"]: r["hostname"]
                for r in rows(api, "/systemagents/", namespace=NAMESPACE)
            }
            expected = {f"worker_c_{i:02d}": c.hostname for i in range(WORKERS_ON_C)}
            expected |= {name: b.hostname for name, _ in CHAIN}
            assert {k: host_of.get(k) for k in expected} == expected, host_of
    finally:
        for site in sites.values():
            shutdown_all(site.dir / "home")

"""One testbed across three hosts (docs/operations.md's layout), each under its own supervisord.

Host A runs ActiveMQ and the monitor (web and ingest, on PostgreSQL: the
machine's server, reached through its unix socket, which network namespaces
do not separate); host B the chain agents; host C the workers. Each host has
its own testbed.toml and ``SWF_HOME`` and starts its supervisord with
``swf-testbed up``; ``swf-testbed run`` on host B waits for the agents of B
(its supervisord) and of C (the monitor's record of their heartbeats, which
must name host C) and runs 24 STFs at sampling 1.0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest

from swf_testbed.testing.brokers import BrokerProcess, activemq_available, start_activemq
from swf_testbed.testing.hosts import Host, Hosts
from tests.conftest import _required
from tests.orchestrator.conftest import shutdown_all

pytestmark = [pytest.mark.slow, pytest.mark.activemq]

MakeHosts = Callable[[Sequence[str]], Hosts]
NAMESPACE = "multihost"
STFS = 24
SLICES_PER_SAMPLE = 15
WORKERS_ON_C = 4
BROKER_PORT = 61613
MONITOR_PORT = 8002
CHAIN = (
    ("runner", "runner:WorkflowRunner"),
    ("data", "data:DataAgent"),
    ("processing", "processing:ProcessingAgent"),
    ("fastmon", "fastmon:FastMonAgent"),
    ("fast_processing", "fast_processing:FastProcessingAgent"),
)


@dataclass
class Site:
    """One host of the testbed: its network namespace, its directory and ``SWF_HOME``."""

    host: Host
    dir: Path

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ACTIVEMQ_", "SWF_"))}
        env.pop("DATABASE_URL", None)
        return {**env, "SWF_HOME": str(self.dir / "home"), "PYTHONUNBUFFERED": "1"}

    def write(self, text: str) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "testbed.toml").write_text(text)

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self.host.run(
            [sys.executable, "-m", "swf_testbed.cli", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def _ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def _services(a: Host) -> str:
    return (
        f'[broker]\nmode = "external"\nhost = "{a.address}"\nport = {BROKER_PORT}\n\n'
        f'[monitor]\nmode = "external"\nurl = "http://{a.address}:{MONITOR_PORT}"\n'
    )


def _agent(name: str, module: str, extra: str = "") -> str:
    return (
        f'[agents.{name}]\nmodule = "swf_testbed.agents.{module}"\nheartbeat_interval = 1\n'
        f"{extra}\n"
    )


def host_a_toml(a: Host, database_url: str) -> str:
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        f'[broker]\nmode = "external"\nhost = "{a.address}"\nport = {BROKER_PORT}\n\n'
        f'[monitor]\nmode = "embedded"\nhost = "{a.address}"\nport = {MONITOR_PORT}\n\n'
        f'[database]\nurl = "{database_url}"\n'
    )


def host_b_toml(a: Host, c: Host) -> str:
    agents = "".join(_agent(name, module) for name, module in CHAIN)
    remote = (
        f'[agents.worker_c]\nremote = true\ninstances = {WORKERS_ON_C}\nhost = "{c.hostname}"\n\n'
    )
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        '[workflow]\nname = "stf_datataking"\nconfig = "fast_processing_default"\n'
        "time_scale = 0\n\n"
        f"[parameters]\nstf_count = {STFS}\nstf_sampling_rate = 1.0\n"
        f"slices_per_sample = {SLICES_PER_SAMPLE}\n\n"
        f"{agents}{remote}{_services(a)}"
    )


def host_c_toml(a: Host) -> str:
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        + _agent("worker_c", "worker:WorkerAgent", f"instances = {WORKERS_ON_C}\n")
        + _services(a)
    )


def socket_url(tcp_url: str) -> str:
    """The same PostgreSQL database through the server's unix socket (any network namespace)."""
    parts = urlsplit(tcp_url)
    user = parts.username or "postgres"
    return f"postgres://{user}@{quote('/var/run/postgresql', safe='')}{parts.path}"


@pytest.fixture
def activemq_on(tmp_path: Path) -> Iterator[Callable[[Host], BrokerProcess]]:
    if not activemq_available():
        if _required("SWF_REQUIRE_ACTIVEMQ"):
            pytest.fail("SWF_REQUIRE_ACTIVEMQ is set but ActiveMQ Classic is not installed")
        pytest.skip("ActiveMQ Classic not installed (apt-get install -y activemq)")
    started: list[BrokerProcess] = []

    def start(host: Host) -> BrokerProcess:
        broker = start_activemq(
            port=BROKER_PORT, host=host.address, workdir=tmp_path / "activemq", in_host=host
        )
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.stop()


def count(api: httpx.Client, path: str, **params: Any) -> int:
    response = api.get(path, params={**params, "limit": 1})
    response.raise_for_status()
    return int(response.json()["count"])


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
        sites["a"].write(host_a_toml(a, socket_url(fresh_postgres_database)))
        sites["b"].write(host_b_toml(a, c))
        sites["c"].write(host_c_toml(a))
        _ok(sites["a"].cli("up"))
        _ok(sites["c"].cli("up"))
        out = _ok(sites["b"].cli("run", timeout=600))
        assert f"{STFS} STFs produced, {STFS} processed" in out, out
        slices = STFS * SLICES_PER_SAMPLE
        assert f"{slices} of {slices} slices done" in out, out
        execution_id = out.split("workflow completed: execution ")[1].split(",")[0]

        status = json.loads(sites["c"].cli("status", "--json").stdout)
        hosts_of = {row["process"]: row.get("host") for row in status["programs"]}
        assert hosts_of.get("runner") == b.hostname, status
        assert hosts_of.get("worker_c_00") == c.hostname, status

        with a.inside(), httpx.Client(base_url=f"http://{a.address}:{MONITOR_PORT}/api") as api:
            runs = api.get("/runs/", params={"execution_id": execution_id}).json()
            assert len(runs) == 1
            run_number = runs[0]["run_number"]
            assert count(api, "/tf-slices/", run_number=run_number) == slices
            assert count(api, "/tf-slices/", run_number=run_number, status="completed") == slices
            results = count(
                api, "/workflow-messages/", execution_id=execution_id, msg_type="slice_result"
            )
            assert results == slices  # each slice done once: one result each
            workers = api.get("/systemagents/", params={"namespace": NAMESPACE}).json()
            rows = workers["results"] if isinstance(workers, dict) else workers
            host_of = {r["instance_name"]: r["hostname"] for r in rows}
            expected = {f"worker_c_{i:02d}": c.hostname for i in range(WORKERS_ON_C)}
            expected |= {name: b.hostname for name, _ in CHAIN}
            assert {k: host_of.get(k) for k in expected} == expected, host_of
    finally:
        for site in sites.values():
            shutdown_all(site.dir / "home")

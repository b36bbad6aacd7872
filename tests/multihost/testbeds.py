"""What the multi-host tests share: a host's testbed directory, its testbed.toml, the monitor.

Docs/operations.md's layout: host A runs ActiveMQ and the monitor (web and
ingest, on the machine's PostgreSQL through its unix socket, which network
namespaces do not separate), the other hosts run agents under their own
supervisord, all in one namespace, pointing at A.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from swf_testbed.testing.hosts import Host, Hosts
from tests.support.collect import eventually

MakeHosts = Callable[[Sequence[str]], Hosts]
NAMESPACE = "multihost"
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

    def _argv(self, args: Sequence[str]) -> list[str]:
        return [sys.executable, "-m", "swf_testbed.cli", *args]

    def cli(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return self.host.run(
            self._argv(args),
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return self.host.popen(
            self._argv(args),
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )


class Output:
    """The lines of a running ``swf-testbed run``, read as they come."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.proc = proc
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def execution_id(self, timeout: float) -> str:
        """The id of the execution ``run`` announced, waited for."""
        eventually(
            lambda: "execution " in self.text and ": http" in self.text, timeout, "the run id"
        )
        return self.text.split("execution ")[1].split(":")[0]


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Output of a command that must have succeeded (with everything it said when it did not)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def services_toml(a: Host) -> str:
    """The broker and the monitor on host A, as every other host sees them."""
    return (
        f'[broker]\nmode = "external"\nhost = "{a.address}"\nport = {BROKER_PORT}\n\n'
        f'[monitor]\nmode = "external"\nurl = "http://{a.address}:{MONITOR_PORT}"\n'
    )


def agent_toml(name: str, module: str, extra: str = "") -> str:
    return (
        f'[agents.{name}]\nmodule = "swf_testbed.agents.{module}"\nheartbeat_interval = 1\n'
        f"{extra}\n"
    )


def monitor_host_toml(a: Host, database_url: str) -> str:
    """Host A: the monitor (web and ingest) on ``database_url``, the broker beside it."""
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        f'[broker]\nmode = "external"\nhost = "{a.address}"\nport = {BROKER_PORT}\n\n'
        f'[monitor]\nmode = "embedded"\nhost = "{a.address}"\nport = {MONITOR_PORT}\n\n'
        f'[database]\nurl = "{database_url}"\n'
    )


def workflow_toml(
    *, stfs: int, slices_per_sample: int, time_scale: float = 0, parameters: str = ""
) -> str:
    """The workflow ``swf-testbed run`` starts on this host, at sampling 1.0."""
    return (
        '[workflow]\nname = "stf_datataking"\nconfig = "fast_processing_default"\n'
        f"time_scale = {time_scale}\n\n"
        f"[parameters]\nstf_count = {stfs}\nstf_sampling_rate = 1.0\n"
        f"slices_per_sample = {slices_per_sample}\n{parameters}\n"
    )


def remote_toml(remote: dict[str, tuple[Host, int]]) -> str:
    """Agents of other hosts, declared remote: their health is read from the monitor."""
    return "".join(
        f'[agents.{name}]\nremote = true\ninstances = {n}\nhost = "{host.hostname}"\n\n'
        for name, (host, n) in remote.items()
    )


def chain_host_toml(
    a: Host,
    remote_workers: dict[str, tuple[Host, int]],
    *,
    stfs: int,
    slices_per_sample: int,
    time_scale: float = 0,
    parameters: str = "",
    agent_extra: str = "",
) -> str:
    """The chain's host: its agents, the workers of other hosts declared remote."""
    agents = "".join(agent_toml(name, module, agent_extra) for name, module in CHAIN)
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        + workflow_toml(
            stfs=stfs,
            slices_per_sample=slices_per_sample,
            time_scale=time_scale,
            parameters=parameters,
        )
        + f"{agents}{remote_toml(remote_workers)}{services_toml(a)}"
    )


def control_host_toml(a: Host, remote: dict[str, tuple[Host, int]], **workflow: Any) -> str:
    """A host with no agents of its own, where ``swf-testbed run`` is typed: all are remote."""
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        + workflow_toml(**workflow)
        + remote_toml(remote)
        + services_toml(a)
    )


def workers_host_toml(a: Host, name: str, instances: int, extra: str = "") -> str:
    """A worker host: ``instances`` workers named ``NAME_00`` …"""
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        + agent_toml(name, "worker:WorkerAgent", f"instances = {instances}\n{extra}")
        + services_toml(a)
    )


def socket_url(tcp_url: str) -> str:
    """The same PostgreSQL database through the server's unix socket (any network namespace)."""
    parts = urlsplit(tcp_url)
    user = parts.username or "postgres"
    return f"postgres://{user}@{quote('/var/run/postgresql', safe='')}{parts.path}"


def monitor_api(a: Host) -> httpx.Client:
    """A client of the monitor's REST API on host A; make it (and use it) inside ``a.inside()``."""
    return httpx.Client(base_url=f"http://{a.address}:{MONITOR_PORT}/api", timeout=10)


def run_number_of(api: httpx.Client, execution_id: str, timeout: float) -> int:
    """The run of an execution, once the monitor has it."""
    eventually(lambda: bool(rows(api, "/runs/", execution_id=execution_id)), timeout, "run")
    return int(rows(api, "/runs/", execution_id=execution_id)[0]["run_number"])


def count(api: httpx.Client, path: str, **params: Any) -> int:
    response = api.get(path, params={**params, "limit": 1})
    response.raise_for_status()
    return int(response.json()["count"])


def rows(api: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every row of a list endpoint (its pages followed)."""
    out: list[dict[str, Any]] = []
    response = api.get(path, params={**params, "limit": 500})
    while True:
        response.raise_for_status()
        page = response.json()
        if isinstance(page, list):
            return out + page
        out += page["results"]
        if not page.get("next"):
            return out
        response = api.get(page["next"])

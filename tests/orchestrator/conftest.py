"""Fixtures for the orchestrator tests: a testbed directory per test, the CLI as a real process.

Every test gets its own ``SWF_HOME``; at teardown every supervisord started
under it is shut down (and killed by its pid file if it does not go).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.orchestrator.supervisor import Supervisor, runtime_paths
from swf_testbed.testing.brokers import BrokerProcess, free_port

REPO = Path(__file__).resolve().parents[2]


def agent_toml(name: str, cls: str = "Idle", *, interval: float = 1.0, extra: str = "") -> str:
    """An ``[agents.NAME]`` table running one of the test agents."""
    return (
        f'[agents.{name}]\nmodule = "tests.orchestrator.agents:{cls}"\n'
        f"heartbeat_interval = {interval}\n"
        f'drain_timeout = 2\nenv = {{ PYTHONPATH = "{REPO}" }}\n{extra}\n'
    )


def bed_toml(
    namespace: str,
    agents: str,
    *,
    parameters: str = "stf_count = 3",
    monitor_port: int = 0,
    broker: str = 'mode = "external"',
    workflow: str = "time_scale = 0",
) -> str:
    monitor_port = monitor_port or free_port()
    return (
        f'[testbed]\nnamespace = "{namespace}"\nstart_timeout = 45\n\n'
        f"[workflow]\n{workflow}\n\n[parameters]\n{parameters}\n\n{agents}\n"
        f"[broker]\n{broker}\n\n"
        f'[monitor]\nmode = "external"\nurl = "http://127.0.0.1:{monitor_port}"\n'
    )


@dataclass
class Bed:
    """One testbed directory (its testbed.toml) and the environment to run the CLI in."""

    dir: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def toml(self) -> Path:
        return self.dir / "testbed.toml"

    def write(self, text: str) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.toml.write_text(text)
        return self.toml

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "swf_testbed.cli", *args],
            cwd=self.dir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "swf_testbed.cli", *args],
            cwd=self.dir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json", timeout=60)
        assert result.returncode in (0, 1), result.stderr
        return json.loads(result.stdout)

    def programs(self) -> dict[str, dict[str, Any]]:
        return {p["process"]: p for p in self.status()["programs"]}

    def wait_status(
        self, predicate: Any, timeout: float = 30.0, what: str = "status"
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        while time.monotonic() < deadline:
            last = self.status()
            if predicate(last):
                return last
            time.sleep(0.3)
        raise AssertionError(
            f"timed out waiting for {what}; last status: {json.dumps(last, indent=1)}"
        )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    """Output of a command that must have succeeded (with everything it said when it did not)."""
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


def shutdown_all(home: Path) -> None:
    """Stop every supervisord under this SWF_HOME; kill it by its pid file if it does not go."""
    if not home.exists():
        return
    for root in home.iterdir():
        if not (root / "supervisord.conf").exists():
            continue
        sup = Supervisor(runtime_paths(home, root.name))
        pid = sup.pid()
        if not sup.shutdown(timeout=20):
            sup.kill()
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "home"
    yield path
    shutdown_all(path)


@pytest.fixture
def make_bed(tmp_path: Path, home: Path, embedded_broker: BrokerProcess) -> Iterator[Any]:
    """``make_bed(name)``: a testbed directory using the session's broker as an external one."""
    beds: list[Bed] = []

    def make(name: str = "bed", broker: BrokerProcess | None = embedded_broker) -> Bed:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ACTIVEMQ_", "SWF_", "DATABASE_URL"))
        }
        env.update({"SWF_HOME": str(home), "PYTHONPATH": str(REPO), "COLUMNS": "200"})
        if broker is not None:
            env.update(broker.env)
        bed = Bed(tmp_path / name, env)
        beds.append(bed)
        return bed

    yield make
    for bed in beds:
        for proc in bed.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

"""The real monitor (web + ingest, each its own process) on a broker and a database, for the legacy
agents.

Used by ``tests/compat`` and ``bench/legacy.py``. The processes are the
ones ``swf-testbed monitor serve`` / ``ingest`` run; the database is a
fresh SQLite file or PostgreSQL database given by URL; nothing here uses
Django in the calling process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from swf_testbed.testing.brokers import BrokerProcess, free_port, wait_for_port

CLI = [sys.executable, "-m", "swf_testbed.cli"]
REPO = Path(__file__).resolve().parents[2]
LEGACY = [sys.executable, "-m", "tests.compat.legacy_agents"]


def clean_environ() -> dict[str, str]:
    """This environment without any broker, monitor or database
    setting (each process gets its own).
    """
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACTIVEMQ_", "SWF_", "DATABASE_URL", "DJANGO_SETTINGS_MODULE"))
    }


@dataclass
class MonitorStack:
    """``monitor serve`` and ``monitor ingest`` on ``broker`` and ``database_url``, with a token for
    agents.
    """

    broker: BrokerProcess
    database_url: str
    home: Path
    monitor_env: dict[str, str] = field(default_factory=dict)
    port: int = 0
    token: str = ""
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    web_command: list[str] = field(default_factory=lambda: list(CLI))
    """How ``monitor serve`` is run (a benchmark runs it under a profiler)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        return {
            **clean_environ(),
            **self.broker.env,
            "DATABASE_URL": self.database_url,
            "SWF_HOME": str(self.home),
            **self.monitor_env,
        }

    def _popen(self, name: str, *args: str, command: list[str] = CLI) -> subprocess.Popen[bytes]:
        with open(self.home / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [*command, *args],
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.procs.append(proc)
        return proc

    def start(self, timeout: float = 120.0) -> MonitorStack:
        self.home.mkdir(parents=True, exist_ok=True)
        made = subprocess.run(
            [*CLI, "monitor", "token", "legacy"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=300,
        )  # migrates the database too
        assert made.returncode == 0, made.stderr
        self.token = made.stdout.strip()
        self.port = self.port or free_port()
        web = self._popen(
            "web",
            "monitor",
            "serve",
            "--port",
            str(self.port),
            "--no-migrate",
            "--log-level",
            "warning",
            command=self.web_command,
        )
        self._popen(
            "ingest",
            "monitor",
            "ingest",
            "--no-migrate",
            "--client-id",
            f"legacy-{uuid.uuid4().hex[:8]}",
        )
        wait_for_port("127.0.0.1", self.port, timeout, web)
        self.wait_ingesting(timeout)
        return self

    def wait_ingesting(self, timeout: float) -> None:
        """Probe heartbeats (sent with our own client: this is the harness, not the legacy agents)
        until one
        is recorded: the ingest is then subscribed."""
        from swf_testbed.messages import Heartbeat
        from swf_testbed.mq.client import BrokerClient
        from swf_testbed.mq.destinations import HEARTBEAT_TOPIC

        client = BrokerClient(
            self.broker.settings(), client_name=f"probe-{uuid.uuid4().hex[:6]}"
        ).start(wait=30)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.check_alive()
                probe = Heartbeat(
                    namespace="probe",
                    sender="probe",
                    agent_name="probe",
                    agent_type="probe",
                    instance_id=uuid.uuid4().hex,
                    pid=1,
                    hostname="h",
                    operational_state="READY",
                    interval_s=60,
                )
                client.send(HEARTBEAT_TOPIC, probe, persistent=False)
                time.sleep(0.5)
                if self.api("/api/workflow-messages/", sender="probe", limit=1)["count"]:
                    return
            raise AssertionError(
                f"the ingest recorded no probe in {timeout:g} s:\n{self.log('ingest')}"
            )
        finally:
            client.close()

    def check_alive(self) -> None:
        for proc, name in zip(self.procs, ("web", "ingest"), strict=False):
            assert proc.poll() is None, (
                f"monitor {name} exited ({proc.returncode}):\n{self.log(name)}"
            )

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(self.url + path, params=params, timeout=60)
        response.raise_for_status()
        return response.json()

    def page(self, path: str, **params: Any) -> str:
        response = httpx.get(self.url + path, params=params, timeout=60)
        response.raise_for_status()
        return response.text

    def legacy_env(self) -> dict[str, str]:
        """The v28 environment pointing the legacy agents at this stack."""
        return {
            **clean_environ(),
            "PYTHONPATH": str(REPO),
            "ACTIVEMQ_HOST": self.broker.host,
            "ACTIVEMQ_PORT": str(self.broker.port),
            "ACTIVEMQ_USER": "admin",
            "ACTIVEMQ_PASSWORD": "admin",
            "ACTIVEMQ_USE_SSL": "false",
            "ACTIVEMQ_HEARTBEAT_TOPIC": "/topic/epictopic",
            "SWF_MONITOR_URL": self.url,
            "SWF_MONITOR_HTTP_URL": self.url,
            "SWF_API_TOKEN": self.token,
        }

    def run_legacy(
        self, *args: str, report: Path, timeout: float = 900.0
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*LEGACY, "--report", str(report), *args],
            env=self.legacy_env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def log(self, name: str, chars: int = 4000) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self, timeout: float = 20.0) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

"""The health check for agents this testbed does not supervise: read from a real monitor over HTTP.

A monitor web (its own SQLite database) receives the heartbeats of agents on
other host names through its REST API, as agents elsewhere send them; the
orchestrator's check, ``wait_healthy`` and ``status --json`` read them back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from swf_testbed.liveness import Liveness
from swf_testbed.orchestrator.checks import REMOTE_STATE, RemoteAgent
from swf_testbed.orchestrator.config import load
from swf_testbed.orchestrator.health import HeartbeatBook
from swf_testbed.orchestrator.monitor_api import MonitorApi
from swf_testbed.orchestrator.run import Testbed, Unhealthy
from swf_testbed.settings import Settings
from swf_testbed.testing.brokers import free_port
from swf_testbed.testing.monitor import MonitorWebProcess


class Monitor:
    def __init__(self, web: MonitorWebProcess, token: str) -> None:
        self.web, self.token = web, token

    @property
    def url(self) -> str:
        return self.web.url

    def heartbeat(self, namespace: str, name: str, host: str, **fields: Any) -> None:
        """A heartbeat as an agent on ``host`` sends it to the monitor's REST API."""
        body = {
            "instance_name": name,
            "namespace": namespace,
            "hostname": host,
            "pid": 4242,
            "agent_type": "worker",
            "status": "OK",
            "operational_state": "READY",
            "heartbeat_interval": 30.0,
            **fields,
        }
        response = httpx.post(
            f"{self.url}/api/systemagents/heartbeat/",
            json=body,
            headers={"Authorization": f"Token {self.token}"},
            timeout=10.0,
        )
        assert response.status_code in (200, 201), response.text


@pytest.fixture(scope="module")
def monitor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Monitor]:
    home = tmp_path_factory.mktemp("monitor")
    database = f"sqlite:///{home}/monitor.sqlite3"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update({"DATABASE_URL": database, "SWF_HOME": str(home)})
    made = subprocess.run(  # migrates, makes the user and prints its token
        [sys.executable, "-m", "swf_testbed.cli", "monitor", "token", "hosts"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    web = MonitorWebProcess(database).start()
    try:
        yield Monitor(web, made.stdout.strip().splitlines()[-1])
    finally:
        web.stop()


def _toml(dir: Path, namespace: str, monitor_url: str, agents: str) -> Path:
    path = dir / "testbed.toml"
    path.write_text(
        f'[testbed]\nnamespace = "{namespace}"\n\n{agents}\n'
        f'[broker]\nmode = "external"\nport = {free_port()}\n\n'
        f'[monitor]\nmode = "external"\nurl = "{monitor_url}"\n'
    )
    return path


def _testbed(tmp_path: Path, monitor_url: str, agents: str) -> Testbed:
    namespace = f"hosts-{uuid.uuid4().hex[:8]}"
    loaded = load(_toml(tmp_path, namespace, monitor_url, agents))
    return Testbed.from_config(loaded, Settings(home=tmp_path / "home"))


REMOTE_WORKERS = '[agents.worker]\nremote = true\ninstances = 2\nhost = "host-c"\n'


@pytest.mark.slow
def test_remote_agents_are_read_from_the_monitor_with_their_host(
    monitor: Monitor, tmp_path: Path
) -> None:
    tb = _testbed(tmp_path, monitor.url, REMOTE_WORKERS)
    assert [p.name for p in tb.programs] == ["watch"]  # a remote agent is not run here
    assert tb.remote_agents == [RemoteAgent("worker", 2, "host-c")]
    monitor.heartbeat(tb.namespace, "worker_00", "host-c", operational_state="PROCESSING")
    monitor.heartbeat(tb.namespace, "worker_01", "host-c", operational_state="EXITED")
    monitor.heartbeat(tb.namespace, "chain", "host-b")  # of the namespace, declared nowhere here
    monitor.heartbeat(f"other-{tb.namespace}", "worker_00", "host-d")  # another namespace

    health = tb.check(HeartbeatBook(tb.namespace), infos={})
    rows = {h.process: h for h in health}
    assert set(rows) == {"watch", "worker_00", "worker_01"}
    w0, w1 = rows["worker_00"], rows["worker_01"]
    assert (w0.state, w0.host, w0.pid, w0.liveness, w0.healthy) == (
        REMOTE_STATE,
        "host-c",
        4242,
        Liveness.OK,
        True,
    )
    assert w0.heartbeat_age is not None and w0.heartbeat_age < 30
    # the monitor's name for an agent that said EXITED: "exited", in both places
    assert w1.liveness is Liveness.EXITED and not w1.healthy and "host-c" in w1.detail

    others = tb.others(health)
    assert [(h.process, h.host, h.expected) for h in others] == [("chain", "host-b", False)]


def test_a_remote_agent_on_the_wrong_host_is_not_taken_for_the_declared_one(
    monitor: Monitor, tmp_path: Path
) -> None:
    tb = _testbed(tmp_path, monitor.url, '[agents.fast]\nremote = true\nhost = "host-b"\n')
    monitor.heartbeat(tb.namespace, "fast", "host-x")
    (row,) = [h for h in tb.check(HeartbeatBook(tb.namespace), infos={}) if h.remote]
    assert not row.healthy and row.liveness is Liveness.UNKNOWN
    assert row.detail == "no heartbeat from host host-b in the monitor yet"
    anywhere = tb.check(
        HeartbeatBook(tb.namespace), [], infos={}, remote=[RemoteAgent("fast", 1, None)]
    )
    assert [(h.process, h.host, h.healthy) for h in anywhere] == [("fast", "host-x", True)]


@pytest.mark.slow
def test_wait_healthy_waits_for_the_remote_agents_and_names_the_missing(
    monitor: Monitor, tmp_path: Path
) -> None:
    tb = _testbed(tmp_path, monitor.url, REMOTE_WORKERS)
    remote = tb.remote_agents
    monitor.heartbeat(tb.namespace, "worker_00", "host-c")
    with pytest.raises(Unhealthy) as exc:
        tb.wait_healthy(HeartbeatBook(tb.namespace), 1.5, programs=[], remote=remote)
    assert [f.health.process for f in exc.value.failures] == ["worker_01"]
    assert "worker_01 (agent): no heartbeat from host host-c in the monitor yet" in str(exc.value)
    monitor.heartbeat(tb.namespace, "worker_01", "host-c")
    health = tb.wait_healthy(HeartbeatBook(tb.namespace), 30, programs=[], remote=remote)
    assert [(h.process, h.host, h.healthy) for h in health] == [
        ("worker_00", "host-c", True),
        ("worker_01", "host-c", True),
    ]


def test_a_monitor_that_does_not_answer_is_named_in_each_remote_row(tmp_path: Path) -> None:
    tb = _testbed(tmp_path, f"http://127.0.0.1:{free_port()}", REMOTE_WORKERS)
    rows = [h for h in tb.check(HeartbeatBook(tb.namespace), infos={}) if h.remote]
    assert [h.process for h in rows] == ["worker_00", "worker_01"]
    assert all(
        not h.healthy and "cannot ask the monitor: monitor not reachable" in h.detail for h in rows
    )
    assert MonitorApi(tb.monitor_url).agents(tb.namespace) is None


def test_status_json_shows_the_whole_namespace_with_hosts(monitor: Monitor, tmp_path: Path) -> None:
    tb = _testbed(tmp_path, monitor.url, REMOTE_WORKERS)
    for name in ("worker_00", "worker_01"):
        monitor.heartbeat(tb.namespace, name, "host-c")
    monitor.heartbeat(tb.namespace, "chain", "host-b")
    env = {**os.environ, "SWF_HOME": str(tmp_path / "home")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "swf_testbed.cli",
            "status",
            "--json",
            "-c",
            str(tmp_path / "testbed.toml"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr  # supervisord is not running here
    data = json.loads(result.stdout)
    rows = {p["process"]: p for p in data["programs"]}
    assert rows["watch"]["state"] == "NOT RUNNING"
    assert {k: rows["worker_00"][k] for k in ("host", "remote", "expected", "healthy")} == {
        "host": "host-c",
        "remote": True,
        "expected": True,
        "healthy": True,
    }
    assert (rows["chain"]["host"], rows["chain"]["expected"]) == ("host-b", False)
    assert data["remote_agents"] == [{"name": "worker", "instances": 2, "host": "host-c"}]

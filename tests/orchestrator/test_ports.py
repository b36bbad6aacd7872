"""A testbed never takes another's ports for its own: checked before the start and by health checks.

Real sockets and real processes; free ports chosen by the test, never the defaults.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.orchestrator.health import HeartbeatBook
from swf_testbed.orchestrator.ports import bindable, check_port, free_port_near, listened_by
from swf_testbed.orchestrator.run import Testbed
from swf_testbed.orchestrator.supervisor import Program, Supervisor, runtime_paths
from swf_testbed.settings import Settings
from swf_testbed.testing.brokers import free_port, wait_for_port

from .conftest import Bed, agent_toml, ok


def _listening_socket() -> tuple[socket.socket, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, int(sock.getsockname()[1])


def _listener_process(port: int) -> subprocess.Popen[bytes]:
    code = (
        "import socket, time\ns = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        f"s.bind(('127.0.0.1', {port}))\ns.listen()\ntime.sleep(120)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    wait_for_port("127.0.0.1", port, 30, proc)
    return proc


def test_a_taken_port_is_named_with_its_holder() -> None:
    sock, port = _listening_socket()
    try:
        assert not bindable("127.0.0.1", port)
        assert check_port("broker", "127.0.0.1", port, {os.getpid()}) is None  # held by "us"
        conflict = check_port("broker", "127.0.0.1", port, set())
        assert conflict is not None
        text = conflict.describe()
        assert (
            f"port {port} (127.0.0.1:{port}, for the broker)" in text
            and f"pid {os.getpid()}" in text
        )
        assert "python" in text.lower() or "pytest" in text.lower()  # the holder's program
        other = free_port_near(port)
        assert other != port and bindable("127.0.0.1", other)
    finally:
        sock.close()
    assert check_port("broker", "127.0.0.1", port, set()) is None  # free again


def test_listened_by_tells_the_listening_process_from_another() -> None:
    port = free_port()
    server = _listener_process(port)
    idle = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        assert listened_by(server.pid, port)
        assert not listened_by(idle.pid, port)
        assert not listened_by(server.pid, free_port())
    finally:
        for proc in (server, idle):
            proc.kill()
            proc.wait(10)


def test_health_check_refuses_a_service_answered_by_another_process(tmp_path: Path) -> None:
    """A service RUNNING in supervisord while another process answers on its port is not healthy."""
    port = free_port()
    holder = _listener_process(port)  # e.g. another testbed's broker
    ours = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"]
    )  # ours crash-loops
    tb = Testbed(Settings(home=tmp_path / "home"), "ports")
    prog = Program(
        "broker",
        "service",
        argv=["x"],
        health="tcp",
        health_target=f"127.0.0.1:{port}",
        listen_host="127.0.0.1",
        listen_port=port,
    )
    try:

        def health(pid: int) -> Any:
            infos = {"broker:broker": {"statename": "RUNNING", "pid": pid, "start": time.time()}}
            return tb.check(HeartbeatBook("ports"), [prog], infos)[0]

        h = health(ours.pid)
        assert h.healthy is False and h.liveness == "down"
        assert (
            f"port {port} answers, but from pid {holder.pid}" in h.detail
            and f"(pid {ours.pid})" in h.detail
        )
        h = health(holder.pid)  # the one that listens is the program's own process: healthy
        assert h.healthy is True and h.liveness == "ok"
    finally:
        for proc in (holder, ours):
            proc.kill()
            proc.wait(10)


@pytest.mark.slow
def test_second_testbed_on_the_same_ports_refuses_and_the_first_runs_on(make_bed: Any) -> None:
    broker_port, monitor_port = free_port(), free_port()
    services = (
        f'[broker]\nmode = "embedded"\nport = {broker_port}\n\n'
        f'[monitor]\nmode = "embedded"\nport = {monitor_port}\n'
    )

    def toml(namespace: str) -> str:
        return (
            f'[testbed]\nnamespace = "{namespace}"\nstart_timeout = 90\n\n'
            f"{agent_toml('idle')}\n{services}"
        )

    first: Bed = make_bed("first", broker=None)
    first.write(toml("ports-first"))
    ok(first.cli("up", timeout=240))
    before = first.status()
    assert before["healthy"] is True, before
    pids = {p["process"]: p["pid"] for p in before["programs"]}

    second: Bed = make_bed("second", broker=None)
    second.write(toml("ports-second"))
    for command in ("up", "run"):
        result = second.cli(command, timeout=120)
        assert result.returncode == 1, result.stdout + result.stderr
        err = result.stderr
        assert (
            f"port {broker_port} (127.0.0.1:{broker_port}, for the broker) is in use by pid "
            f"{pids['broker']}" in err
        ), err
        assert (
            f"port {monitor_port} (127.0.0.1:{monitor_port}, for the monitor-web) is in use by "
            f"pid {pids['monitor-web']}" in err
        ), err
        assert "swf_testbed.cli broker" in err  # the holder's program
        assert (
            'mode = "external"' in err and "[broker] port = " in err and "[monitor] port = " in err
        )
        assert "healthy" not in result.stdout
    status = second.status()
    assert status["supervisord"]["running"] is False  # nothing of the second was started
    assert not (Path(status["runtime_dir"]) / "supervisord.pid").exists()

    after = first.status()
    assert after["healthy"] is True
    assert {p["process"]: p["pid"] for p in after["programs"]} == pids  # untouched
    ok(first.cli("stop", "--all"))


@pytest.mark.slow
def test_bad_parameters_fail_before_anything_starts(make_bed: Any) -> None:
    bed: Bed = make_bed("badparams", broker=None)
    bed.write(
        '[testbed]\nnamespace = "badparams"\n\n[parameters]\nstf_count = -1\nstf_intervall = 2\n'
        'physics_period_count = "two"\n\n' + agent_toml("idle")
    )
    for command in ("run", "up"):
        result = bed.cli(command)
        assert result.returncode == 2, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 3, result.stderr
        assert errors[0].startswith(
            "error: testbed.toml: parameters.stf_count: input should be greater than "
            "or equal to 0, got -1"
        ), errors
        assert (
            "parameters.stf_intervall: not a parameter" in errors[1]
            and "'stf_interval'" in errors[1]
        )
        assert errors[2].startswith(
            "error: testbed.toml: parameters.physics_period_count: expected an integer"
        )
    paths = runtime_paths(Path(bed.env["SWF_HOME"]), "badparams")
    assert not Supervisor(paths).running() and not paths.pidfile.exists()
    assert not paths.conf.exists()  # not even its config was written


@pytest.mark.slow
def test_a_broker_left_by_a_killed_supervisord_is_replaced_not_a_conflict(make_bed: Any) -> None:
    """Our own service still holding its port after our supervisord died is stopped, not named."""
    import signal

    bed: Bed = make_bed("orphan-broker", broker=None)
    port = free_port()
    bed.write(
        f'[testbed]\nnamespace = "orphan-broker"\n\n{agent_toml("idle")}\n'
        f'[broker]\nmode = "embedded"\nport = {port}\n\n[monitor]\nmode = "external"\n'
        f'url = "http://127.0.0.1:{free_port()}"\n'
    )
    ok(bed.cli("up"))
    status = bed.status()
    old = {p["process"]: p["pid"] for p in status["programs"]}
    os.kill(status["supervisord"]["pid"], signal.SIGKILL)  # its children, the broker too, live on
    os.kill(old["broker"], 0)
    out = ok(bed.cli("up"))
    assert "stopped 3 processes left by a previous supervisord" in out, out
    new = {p["process"]: p["pid"] for p in bed.status()["programs"]}
    assert new["broker"] != old["broker"] and bed.status()["healthy"] is True
    ok(bed.cli("stop", "--all"))

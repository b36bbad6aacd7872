"""The multi-host harness itself: hosts reach each other and nothing else, cuts, cleanup."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import pytest

from swf_testbed.testing.hosts import PREFIX, Host, Hosts, NetemUnavailable, sweep

MakeHosts = Callable[[Sequence[str]], Hosts]

ECHO_SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7000))
s.listen()
print("listening", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(socket.gethostname().encode() + b" " + c.recv(100))
    c.close()
"""

ECHO_CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 7000), timeout=float(sys.argv[2])) as c:
        c.sendall(b"hello")
        print(c.recv(100).decode())
except OSError as exc:
    print(f"error {type(exc).__name__}: {exc}")
"""


def _echo_server(host: Host) -> subprocess.Popen[str]:
    server = host.popen(
        [sys.executable, "-c", ECHO_SERVER, host.address], stdout=subprocess.PIPE, text=True
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    return server


def _ask(client: Host, server: Host, timeout: float = 5.0) -> str:
    done = client.run(
        [sys.executable, "-c", ECHO_CLIENT, server.address, str(timeout)],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
    )
    return done.stdout.strip()


def _names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_hosts_reach_each_other_under_their_own_hostnames(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(["a", "b", "c"])
    assert len({h.address for h in hosts}) == 3
    server = _echo_server(hosts["a"])
    try:
        assert _ask(hosts["b"], hosts["a"]) == "a.swft hello"
        assert _ask(hosts["c"], hosts["a"]) == "a.swft hello"
        name = hosts["b"].run(
            [sys.executable, "-c", "import socket; print(socket.gethostname())"],
            capture_output=True,
            text=True,
        )
        assert name.stdout.strip() == "b.swft"
    finally:
        server.kill()
        server.wait()


def test_nothing_leaves_the_hosts(make_hosts: MakeHosts) -> None:
    """Only the /24 is routed; the machine's own loopback services are not reachable."""
    hosts = make_hosts(["a"])
    routes = hosts["a"].run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    assert routes.split("\n")[0].startswith("10.213.0.0/24 dev eth0")
    assert "default" not in routes
    probe = (
        "import socket, sys\n"
        "try:\n"
        "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    for address, port, refusal in [
        ("198.51.100.1", "80", "OSError"),  # no route: ENETUNREACH at once
        ("127.0.0.1", "5432", "ConnectionRefusedError"),  # the host's own loopback, empty
    ]:
        done = hosts["a"].run(
            [sys.executable, "-c", probe, address, port], capture_output=True, text=True
        )
        assert done.stdout.strip() == refusal, (address, done.stdout, done.stderr)


def test_a_cut_host_is_unreachable_until_restored(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(["a", "b"])
    a, b = hosts["a"], hosts["b"]
    server = _echo_server(a)
    try:
        assert _ask(b, a) == "a.swft hello"
        b.cut()
        assert b.cut_now
        assert _ask(b, a, timeout=1.0).startswith("error")
        assert _ask(a, a) == "a.swft hello"  # the host itself is fine
        b.restore()
        deadline = time.monotonic() + 30
        while (answer := _ask(b, a)) != "a.swft hello" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert answer == "a.swft hello"
    finally:
        server.kill()
        server.wait()


def test_netem_delay_is_set_or_its_absence_said(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(["a"])
    try:
        hosts["a"].netem(delay_ms=50)
    except NetemUnavailable as exc:
        pytest.skip(str(exc))
    qdisc = hosts["a"].run(["tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
    assert "netem" in qdisc.stdout and "delay 50ms" in qdisc.stdout
    hosts["a"].netem()
    qdisc = hosts["a"].run(["tc", "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
    assert "netem" not in qdisc.stdout


def test_close_removes_every_namespace_and_kills_what_ran_there(make_hosts: MakeHosts) -> None:
    hosts = make_hosts(["a", "b"])
    made = {h.netns for h in hosts} | {hosts.bridge_netns}
    assert made <= _names()
    sleeper = hosts["a"].popen(["sleep", "600"])
    hosts.close()
    assert sleeper.wait(timeout=30) == -9
    assert not made & _names()
    hosts.close()  # again: nothing left to do, no error


def test_a_failed_start_leaves_nothing(make_hosts: MakeHosts) -> None:
    before = _names()
    with pytest.raises(ValueError, match="distinct"):
        make_hosts(["a", "a"])
    with pytest.raises(ValueError, match="lower-case"):
        make_hosts(["A"])
    assert _names() == before


def test_sweep_removes_what_a_dead_harness_left_and_nothing_else(make_hosts: MakeHosts) -> None:
    live = make_hosts(["a"])
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = f"{PREFIX}-{dead.pid}-1-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep()
        assert stale not in _names()
        assert live["a"].netns in _names()  # this process's: alive, kept
        assert f"{PREFIX}-{os.getpid()}" in live["a"].netns
    finally:
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)

"""Several hosts on one machine, for tests that cross a network: Linux network namespaces.

``Hosts(["a", "b", "c"])`` makes one network namespace per host and one more
holding a bridge that joins them, each host linked to it by a veth pair (its
end is ``eth0`` in the host, with an address of the harness's private /24).
The hosts have no route but their /24: traffic goes only between them and to
each host's own loopback, never out of the machine. Commands run inside a
host with :meth:`Host.run` and :meth:`Host.popen`, under the host's own
hostname (a UTS namespace of their own, so ``socket.gethostname()`` in an
agent names its host).

Faults: :meth:`Host.cut` takes the host's port on the bridge down (as if its
cable were pulled: the others see silence, not a reset), :meth:`Host.restore`
brings it back, :meth:`Host.netem` adds delay or loss where the kernel has
``sch_netem`` (:class:`NetemUnavailable` says why not otherwise).

Everything is removed on :meth:`Hosts.close` (the context manager's exit),
also after a failed test; namespaces a crashed run left behind are removed by
:func:`sweep` (called on every start): their names carry the harness's prefix
and the creating process's pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "PREFIX",
    "Host",
    "Hosts",
    "HostsError",
    "NetemUnavailable",
    "netns_unavailable",
    "sweep",
]

PREFIX = "swft"
"""Every namespace of the harness is ``swft-<pid>-<k>-<host>`` (``-br`` for the bridge)."""

SUBNET = "10.213.0"
"""The hosts' /24: private, and only inside the harness's own namespaces (each harness has its
own bridge namespace, so two harnesses at once do not meet even with the same addresses)."""

CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
_counter = iter(range(1, 1_000_000))
_counter_lock = threading.Lock()


class HostsError(RuntimeError):
    """A namespace, link or address could not be made: the ``ip`` command's own error."""


class NetemUnavailable(HostsError):
    """``tc netem`` cannot run here (the kernel has no ``sch_netem``)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise HostsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _namespaces() -> list[str]:
    done = _ip("netns", "list", check=False)
    return [line.split()[0] for line in done.stdout.splitlines() if line.strip()]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _kill_all(netns: str) -> None:
    """SIGKILL every process still in ``netns`` (what a test started there and left running)."""
    done = _ip("netns", "pids", netns, check=False)
    for text in done.stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(text), signal.SIGKILL)


def sweep(prefix: str = PREFIX) -> list[str]:
    """Remove the namespaces a harness left behind when its process died; the ones removed."""
    removed = []
    pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)-")
    for netns in _namespaces():
        match = pattern.match(netns)
        if match is None or _pid_alive(int(match.group(1))):
            continue
        _kill_all(netns)
        if _ip("netns", "del", netns, check=False).returncode == 0:
            removed.append(netns)
    return removed


def netns_unavailable() -> str | None:
    """Why network namespaces cannot be used here, or ``None`` when they can (checked by making
    one)."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add)"
    try:
        probe = f"{PREFIX}-{os.getpid()}-0-probe"
        _ip("netns", "add", probe)
        _ip("netns", "del", probe)
    except FileNotFoundError:
        return "the ip command (iproute2) is not installed"
    except HostsError as exc:
        return f"cannot create a network namespace: {exc}"
    return None


@dataclass
class Host:
    """One host: a network namespace with ``eth0`` on the bridge, its address and hostname."""

    name: str
    netns: str
    address: str
    hostname: str
    bridge_netns: str
    bridge_port: str
    cut_now: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` as it runs inside this host: its network namespace, its hostname."""
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            'hostname "$0" && exec "$@"',
            self.hostname,
            *argv,
        ]

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in this host and wait for it (``subprocess.run`` keywords)."""
        return subprocess.run(self.command(argv), check=kwargs.pop("check", False), **kwargs)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in this host (``subprocess.Popen`` keywords); killed at the harness's
        close if still running."""
        return subprocess.Popen(self.command(argv), **kwargs)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """The calling thread in this host's network namespace for the block: sockets it makes
        meanwhile (and threads it starts) are the host's. Other threads are not affected."""
        libc = ctypes.CDLL(None, use_errno=True)
        with (
            open("/proc/thread-self/ns/net") as own,
            open(f"/run/netns/{self.netns}") as target,
        ):
            if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
                raise HostsError(f"setns into {self.netns}: {os.strerror(ctypes.get_errno())}")
            try:
                yield
            finally:
                if libc.setns(own.fileno(), CLONE_NEWNET) != 0:  # pragma: no cover
                    raise HostsError(f"setns back: {os.strerror(ctypes.get_errno())}")

    def cut(self) -> None:
        """Pull the host's cable: its port on the bridge goes down, nothing passes either way."""
        with self._lock:
            _ip("-n", self.bridge_netns, "link", "set", self.bridge_port, "down")
            self.cut_now = True

    def restore(self) -> None:
        """Plug the cable back in."""
        with self._lock:
            _ip("-n", self.bridge_netns, "link", "set", self.bridge_port, "up")
            self.cut_now = False

    def netem(self, delay_ms: float = 0.0, loss_percent: float = 0.0) -> None:
        """Delay (and lose) what the host sends (``tc netem`` on its ``eth0``); ``0, 0`` removes
        it. :class:`NetemUnavailable` where the kernel has no netem."""
        base = ["ip", "netns", "exec", self.netns, "tc", "qdisc"]
        if not delay_ms and not loss_percent:
            subprocess.run([*base, "del", "dev", "eth0", "root"], capture_output=True, check=False)
            return
        done = subprocess.run(
            [
                *base,
                "replace",
                "dev",
                "eth0",
                "root",
                "netem",
                "delay",
                f"{delay_ms}ms",
                "loss",
                f"{loss_percent}%",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            reason = done.stderr.strip()
            if "unknown" in reason.lower() or "not supported" in reason.lower():
                raise NetemUnavailable(f"tc netem is not available in this kernel: {reason}")
            raise HostsError(f"tc qdisc replace dev eth0 root netem: {reason}")


class Hosts:
    """N hosts joined by a bridge, each in its own network namespace; a context manager."""

    def __init__(self, names: Sequence[str], subnet: str = SUBNET) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError(f"host names must be given and distinct: {list(names)}")
        for name in names:
            if not _NAME.match(name):
                raise ValueError(
                    f"host name {name!r}: a lower-case letter, then up to 11 letters or digits"
                )
        if len(names) > 200:
            raise ValueError(f"{len(names)} hosts: at most 200 fit the /24")
        sweep()
        with _counter_lock:
            k = next(_counter)
        self.stem = f"{PREFIX}-{os.getpid()}-{k}"
        self.bridge_netns = f"{self.stem}-br"
        self.hosts: dict[str, Host] = {}
        self._made: list[str] = []
        try:
            self._make_bridge()
            for i, name in enumerate(names):
                self.hosts[name] = self._make_host(i, name, subnet)
        except BaseException:
            self.close()
            raise

    def _add_netns(self, netns: str) -> None:
        _ip("netns", "add", netns)
        self._made.append(netns)
        _ip("-n", netns, "link", "set", "lo", "up")

    def _make_bridge(self) -> None:
        self._add_netns(self.bridge_netns)
        _ip("-n", self.bridge_netns, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.bridge_netns, "link", "set", "br0", "up")

    def _make_host(self, i: int, name: str, subnet: str) -> Host:
        netns = f"{self.stem}-{name}"
        self._add_netns(netns)
        port = f"p{i}"
        _ip(
            "link",
            "add",
            "eth0",
            "netns",
            netns,
            "type",
            "veth",
            "peer",
            "name",
            port,
            "netns",
            self.bridge_netns,
        )
        _ip("-n", self.bridge_netns, "link", "set", port, "master", "br0")
        _ip("-n", self.bridge_netns, "link", "set", port, "up")
        address = f"{subnet}.{10 + i}"
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        return Host(name, netns, address, f"{name}.swft", self.bridge_netns, port)

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def etc_hosts(self) -> str:
        """Lines for an ``/etc/hosts``: each host's address and hostname."""
        return "".join(f"{h.address} {h.hostname} {h.name}\n" for h in self)

    def write_etc_hosts(self, directory: Path) -> Path:
        """Write :meth:`etc_hosts` to ``directory/hosts`` (for a test's own configuration)."""
        path = directory / "hosts"
        path.write_text(self.etc_hosts())
        return path

    def close(self) -> None:
        """Kill what still runs in the hosts and remove every namespace made (idempotent)."""
        for netns in reversed(self._made):
            _kill_all(netns)
        for netns in reversed(self._made):
            _ip("netns", "del", netns, check=False)
        self._made.clear()

    def __enter__(self) -> Hosts:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

"""Who holds a TCP port: before the testbed starts its services, and when their health is checked.

An embedded service that cannot bind its port crash-loops under supervisord
while whatever holds the port (often another testbed's service) answers in its
place. So ``up`` and ``run`` check every port first (:func:`port_conflicts`),
and the health check asks whether the socket listening on the port belongs to
the service's own process (:func:`listened_by`), not merely whether something
answers there.
"""

from __future__ import annotations

import contextlib
import errno
import shlex
import socket
from dataclasses import dataclass

import psutil


@dataclass(frozen=True)
class Holder:
    """A process listening on a port; ``pid`` None when the system does not tell (another user)."""

    pid: int | None
    program: str = ""

    def describe(self) -> str:
        if self.pid is None:
            return "a process this user cannot see (another user's?)"
        return f"pid {self.pid}" + (f" ({self.program})" if self.program else "")


@dataclass(frozen=True)
class PortConflict:
    """An embedded service's port that is taken by a process that is not that service."""

    service: str
    host: str
    port: int
    holders: tuple[Holder, ...]

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def describe(self) -> str:
        who = ", ".join(h.describe() for h in self.holders) or "another process"
        return f"port {self.port} ({self.address}, for the {self.service}) is in use by {who}"


def _program(pid: int) -> str:
    """A short description of a process: its command line, shortened."""
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.Error, OSError):
        return ""
    text = shlex.join(cmdline) if cmdline else ""
    return text if len(text) <= 160 else text[:157] + "…"


def holders(port: int) -> list[Holder]:
    """Every process listening on TCP ``port`` (any address), as far as this user can see."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    pids: list[int | None] = []
    for conn in conns:
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.pid not in pids
        ):
            pids.append(conn.pid)
    return [Holder(pid, _program(pid) if pid else "") for pid in pids]


def bindable(host: str, port: int) -> bool:
    """Nothing holds ``host:port``: a listening socket could be bound there now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return True  # an unresolvable host is the service's own error to report
    for family, kind, proto, _name, address in infos:
        with contextlib.closing(socket.socket(family, kind, proto)) as sock:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_REUSEADDR, 1
            )  # as servers bind: TIME_WAIT is no conflict
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return False
                return True  # not ours to judge (e.g. an address not on this host)
    return True


def family_pids(pid: int) -> set[int]:
    """``pid`` and its descendants (a server may listen from a child process)."""
    try:
        proc = psutil.Process(pid)
        return {pid, *(child.pid for child in proc.children(recursive=True))}
    except (psutil.Error, OSError):
        return {pid}


def listened_by(pid: int, port: int) -> bool:
    """The process ``pid`` (or one of its children) has a socket listening on TCP ``port``."""
    for member in family_pids(pid):
        try:
            conns = psutil.Process(member).net_connections(kind="tcp")
        except (psutil.Error, OSError):
            continue
        if any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port for c in conns):
            return True
    return False


def check_port(service: str, host: str, port: int, own_pids: set[int]) -> PortConflict | None:
    """A conflict when ``host:port`` is taken by anything but the processes in ``own_pids``."""
    if bindable(host, port):
        return None
    found = holders(port)
    if found and all(h.pid is not None and h.pid in own_pids for h in found):
        return None
    return PortConflict(service, host, port, tuple(h for h in found if h.pid not in own_pids))


def free_port_near(port: int, host: str = "127.0.0.1", tries: int = 50) -> int:
    """A port that can be bound on ``host`` (and on every address) now: the next ones after ``port``
    first, else any the system gives."""
    for candidate in range(port + 1, min(port + 1 + tries, 65536)):
        if bindable(host, candidate) and bindable("0.0.0.0", candidate):
            return candidate
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])

"""The health check: own programs from this supervisord, the agents elsewhere from the monitor.

One row (:class:`ProcessHealth`) per process:

* **programs of this testbed's supervisord** (services and agents of
  ``testbed.toml``): the supervisord state, then for an agent its heartbeats
  as the orchestrator heard them on the broker (matched by pid and this
  host), for a service its port or URL;
* **remote agents** (``[agents.NAME] remote = true``): agents another host's
  supervisord runs. They are read from the monitor's record of their
  heartbeats (``/api/systemagents/?namespace=…``), with the host they name.
  ``run`` waits for them as for its own;
* **other agents** of the namespace the monitor knows and nothing here
  declares: shown (by ``status``), not waited for, and not part of
  "healthy".

Liveness everywhere is :mod:`swf_testbed.liveness`'s rule; a service has none
of its own (``None``, shown as ``n/a``) unless it has a port or URL to ask.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import Any

import httpx

from swf_testbed.liveness import Liveness, healthy
from swf_testbed.orchestrator.health import BeatRecord, HeartbeatBook
from swf_testbed.orchestrator.monitor_api import MonitorAgent
from swf_testbed.orchestrator.ports import holders, listened_by
from swf_testbed.orchestrator.supervisor import FAILED_STATES, Program

REMOTE_STATE = "REMOTE"
"""The ``state`` of a row not run by this supervisord (the ``supervisord`` column shows ``-``)."""

SHOWN_ELSEWHERE = frozenset({Liveness.OK, Liveness.LATE, Liveness.DOWN})
"""Undeclared agents of the namespace that ``status`` lists (an exited or gone one has ended)."""


@dataclass
class ProcessHealth:
    """One process (of this supervisord, or an agent elsewhere) and what is known of its health."""

    program: str
    process: str
    kind: str  # agent | service
    state: str  # supervisord state name; "NOT RUNNING" when supervisord is down; REMOTE_STATE
    pid: int = 0
    started_at: float = 0.0
    healthy: bool = False
    liveness: Liveness | None = Liveness.DOWN  # None: a service with nothing to ask (n/a)
    operational_state: str = ""
    heartbeat_age: float | None = None
    detail: str = ""
    beat: BeatRecord | None = None
    host: str = ""
    expected: bool = True  # False: an agent of the namespace nothing here declares

    @property
    def namespec(self) -> str:
        return f"{self.program}:{self.process}"

    @property
    def remote(self) -> bool:
        return self.state == REMOTE_STATE

    @property
    def liveness_text(self) -> str:
        return "n/a" if self.liveness is None else self.liveness.value

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "process": self.process,
            "kind": self.kind,
            "state": self.state,
            "host": self.host or None,
            "remote": self.remote,
            "expected": self.expected,
            "pid": self.pid or None,
            "uptime_s": round(time.time() - self.started_at, 1)
            if self.started_at and self.state == "RUNNING"
            else None,
            "healthy": self.healthy,
            "liveness": self.liveness_text,
            "operational_state": self.operational_state or None,
            "heartbeat_age_s": round(self.heartbeat_age, 2)
            if self.heartbeat_age is not None
            else None,
            "detail": self.detail or None,
        }


# --------------------------------------------------------------------------- own programs


def _tcp_ok(target: str) -> bool:
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
            return True
    except (OSError, ValueError):
        return False


def _http_ok(url: str) -> bool:
    try:
        httpx.get(url + "/", timeout=1.0, follow_redirects=False)
        return True
    except httpx.HTTPError:
        return False


def _from_supervisor(prog: Program, proc: str, info: dict[str, Any] | None) -> ProcessHealth:
    """A row with what supervisord says of the process."""
    h = ProcessHealth(prog.name, proc, prog.kind, info["statename"] if info else "NOT RUNNING")
    if info:
        h.pid = int(info.get("pid") or 0)
        h.started_at = float(info.get("start") or 0)
        if h.state in FAILED_STATES or h.state == "EXITED":
            h.detail = str(info.get("spawnerr") or info.get("description") or "")
        elif h.state == "STOPPED":
            h.detail = "stopped"
    return h


def _agent_health(
    h: ProcessHealth, prog: Program, beats: HeartbeatBook, now: float, host: str
) -> None:
    """An agent of this supervisord: healthy when RUNNING and its own heartbeats say so."""
    running = h.state == "RUNNING"
    live = h.pid > 0  # RUNNING or STARTING: only this process's heartbeats count
    beat = beats.match(
        h.process,
        h.pid if live else None,
        started_at=h.started_at if live else None,
        single=prog.numprocs == 1,
        hostname=host,
    )
    h.beat = beat
    if beat is not None:
        h.heartbeat_age = beat.age(now)
        h.operational_state = beat.operational_state
        h.liveness = beat.liveness(now)
    h.healthy = running and beat is not None and beat.healthy(now)
    if running and beat is None:
        h.detail = "no heartbeat heard yet"
    elif running and not h.healthy and beat is not None:
        h.detail = (
            f"{beat.operational_state}, last heartbeat {h.heartbeat_age:.1f} s ago "
            f"(interval {beat.interval_s:g} s)"
        )


def _answers(prog: Program) -> tuple[bool, str]:
    """Whether the service answers where it should, and what to say when it does not."""
    if prog.health == "tcp":
        return _tcp_ok(prog.health_target), f"not accepting connections on {prog.health_target}"
    if prog.health == "http":
        return _http_ok(prog.health_target), f"{prog.health_target} not answering"
    return True, ""


def _service_health(h: ProcessHealth, prog: Program) -> None:
    """A service: healthy when RUNNING, answering at its port or URL, and that port is its own."""
    running = h.state == "RUNNING"
    h.liveness = None
    answers, why = _answers(prog) if running else (False, "")
    h.healthy = running and answers
    if running and not answers:
        h.detail = why
    if h.healthy and prog.listen_port and not listened_by(h.pid, prog.listen_port):
        # something answers there, but not this process: another testbed's service?
        h.healthy = False
        who = ", ".join(x.describe() for x in holders(prog.listen_port) if x.pid != h.pid)
        h.detail = (
            f"port {prog.listen_port} answers, but from {who or 'another process'}, "
            f"not this testbed's {prog.name} (pid {h.pid})"
        )
    if h.healthy:
        h.liveness = Liveness.OK
    elif prog.health in ("tcp", "http"):
        h.liveness = Liveness.DOWN
        if not running:  # say what is missing: the address users and agents reach it at
            h.detail = f"{h.detail or h.state.lower()}: {prog.health_target} is down"


def check_programs(
    programs: list[Program],
    infos: dict[str, dict[str, Any]],
    beats: HeartbeatBook,
    *,
    now: float | None = None,
    host: str | None = None,
) -> list[ProcessHealth]:
    """Health of every process of ``programs``, from supervisord's ``infos`` and the heartbeats."""
    now = time.time() if now is None else now
    host = socket.gethostname() if host is None else host
    result = []
    for prog in programs:
        for proc in prog.processes:
            h = _from_supervisor(prog, proc, infos.get(prog.namespec(proc)))
            h.host = host
            if prog.health == "heartbeat":
                _agent_health(h, prog, beats, now, host)
            else:
                _service_health(h, prog)
            result.append(h)
    return result


# --------------------------------------------------------------------------- agents elsewhere


@dataclass(frozen=True)
class RemoteAgent:
    """``[agents.NAME] remote = true``: an agent another host runs, expected in the monitor."""

    name: str
    instances: int = 1
    host: str | None = None  # the host its heartbeats must name; None: any

    @property
    def processes(self) -> list[str]:
        """The logical names its processes report (as that host's supervisord names them)."""
        if self.instances == 1:
            return [self.name]
        return [f"{self.name}_{i:02d}" for i in range(self.instances)]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "instances": self.instances, "host": self.host}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RemoteAgent:
        return cls(str(data["name"]), int(data.get("instances") or 1), data.get("host"))


def _row_from_monitor(
    program: str, agent: MonitorAgent, now: float, *, expected: bool = True
) -> ProcessHealth:
    h = ProcessHealth(
        program,
        agent.instance_name,
        "agent",
        REMOTE_STATE,
        pid=agent.pid,
        liveness=agent.liveness,
        operational_state=agent.operational_state,
        host=agent.hostname,
        expected=expected,
    )
    if agent.last_heartbeat is not None:
        h.heartbeat_age = max(0.0, now - agent.last_heartbeat)
    h.healthy = healthy(agent.liveness, agent.operational_state)
    if not h.healthy:
        age = f"{h.heartbeat_age:.1f} s ago" if h.heartbeat_age is not None else "never"
        interval = f" (interval {agent.heartbeat_interval:g} s)" if agent.heartbeat_interval else ""
        h.detail = (
            f"{agent.liveness.value}, {agent.operational_state or 'no state'} on host "
            f"{agent.hostname or '?'}; last heartbeat in the monitor {age}{interval}"
        )
    return h


def _pick(candidates: list[MonitorAgent]) -> MonitorAgent | None:
    """The newest heartbeat among the monitor's agents of one name (one row per name there)."""
    if not candidates:
        return None
    return max(candidates, key=lambda a: a.last_heartbeat or 0.0)


def check_remote(
    expected: list[RemoteAgent],
    agents: list[MonitorAgent] | None,
    *,
    problem: str = "",
    now: float | None = None,
) -> list[ProcessHealth]:
    """A row per process of each remote agent, from the monitor's ``agents`` (None: no answer)."""
    now = time.time() if now is None else now
    rows = []
    for remote in expected:
        for proc in remote.processes:
            found = _pick(
                [
                    a
                    for a in agents or []
                    if a.instance_name == proc
                    and (remote.host is None or a.hostname == remote.host)
                ]
            )
            if found is not None:
                rows.append(_row_from_monitor(remote.name, found, now))
                continue
            where = f" from host {remote.host}" if remote.host else ""
            detail = (
                f"cannot ask the monitor: {problem}"
                if agents is None
                else f"no heartbeat{where} in the monitor yet"
            )
            rows.append(
                ProcessHealth(
                    remote.name,
                    proc,
                    "agent",
                    REMOTE_STATE,
                    liveness=Liveness.UNKNOWN,
                    host=remote.host or "",
                    detail=detail,
                )
            )
    return rows


def others_in_namespace(
    agents: list[MonitorAgent] | None, known: set[str], *, now: float | None = None
) -> list[ProcessHealth]:
    """Agents of the namespace in the monitor that no row already names (``status`` shows them)."""
    now = time.time() if now is None else now
    rows = [
        _row_from_monitor(a.instance_name, a, now, expected=False)
        for a in agents or []
        if a.instance_name not in known and a.liveness in SHOWN_ELSEWHERE
    ]
    return sorted(rows, key=lambda h: (h.host, h.process))

"""What ``swf-testbed up`` / ``status`` / ``stop`` / ``restart`` do to a namespace (no terminal).

:class:`Testbed` is one namespace's supervisord and its programs (from a
testbed.toml, or from what the last ``up`` recorded), and the agents the
testbed.toml declares as running elsewhere. Its health check is
:mod:`~swf_testbed.orchestrator.checks`; the orchestrator's broker connection
is :mod:`~swf_testbed.orchestrator.listener`; following one execution is
:mod:`~swf_testbed.orchestrator.session` and
:mod:`~swf_testbed.orchestrator.follow`. The CLI
(:mod:`swf_testbed.cli.orchestrator`) adds the display and the signals.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from swf_testbed.liveness import Liveness
from swf_testbed.orchestrator.checks import (
    ProcessHealth,
    RemoteAgent,
    check_programs,
    check_remote,
    others_in_namespace,
)
from swf_testbed.orchestrator.config import LoadedConfig, Services, resolve_services
from swf_testbed.orchestrator.health import ExecutionBook, HeartbeatBook, read_watch_file
from swf_testbed.orchestrator.monitor_api import ExecutionInfo, MonitorAgent, MonitorApi
from swf_testbed.orchestrator.ports import PortConflict, check_port, family_pids, free_port_near
from swf_testbed.orchestrator.supervisor import (
    FAILED_STATES,
    Program,
    Supervisor,
    SupervisorError,
    build_programs,
    change_reasons,
    locked,
    log_tail,
    pid_alive,
    read_state,
    render_conf,
    runtime_paths,
    write_state,
)
from swf_testbed.retry import Backoff
from swf_testbed.settings import Settings

EXITED_GRACE_S = 3.0
"""A program EXITED/STOPPED this long after we started it has failed (autorestart would act)."""
MONITOR_POLL_S = 1.0
"""While waiting for health, the monitor is asked for the remote agents at most this often."""


class OrchestratorError(RuntimeError):
    """Something a person must act on; the message says what."""


# --------------------------------------------------------------------------- failures


@dataclasses.dataclass
class Failure:
    """A program that did not become healthy: name, state, why, and its log's last lines."""

    health: ProcessHealth
    reason: str
    log: str

    def describe(self) -> str:
        head = f"{self.health.process} ({self.health.kind}): {self.reason}"
        return head + ("\n" + _indent(self.log) if self.log else "")


class Unhealthy(OrchestratorError):
    def __init__(self, failures: list[Failure], waited: float | None = None) -> None:
        self.failures = failures
        names = ", ".join(f.health.process for f in failures)
        if waited is not None:
            head = f"not healthy after {waited:g} s: {names}"
        else:
            head = f"failed to start: {names}"
        super().__init__(head + "\n" + "\n".join(f.describe() for f in failures))


class PortsInUse(OrchestratorError):
    """Ports the embedded services need are held by other processes; nothing was started."""

    def __init__(self, conflicts: list[PortConflict], source: str = "testbed.toml") -> None:
        self.conflicts = conflicts
        lines = [c.describe() for c in conflicts]
        sections = {
            c.service: "[broker]" if c.service == "broker" else "[monitor]" for c in conflicts
        }
        free = ", ".join(
            f"{sections[c.service]} port = {free_port_near(c.port, c.host)}" for c in conflicts
        )
        lines.append(
            f"nothing was started. Fix: other ports in "
            f"{' and '.join(sorted(set(sections.values())))} "
            f'of {source} (free now: {free}), or mode = "external" there to share the services '
            f"already listening on purpose"
        )
        super().__init__("\n".join(lines))


def _indent(text: str, prefix: str = "    | ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def _is_testbed_process(pid: int, namespace: str) -> bool:
    """The command line of ``pid`` runs a testbed program of ``namespace`` (Linux /proc)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    text = b" ".join(argv).decode(errors="replace")
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        environ = []
    in_namespace = (
        f"SWF_NAMESPACE={namespace}".encode() in environ or f"--namespace {namespace}" in text
    )
    return in_namespace and (
        "swf_testbed" in text or f"SWF_NAMESPACE={namespace}".encode() in environ
    )


# ------------------------------------------------------------------------- one namespace's testbed


class Testbed:
    """A namespace's supervisord and its programs."""

    __test__ = False

    def __init__(
        self, settings: Settings, namespace: str, *, loaded: LoadedConfig | None = None
    ) -> None:
        self.settings = settings
        self.namespace = namespace
        self.loaded = loaded
        self.paths = runtime_paths(settings.home, namespace)
        self.supervisor = Supervisor(self.paths)
        self.notices: list[str] = []
        self._orphan_services: set[int] = set()  # found by port_conflicts, stopped by stop_orphans
        state = read_state(self.paths) or {}
        if loaded is not None:
            self.services: Services | None = resolve_services(loaded.config, settings)
            self.programs, self.notices = build_programs(
                loaded, self.services, settings.home, self.paths
            )
            self.monitor_url = self.services.monitor_url
            self.broker = self.services.broker
            self.remote_agents = [
                RemoteAgent(name, a.instances, a.host)
                for name, a in loaded.config.remote_agents().items()
            ]
        else:
            self.services = None
            self.programs = [Program.from_json(p) for p in state.get("programs", [])]
            self.monitor_url = state.get("monitor_url", settings.monitor.monitor_url)
            broker = state.get("broker") or {}
            self.broker = settings.broker.model_copy(
                update={k: broker[k] for k in ("host", "port") if k in broker}
            )
            self.remote_agents = [RemoteAgent.from_json(r) for r in state.get("remote_agents", [])]
        self.monitor = MonitorApi(self.monitor_url, token=settings.monitor.api_token)
        self._monitor_agents: tuple[float, list[MonitorAgent] | None] | None = None
        self.recorded_config = state.get("config_path")

    @classmethod
    def from_config(cls, loaded: LoadedConfig, settings: Settings) -> Testbed:
        return cls(settings, loaded.namespace, loaded=loaded)

    # ------------------------------------------------------------------ config

    def conf_text(self) -> str:
        return render_conf(self.paths, self.programs, self.namespace)

    def pending_changes(self) -> bool:
        """True when the file on disk differs from what this testbed.toml + environment give."""
        if self.loaded is None:
            return False
        try:
            return self.paths.conf.read_text() != self.conf_text()
        except (OSError, SupervisorError):
            return True

    def agent_programs(self) -> list[Program]:
        return [p for p in self.programs if p.kind == "agent"]

    def find(self, name: str) -> tuple[Program, list[str]]:
        """A program by name, or one process of it (``worker_01``); its processes."""
        for prog in self.programs:
            if name == prog.name:
                return prog, prog.processes
            if name in prog.processes:
                return prog, [name]
        known = ", ".join(p.name for p in self.programs) or "none"
        raise OrchestratorError(
            f"no program {name!r} in namespace {self.namespace} (programs: {known})"
        )

    # ------------------------------------------------------------------ bring up

    def ensure_up(
        self, on_event: Callable[[str], None] = lambda _m: None, *, only: list[str] | None = None
    ) -> dict[str, Any]:
        """Write the config, start or update supervisord, start what is not running.

        ``only``: start only these programs (services are always started).
        Returns the groups added/changed/removed, processes started and, by changed group, why
        (``reasons``).
        """
        if self.loaded is None:
            raise OrchestratorError("a testbed.toml is needed to start programs")
        text = self.conf_text()
        changes: dict[str, Any] = {"added": [], "changed": [], "removed": [], "started": []}
        with locked(self.paths):
            conflicts = self.port_conflicts()
            if conflicts:
                raise PortsInUse(conflicts, self.loaded.source)
            old = self.paths.conf.read_text() if self.paths.conf.exists() else None
            self.paths.conf.write_text(text)
            self.paths.conf.chmod(0o600)
            write_state(
                self.paths,
                {
                    "namespace": self.namespace,
                    "config_path": str(self.loaded.path),
                    "programs": [p.to_json() for p in self.programs],
                    "monitor_url": self.monitor_url,
                    "broker": {"host": self.broker.host, "port": self.broker.port},
                    "remote_agents": [r.to_json() for r in self.remote_agents],
                },
            )
            if not self.supervisor.running():
                orphans = self.stop_orphans()
                if orphans:
                    on_event(
                        f"stopped {len(orphans)} processes left by a previous supervisord "
                        f"(pids {', '.join(map(str, orphans))})"
                    )
                on_event(f"starting supervisord for namespace {self.namespace} ({self.paths.root})")
                self.supervisor.start_daemon()
                changes["added"] = [p.name for p in self.programs]
            elif old != text:
                on_event("testbed.toml or environment changed: updating supervisord")
                applied = self.supervisor.apply()
                changes.update(applied)
                changes["reasons"] = change_reasons(old or "", text)
            infos = self.supervisor.infos()
            for prog in self.programs:
                if only is not None and prog.kind == "agent" and prog.name not in only:
                    continue
                for proc in prog.processes:
                    info = infos.get(prog.namespec(proc))
                    if info is None:
                        raise OrchestratorError(
                            f"supervisord does not know {prog.namespec(proc)}; "
                            f"see {self.paths.logfile}"
                        )
                    if info["statename"] in ("STOPPED", "EXITED", "FATAL"):
                        self.supervisor.start_process(prog.namespec(proc))
                        changes["started"].append(proc)
        return changes

    def port_conflicts(self) -> list[PortConflict]:
        """Ports of the embedded services held by anything but this testbed's own service processes.

        A service left by a dead supervisord of this testbed (same runtime directory and
        namespace) is not a conflict: :meth:`stop_orphans` stops it before the start.
        """
        infos: dict[str, dict[str, Any]] = {}
        if self.supervisor.running():
            with contextlib.suppress(SupervisorError):
                infos = self.supervisor.infos()
        self._orphan_services = set()
        conflicts = []
        for prog in self.programs:
            if prog.kind != "service" or not prog.listen_port:
                continue
            own = set()
            for proc in prog.processes:
                pid = int((infos.get(prog.namespec(proc)) or {}).get("pid") or 0)
                if pid:
                    own |= family_pids(pid)
            conflict = check_port(prog.name, prog.listen_host, prog.listen_port, own)
            if conflict is not None and not infos:
                orphans = {h.pid for h in conflict.holders if h.pid and self._is_own_orphan(h.pid)}
                if orphans and all(h.pid in orphans for h in conflict.holders):
                    self._orphan_services |= orphans
                    continue
            if conflict is not None:
                conflicts.append(conflict)
        return conflicts

    def _is_own_orphan(self, pid: int) -> bool:
        """A process started by a supervisord of this runtime directory and namespace (now gone)."""
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            return False
        home = Path(self.settings.home).expanduser().absolute()  # as build_programs passes it on
        return (
            f"SWF_HOME={home}".encode() in environ
            and f"SWF_NAMESPACE={self.namespace}".encode() in environ
        )

    def stop_orphans(self, timeout: float = 15.0) -> list[int]:
        """SIGTERM the agents and watch a dead supervisord left running (known from watch.json).

        Only processes of this host that reported lately and whose command
        line is a testbed program are touched.
        """
        snap = read_watch_file(self.paths.watch_file)
        pids = set(
            self._orphan_services
        )  # our own services a dead supervisord left holding their ports
        if snap is not None and snap.hostname == socket.gethostname():
            pids |= {
                r.pid
                for r in snap.heartbeats
                if r.hostname == snap.hostname and r.liveness() in (Liveness.OK, Liveness.LATE)
            }
            if snap.fresh and snap.pid:
                pids.add(snap.pid)
        victims = [
            pid for pid in pids if pid != os.getpid() and _is_testbed_process(pid, self.namespace)
        ]
        for pid in victims:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        poll = Backoff(0.02, 0.2)
        while time.monotonic() < deadline and any(pid_alive(p) for p in victims):
            time.sleep(poll.next_delay())
        for pid in victims:
            if pid_alive(pid):
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        return sorted(victims)

    # ------------------------------------------------------------------ health

    def check(
        self,
        beats: HeartbeatBook,
        programs: list[Program] | None = None,
        infos: dict[str, dict[str, Any]] | None = None,
        *,
        remote: list[RemoteAgent] | None = None,
    ) -> list[ProcessHealth]:
        """Health of every process of ``programs`` (default: all), then of the remote agents.

        ``remote``: the agents elsewhere to check in the monitor (default: those
        the testbed.toml declares; with ``programs`` given, none).
        """
        programs = self.programs if programs is None else programs
        if infos is None:
            try:
                infos = self.supervisor.infos()
            except SupervisorError:
                infos = {}
        health = check_programs(programs, infos, beats)
        if remote is None and programs is self.programs:
            remote = self.remote_agents
        if remote:
            agents = self.monitor_agents(max_age=MONITOR_POLL_S)
            health += check_remote(remote, agents, problem=self.monitor.problem)
        return health

    def monitor_agents(self, max_age: float = 0.0) -> list[MonitorAgent] | None:
        """The namespace's agents in the monitor (asked again when its last answer is older than
        ``max_age``)."""
        cached = self._monitor_agents
        if cached is not None and time.monotonic() - cached[0] < max_age:
            return cached[1]
        agents = self.monitor.agents(self.namespace)
        self._monitor_agents = (time.monotonic(), agents)
        return agents

    def others(self, health: list[ProcessHealth]) -> list[ProcessHealth]:
        """Agents of the namespace the monitor knows and nothing here names (``status``)."""
        known = {h.process for h in health}
        return others_in_namespace(self.monitor_agents(max_age=MONITOR_POLL_S), known)

    def log_of(self, process: str, namespec: str, lines: int = 20) -> str:
        text = self.supervisor.tail(namespec, 6000) if self.supervisor.paths.socket.exists() else ""
        if not text.strip():
            return log_tail(self.paths.log_of(process), lines)
        return "\n".join(text.splitlines()[-lines:])

    def wait_healthy(
        self,
        beats: HeartbeatBook,
        timeout: float,
        *,
        programs: list[Program] | None = None,
        on_progress: Callable[[list[ProcessHealth]], None] = lambda _h: None,
        cancelled: Callable[[], bool] = lambda: False,
        broker_connected: Callable[[], bool] | None = None,
        broker_grace: float = 15.0,
        remote: list[RemoteAgent] | None = None,
    ) -> list[ProcessHealth]:
        """Until every process is healthy; :class:`Unhealthy` at once when one fails, or at timeout.

        ``broker_connected``: our own broker connection; when it has not come
        up within ``broker_grace`` seconds no heartbeat can be heard, and we
        say so instead of waiting for the whole timeout. When the testbed runs
        the broker itself, that grace starts once it listens: on a loaded
        machine the broker alone can take longer than the grace to start.

        ``remote``: the agents elsewhere to wait for (as :meth:`check`: by default
        those the testbed.toml declares, unless ``programs`` names a few).
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        grace_from: float | None = None
        exited_since: dict[str, float] = {}
        poll = Backoff(0.05, 0.25)  # a new heartbeat ends the wait at once
        while True:
            health = self.check(beats, programs, remote=remote)
            on_progress(health)
            if all(h.healthy for h in health):
                return health
            now = time.monotonic()
            failures = []
            for h in health:
                if h.state in FAILED_STATES:
                    failures.append(h)
                elif h.state in ("EXITED", "STOPPED", "NOT RUNNING"):
                    first = exited_since.setdefault(h.namespec, now)
                    if now - first >= EXITED_GRACE_S:
                        failures.append(h)
                else:
                    exited_since.pop(h.namespec, None)
            if failures:
                raise Unhealthy([self._failure(h) for h in failures])
            broker_program = [h for h in health if h.program == "broker" and h.kind == "service"]
            if grace_from is None and (not broker_program or self._broker_listens()):
                grace_from = now
            if (
                broker_connected is not None
                and grace_from is not None
                and now - grace_from >= min(broker_grace, timeout)
                and not broker_connected()
            ):
                raise OrchestratorError(
                    f"cannot reach the broker at {self.broker.host}:{self.broker.port} "
                    f"(waited {broker_grace:g} s); agents cannot report their health without it. "
                    f"Is it running? ([broker] in testbed.toml, ACTIVEMQ_HOST / ACTIVEMQ_PORT in "
                    f"the environment)"
                )
            if now >= deadline:
                raise Unhealthy([self._failure(h) for h in health if not h.healthy], waited=timeout)
            if cancelled():
                raise KeyboardInterrupt
            beats.changed.wait(poll.next_delay())
            beats.changed.clear()

    def _broker_listens(self) -> bool:
        try:
            with socket.create_connection((self.broker.host, self.broker.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _failure(self, h: ProcessHealth) -> Failure:
        if h.remote:
            return Failure(h, h.detail or "not healthy", "")
        if h.state in FAILED_STATES or h.state in ("EXITED", "STOPPED"):
            reason = f"{h.state} in supervisord" + (f" ({h.detail})" if h.detail else "")
        elif h.state == "NOT RUNNING":
            reason = "supervisord is not running"
        else:
            reason = f"{h.state}, {h.detail or 'not healthy'}"
        return Failure(h, reason, self.log_of(h.process, h.namespec))

    # ------------------------------------------------------------------ stop

    def stop_agents(self, names: list[str] | None = None) -> list[str]:
        """Stop agent programs (all, or the named); returns those stopped."""
        stopped = []
        infos = self.supervisor.infos()
        for prog in self.agent_programs():
            if names is not None and prog.name not in names:
                continue
            if any(
                infos.get(prog.namespec(p), {}).get("statename")
                in ("RUNNING", "STARTING", "BACKOFF")
                for p in prog.processes
            ):
                self.supervisor.stop_group(prog.name)
                stopped.append(prog.name)
        return stopped

    def shutdown(self) -> bool:
        with locked(self.paths):
            return self.supervisor.shutdown()

    def restart(self, name: str) -> list[str]:
        prog, processes = self.find(name)
        if processes == prog.processes:
            try:
                self.supervisor.stop_group(prog.name)
            except SupervisorError:
                pass
        else:
            for proc in processes:
                self.supervisor.stop_process(prog.namespec(proc))
        for proc in processes:
            self.supervisor.start_process(prog.namespec(proc))
        return processes

    # ------------------------------------------------------------------ executions

    def latest_execution(self, executions: ExecutionBook) -> tuple[ExecutionInfo | None, str]:
        """The latest execution of the namespace, and where the monitor stands.

        Asks the monitor's REST API; what the broker said (the watch program
        hears every reply) wins when the monitor has not caught up yet.
        """
        monitor = self.monitor.latest_execution(self.namespace)
        source = self.monitor.problem or "monitor"
        rec = executions.latest()
        if rec is None:
            return monitor, source
        if monitor is not None and monitor.execution_id == rec.execution_id:
            if rec.status != "running":  # the monitor may not have ingested the end yet
                monitor = dataclasses.replace(monitor, status=rec.status)
            return monitor, source
        return ExecutionInfo(rec.execution_id, rec.status, rec.workflow_name, "broker"), source

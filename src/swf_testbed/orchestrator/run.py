"""What ``swf-testbed run`` / ``up`` / ``status`` / ``stop`` do, without the terminal.

:class:`Testbed` is one namespace's supervisord and its programs (from a
testbed.toml, or from what the last ``up`` recorded); :class:`Listener` is the
orchestrator's own broker connection (heartbeats, replies, run and data
traffic); :class:`WorkflowSession` follows one workflow execution. The CLI
(:mod:`swf_testbed.cli.orchestrator`) adds the display and the signals.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from swf_testbed.messages import (
    EndRun,
    Heartbeat,
    Message,
    MessageError,
    RunMessage,
    RunWorkflow,
    SliceResult,
    StopWorkflow,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
    parse_message,
)
from swf_testbed.mq import BrokerClient, Delivery
from swf_testbed.mq.destinations import (
    HEARTBEAT_TOPIC,
    MONITOR_TOPIC,
    RUN_TOPIC,
    control_queue,
    data_topic,
    replies_topic,
    worker_topic,
)
from swf_testbed.orchestrator.config import LoadedConfig, Services, resolve_services
from swf_testbed.orchestrator.health import (
    BeatRecord,
    ExecutionBook,
    HeartbeatBook,
    read_watch_file,
)
from swf_testbed.orchestrator.ports import (
    PortConflict,
    check_port,
    family_pids,
    free_port_near,
    holders,
    listened_by,
)
from swf_testbed.orchestrator.supervisor import (
    FAILED_STATES,
    Program,
    RuntimePaths,
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
from swf_testbed.settings import BrokerSettings, Settings

SENDER = "swf-testbed-cli"
EXITED_GRACE_S = 3.0
"""A program seen EXITED/STOPPED this long after we started it has failed (autorestart would have acted)."""


class OrchestratorError(RuntimeError):
    """Something a person must act on; the message says what."""


# --------------------------------------------------------------------------- health of programs


@dataclass
class ProcessHealth:
    """One supervisord process and what we know of its health."""

    program: str
    process: str
    kind: str
    state: str  # supervisord state name, or "NOT RUNNING" when supervisord is down
    pid: int = 0
    started_at: float = 0.0
    healthy: bool = False
    liveness: str = "down"  # ok | late | down | n/a
    operational_state: str = ""
    heartbeat_age: float | None = None
    detail: str = ""
    beat: BeatRecord | None = None

    @property
    def namespec(self) -> str:
        return f"{self.program}:{self.process}"

    def to_json(self) -> dict[str, Any]:
        return {
            "program": self.program,
            "process": self.process,
            "kind": self.kind,
            "state": self.state,
            "pid": self.pid or None,
            "uptime_s": round(time.time() - self.started_at, 1)
            if self.started_at and self.state == "RUNNING"
            else None,
            "healthy": self.healthy,
            "liveness": self.liveness,
            "operational_state": self.operational_state or None,
            "heartbeat_age_s": round(self.heartbeat_age, 2)
            if self.heartbeat_age is not None
            else None,
            "detail": self.detail or None,
        }


@dataclass
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
            f"nothing was started. Fix: other ports in {' and '.join(sorted(set(sections.values())))} "
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


# --------------------------------------------------------------------------- the broker side


class Listener:
    """The orchestrator's broker connection: heartbeats, executions, and an optional session."""

    def __init__(
        self, broker: BrokerSettings, namespace: str, *, follow_data: bool = False
    ) -> None:
        self.namespace = namespace
        self.beats = HeartbeatBook(namespace)
        self.executions = ExecutionBook(namespace)
        self.session: WorkflowSession | None = None
        settings = broker.model_copy(update={"reconnect_initial_s": 0.1, "reconnect_max_s": 1.0})
        self.client = BrokerClient(settings, client_name=f"swf-cli-{namespace}")
        self.client.subscribe(HEARTBEAT_TOPIC, self._on_delivery, ack="auto")
        self.client.subscribe(replies_topic(namespace), self._on_delivery, ack="auto")
        if follow_data:
            for dest in (RUN_TOPIC, data_topic(namespace), worker_topic(namespace), MONITOR_TOPIC):
                self.client.subscribe(dest, self._on_delivery, ack="auto")

    def start(self) -> Listener:
        self.client.start(wait=None)
        return self

    def close(self) -> None:
        self.client.close(timeout=2.0)

    def wait_connected(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.connected:
                return True
            time.sleep(0.05)
        return self.client.connected

    def seed_from_watch(self, paths: RuntimePaths) -> None:
        snap = read_watch_file(paths.watch_file)
        if snap is None:
            return
        for rec in snap.heartbeats:
            self.beats.add(rec)
        for ex in snap.executions:
            self.executions.add(ex)

    def _on_delivery(self, delivery: Delivery) -> None:
        try:
            msg = parse_message(delivery.body)
        except MessageError:
            return
        if msg.namespace != self.namespace:
            return
        if isinstance(msg, Heartbeat):
            self.beats.observe(msg)
            return
        self.executions.observe(msg)
        session = self.session
        if session is not None:
            session.observe(msg)


# --------------------------------------------------------------------------- one namespace's testbed


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
        else:
            self.services = None
            self.programs = [Program.from_json(p) for p in state.get("programs", [])]
            self.monitor_url = state.get("monitor_url", settings.monitor.monitor_url)
            broker = state.get("broker") or {}
            self.broker = settings.broker.model_copy(
                update={k: broker[k] for k in ("host", "port") if k in broker}
            )
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
        Returns the groups added/changed/removed, processes started and, by changed group, why (``reasons``).
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
                if r.hostname == snap.hostname and r.liveness() != "down"
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
        while time.monotonic() < deadline and any(pid_alive(p) for p in victims):
            time.sleep(0.1)
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
    ) -> list[ProcessHealth]:
        """Health of every process of ``programs`` (default: all)."""
        programs = self.programs if programs is None else programs
        if infos is None:
            try:
                infos = self.supervisor.infos()
            except SupervisorError:
                infos = {}
        now = time.time()
        host = socket.gethostname()
        result = []
        for prog in programs:
            for proc in prog.processes:
                info = infos.get(prog.namespec(proc))
                h = ProcessHealth(
                    prog.name, proc, prog.kind, info["statename"] if info else "NOT RUNNING"
                )
                if info:
                    h.pid = int(info.get("pid") or 0)
                    h.started_at = float(info.get("start") or 0)
                    if h.state in FAILED_STATES or h.state == "EXITED":
                        h.detail = str(info.get("spawnerr") or info.get("description") or "")
                    elif h.state == "STOPPED":
                        h.detail = "stopped"
                running = h.state == "RUNNING"
                if prog.health == "heartbeat":
                    live = h.pid > 0  # RUNNING or STARTING: only this process's heartbeats count
                    beat = beats.match(
                        proc,
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
                else:
                    h.liveness = "n/a"
                    if prog.health == "tcp":
                        h.healthy = running and _tcp_ok(prog.health_target)
                        if running and not h.healthy:
                            h.detail = f"not accepting connections on {prog.health_target}"
                    elif prog.health == "http":
                        h.healthy = running and _http_ok(prog.health_target)
                        if running and not h.healthy:
                            h.detail = f"{prog.health_target} not answering"
                    else:
                        h.healthy = running
                    if h.healthy and prog.listen_port and not listened_by(h.pid, prog.listen_port):
                        # something answers there, but not this process: another testbed's service?
                        h.healthy = False
                        who = ", ".join(
                            x.describe() for x in holders(prog.listen_port) if x.pid != h.pid
                        )
                        h.detail = (
                            f"port {prog.listen_port} answers, but from {who or 'another process'}, "
                            f"not this testbed's {prog.name} (pid {h.pid})"
                        )
                    if h.healthy:
                        h.liveness = "ok"
                    elif prog.health in ("tcp", "http"):
                        h.liveness = "down"
                        if (
                            not running
                        ):  # say what is missing: the address users and agents reach it at
                            h.detail = (
                                f"{h.detail or h.state.lower()}: {prog.health_target} is down"
                            )
                result.append(h)
        return result

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
    ) -> list[ProcessHealth]:
        """Until every process is healthy; :class:`Unhealthy` at once when one fails, or at the timeout.

        ``broker_connected``: our own broker connection; when it has not come
        up within ``broker_grace`` seconds no heartbeat can be heard, and we
        say so instead of waiting for the whole timeout. When the testbed runs
        the broker itself, that grace starts once it listens: on a loaded
        machine the broker alone can take longer than the grace to start.
        """
        t0 = time.monotonic()
        deadline = t0 + timeout
        grace_from: float | None = None
        exited_since: dict[str, float] = {}
        while True:
            health = self.check(beats, programs)
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
                    f"cannot reach the broker at {self.broker.host}:{self.broker.port} (waited {broker_grace:g} s); "
                    f"agents cannot report their health without it. Is it running? ([broker] in testbed.toml, "
                    f"ACTIVEMQ_HOST / ACTIVEMQ_PORT in the environment)"
                )
            if now >= deadline:
                raise Unhealthy([self._failure(h) for h in health if not h.healthy], waited=timeout)
            if cancelled():
                raise KeyboardInterrupt
            beats.changed.wait(0.25)
            beats.changed.clear()

    def _broker_listens(self) -> bool:
        try:
            with socket.create_connection((self.broker.host, self.broker.port), timeout=0.2):
                return True
        except OSError:
            return False

    def _failure(self, h: ProcessHealth) -> Failure:
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

    def latest_execution(self, executions: ExecutionBook) -> tuple[dict[str, Any] | None, str]:
        """The latest execution of the namespace, and where the monitor stands.

        Asks the monitor's REST API; what the broker said (the watch program
        hears every reply) wins when the monitor has not caught up yet.
        """
        url = f"{self.monitor_url}/api/workflow-executions/"
        monitor: dict[str, Any] | None = None
        try:
            resp = httpx.get(
                url,
                params={"namespace": self.namespace, "limit": 1, "ordering": "-start_time"},
                timeout=2.0,
            )
            if resp.status_code == 200:
                data = resp.json()
                items = data.get("results", []) if isinstance(data, dict) else data
                if isinstance(items, list) and items and isinstance(items[0], dict):
                    item = items[0]
                    monitor = {
                        "execution_id": item.get("execution_id") or item.get("id"),
                        "status": item.get("status"),
                        "workflow_name": item.get("workflow_name"),
                        "source": "monitor",
                    }
                    source = "monitor"
                elif isinstance(items, list):
                    source = "monitor"
                else:
                    source = f"monitor answered with unexpected JSON at {url}"
            else:
                source = f"monitor answered HTTP {resp.status_code} at {url}"
        except (httpx.HTTPError, ValueError) as exc:
            source = f"monitor not reachable at {self.monitor_url} ({type(exc).__name__})"
        rec = executions.latest()
        broker = (
            None
            if rec is None
            else {
                "execution_id": rec.execution_id,
                "status": rec.status,
                "workflow_name": rec.workflow_name,
                "source": "broker",
            }
        )
        if broker is None:
            return monitor, source
        if monitor is not None and monitor["execution_id"] == broker["execution_id"]:
            if broker["status"] != "running":
                monitor["status"] = broker[
                    "status"
                ]  # the monitor may not have ingested the end yet
            return monitor, source
        return broker, source


# --------------------------------------------------------------------------- following one execution


@dataclass
class Progress:
    """What has been seen of one execution."""

    execution_id: str | None = None
    workflow_name: str = ""
    status: str = (
        "requested"  # requested, running, stopping, completed, terminated, failed, refused
    )
    error: str = ""
    run_id: int | None = None
    daq_state: str = ""
    counts: Counter[str] = field(default_factory=Counter)
    end_run_seen: bool = False
    stf_count: int | None = None
    started: float = field(default_factory=time.monotonic)


RATE_WINDOW_S = 10.0
"""The live rates are over this many recent seconds (so they fall to 0 when production stops)."""


class RateWindow:
    """Rates of a few counters over a recent window, not since the start.

    ``add`` a sample of the counters now and then; ``rates`` is the change
    between the oldest sample still in the window and the newest, per second.
    Once the counters stop moving, the rates fall to 0 within the window.
    """

    def __init__(
        self,
        window_s: float = RATE_WINDOW_S,
        *,
        min_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_s = window_s
        self.min_interval_s = min_interval_s
        self.clock = clock
        self._samples: deque[tuple[float, tuple[int, ...]]] = deque()

    def add(self, counts: tuple[int, ...]) -> None:
        now = self.clock()
        if len(self._samples) >= 2 and now - self._samples[-2][0] < self.min_interval_s:
            self._samples[-1] = (
                now,
                counts,
            )  # the newest is always now; those before it spaced out
        else:
            self._samples.append((now, counts))
        while self._samples and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()

    def rates(self) -> tuple[float, ...]:
        if len(self._samples) < 2:
            return tuple(0.0 for _ in (self._samples[0][1] if self._samples else ()))
        (t0, first), (t1, last) = self._samples[0], self._samples[-1]
        return tuple((b - a) / (t1 - t0) for a, b in zip(first, last))


_RUN_STATE_TYPES = frozenset({"run_imminent", "start_run", "pause_run", "resume_run", "end_run"})


class WorkflowSession:
    """Requests (or attaches to) one execution and follows it to its end."""

    def __init__(self, listener: Listener, namespace: str) -> None:
        self.listener = listener
        self.namespace = namespace
        self.request_id: str | None = None
        self.progress = Progress()
        self.done = threading.Event()
        self.started = threading.Event()
        self.events: deque[str] = deque(maxlen=200)
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._pending: dict[str, Counter[str]] = {}
        self._stop_sent = False
        self._rates = RateWindow()
        listener.session = self

    # ------------------------------------------------------------------ requests

    def request(self, workflow: Any, params: dict[str, Any]) -> RunWorkflow:
        msg = RunWorkflow(
            namespace=self.namespace,
            sender=SENDER,
            workflow_name=workflow.name,
            config=workflow.config,
            realtime=bool(workflow.realtime),
            time_scale=workflow.time_scale,
            duration=workflow.duration,
            params=dict(params),
        )
        self.request_id = msg.msg_id
        self.progress.workflow_name = workflow.name
        self.listener.client.send(control_queue(self.namespace), msg, timeout=15.0)
        return msg

    def attach(self, execution_id: str, workflow_name: str = "") -> None:
        with self._lock:
            self.progress.execution_id = execution_id
            self.progress.workflow_name = workflow_name
            self.progress.status = "running"
            self._adopt_pending(execution_id)
        self.started.set()

    def stop(self, reason: str = "stopped from the command line") -> bool:
        """Send stop_workflow for the execution (once); False while its id is not known yet."""
        with self._lock:
            execution_id = self.progress.execution_id
            if execution_id is None or self._stop_sent:
                return self._stop_sent
            self._stop_sent = True
            if self.progress.status == "running":
                self.progress.status = "stopping"
        self.listener.client.send(
            control_queue(self.namespace),
            StopWorkflow(
                namespace=self.namespace, sender=SENDER, execution_id=execution_id, reason=reason
            ),
            timeout=15.0,
        )
        self.events.append(f"stop_workflow sent for {execution_id}")
        return True

    @property
    def stop_sent(self) -> bool:
        return self._stop_sent

    # ------------------------------------------------------------------ messages

    def observe(self, msg: Message) -> None:
        with self._lock:
            if msg.msg_id in self._seen:
                return
            self._seen[msg.msg_id] = None
            if len(self._seen) > 100_000:
                self._seen.popitem(last=False)
            p = self.progress
            if isinstance(msg, WorkflowStarted):
                ours = (
                    (self.request_id is not None and msg.in_reply_to == self.request_id)
                    or (p.execution_id == msg.execution_id)
                    or (
                        self.request_id is not None
                        and msg.in_reply_to is None
                        and p.execution_id is None
                    )
                )
                if ours and p.status in ("requested", "running", "stopping"):
                    p.execution_id = msg.execution_id
                    p.workflow_name = msg.workflow_name
                    if p.status == "requested":
                        p.status = "running"
                    self._adopt_pending(msg.execution_id)
                    self.started.set()
                return
            if isinstance(msg, WorkflowFailed):
                ours = (
                    (self.request_id is not None and msg.in_reply_to == self.request_id)
                    or (p.execution_id is not None and msg.execution_id == p.execution_id)
                    or (
                        self.request_id is not None
                        and msg.in_reply_to is None
                        and p.execution_id is None
                        and msg.execution_id is None
                    )
                )
                if ours:
                    p.status = "refused" if msg.refused else "failed"
                    p.error = msg.error
                    if msg.execution_id and p.execution_id is None and not msg.refused:
                        p.execution_id = msg.execution_id
                    self.started.set()
                    self.done.set()
                return
            if isinstance(msg, WorkflowCompleted):
                if p.execution_id is not None and msg.execution_id == p.execution_id:
                    p.status = msg.status
                    p.stf_count = msg.stf_count
                    self.done.set()
                return
            execution_id = msg.execution_id
            if execution_id is None:
                return
            if p.execution_id is None:
                counts = self._pending.setdefault(execution_id, Counter())
                if len(self._pending) > 20:
                    self._pending.pop(next(iter(self._pending)))
                self._count(counts, msg)
                return
            if execution_id != p.execution_id:
                return
            self._count(p.counts, msg)
            if isinstance(msg, RunMessage):
                p.run_id = msg.run_id
                state = f"{msg.state.value}/{msg.substate.value}"
                if msg.msg_type in _RUN_STATE_TYPES and state != p.daq_state:
                    # (fast processing repeats end_run to its workers: one line per change)
                    p.daq_state = state
                    self.events.append(f"run {msg.run_id}: {msg.msg_type} ({p.daq_state})")
                if isinstance(msg, EndRun):
                    p.end_run_seen = True

    def _adopt_pending(self, execution_id: str) -> None:
        pending = self._pending.pop(execution_id, None)
        if pending:
            self.progress.counts.update(pending)

    @staticmethod
    def _count(counts: Counter[str], msg: Message) -> None:
        if isinstance(msg, SliceResult):
            counts["slice_done" if msg.status == "completed" else "slice_failed"] += 1
        counts[msg.msg_type] += 1

    # ------------------------------------------------------------------ display data

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            p = self.progress
            c = p.counts
            now = time.monotonic()
            produced, processed, slices = c["stf_gen"], c["processing_complete"], c["slice_done"]
            self._rates.add((produced, processed, slices))
            gen_rate, processed_rate, slice_rate = self._rates.rates()
            rates = {
                "stf_gen_per_s": gen_rate,
                "processed_per_s": processed_rate,
                "slices_per_s": slice_rate,
                "rate_window_s": self._rates.window_s,
            }
            return {
                "execution_id": p.execution_id,
                "workflow_name": p.workflow_name,
                "status": p.status,
                "error": p.error,
                "run_id": p.run_id,
                "daq_state": p.daq_state,
                "stf_produced": produced,
                "stf_ready": c["stf_ready"],
                "stf_processed": processed,
                "samples": c["tf_file_registered"],
                "slices": c["slice"],
                "slices_done": slices,
                "slices_failed": c["slice_failed"],
                "end_run": p.end_run_seen,
                "stf_count": p.stf_count,
                "elapsed_s": now - p.started,
                **rates,
            }

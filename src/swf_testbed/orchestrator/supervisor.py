"""The testbed's own supervisord: generated config, started and driven over XML-RPC.

One supervisord per user and namespace. Its config, unix socket, pid file
and logs live in a runtime directory ``<SWF_HOME>/<namespace>/`` (``SWF_HOME``
defaults to a per-user directory), so two users or two namespaces on one host
never collide. Unix socket paths are limited to about 107 bytes; when the
runtime directory is too deep the socket goes to ``/tmp/swf-<uid>/<hash>.sock``.

Programs are generated from ``[agents.*]`` (what the file names is what runs)
plus the services chosen as embedded: the broker, the monitor web and ingest
(only when the monitor is installed), and the orchestrator's heartbeat watch.
We talk to supervisord through its XML-RPC interface on the unix socket, never
by parsing ``supervisorctl`` output. A changed config is applied with
``reloadConfig``: removed groups are stopped and removed, changed ones
restarted, new ones added.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import http.client
import importlib.util
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from swf_testbed.orchestrator.config import LoadedConfig, Services, unrepresentable
from swf_testbed.retry import Backoff
from swf_testbed.settings import secret_file_variables

SOCKET_PATH_MAX = 100
"""Longest unix socket path we use (the kernel limit is 107 bytes plus NUL)."""

PRIORITY = {"broker": 10, "monitor-web": 20, "monitor-ingest": 30, "watch": 40}
AGENT_PRIORITY = 100

RUNNING_STATES = frozenset({"RUNNING", "STARTING"})
FAILED_STATES = frozenset({"FATAL", "BACKOFF", "UNKNOWN"})


class SupervisorError(RuntimeError):
    """supervisord could not be started or reached, or refused a request."""


# --------------------------------------------------------------------------- runtime directory


@dataclass(frozen=True)
class RuntimePaths:
    """Where one namespace's supervisord keeps its files."""

    root: Path
    socket: Path

    @property
    def conf(self) -> Path:
        return self.root / "supervisord.conf"

    @property
    def pidfile(self) -> Path:
        return self.root / "supervisord.pid"

    @property
    def logfile(self) -> Path:
        return self.root / "supervisord.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def watch_file(self) -> Path:
        return self.root / "watch.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def log_of(self, process: str) -> Path:
        return self.logs / f"{process}.log"


def runtime_paths(home: Path, namespace: str) -> RuntimePaths:
    root = Path(home).expanduser().absolute() / namespace
    sock = root / "supervisord.sock"
    if len(os.fsencode(sock)) > SOCKET_PATH_MAX:
        digest = hashlib.sha256(os.fsencode(root)).hexdigest()[:16]
        sock = Path(tempfile.gettempdir()) / f"swf-{os.getuid()}" / f"{digest}.sock"
    return RuntimePaths(root, sock)


def prepare(paths: RuntimePaths) -> None:
    """Create the runtime directories, private to this user."""
    for directory in (paths.root, paths.logs, paths.socket.parent):
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    if paths.socket.parent != paths.root:
        st = paths.socket.parent.stat()
        if st.st_uid != os.getuid():
            raise SupervisorError(
                f"{paths.socket.parent} belongs to another user; set SWF_HOME to a shorter path"
            )
        os.chmod(paths.socket.parent, 0o700)


@contextlib.contextmanager
def locked(paths: RuntimePaths) -> Iterator[None]:
    """Serialise commands that change one namespace's supervisord."""
    prepare(paths)
    with open(paths.lock, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# --------------------------------------------------------------------------- programs


@dataclass(frozen=True)
class Program:
    """One supervisord program (``numprocs`` processes)."""

    name: str
    kind: Literal["agent", "service"]
    argv: list[str] | None = None  # module agents and services: exact argv
    script: str | None = None  # script agents: the command as written (+ quoted args)
    numprocs: int = 1
    env: dict[str, str] = field(default_factory=dict)
    directory: str = ""
    priority: int = AGENT_PRIORITY
    startsecs: int = 1
    stopwaitsecs: int = 15
    heartbeat_interval: float | None = None
    health: Literal["heartbeat", "tcp", "http", "running"] = "running"
    health_target: str = ""
    listen_host: str = (
        ""  # services: where they listen (checked free before start, theirs when healthy)
    )
    listen_port: int = 0

    @property
    def command(self) -> str:
        if self.argv is not None:
            return shlex.join(self.argv)
        return self.script or ""

    @property
    def processes(self) -> list[str]:
        if self.numprocs == 1:
            return [self.name]
        return [f"{self.name}_{i:02d}" for i in range(self.numprocs)]

    def namespec(self, process: str) -> str:
        return f"{self.name}:{process}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("env")  # may hold credentials; the conf has them, state.json need not
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Program:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def monitor_available() -> tuple[bool, str]:
    """Whether the monitor (web + ingest) can be run here, and if not why.

    Asks for the monitor's package and its framework, not for the command
    line: the orchestrator never imports the CLI (which imports it).
    """
    for module, what in (("swf_testbed.monitor", "package"), ("django", "framework (Django)")):
        try:
            if importlib.util.find_spec(module) is None:
                return False, f"the monitor's {what} is not installed ({module})"
        except (ImportError, ValueError) as exc:
            return False, f"the monitor's {what} does not import: {exc}"
    return True, ""


def build_programs(
    loaded: LoadedConfig,
    services: Services,
    home: Path,
    paths: RuntimePaths,
    *,
    python: str | None = None,
) -> tuple[list[Program], list[str]]:
    """The programs a testbed.toml asks for, and notices for the user (skipped services)."""
    # absolute, but symlinks kept (a virtualenv's python is a symlink): the same interpreter
    # whatever the directory the command was started from, so the programs' identity does not
    # depend on it
    python = os.path.abspath(python or sys.executable)
    cfg = loaded.config
    ns = cfg.testbed.namespace
    directory = str(loaded.path.parent)
    notices: list[str] = []
    base_env = _base_env(ns, services, home)
    cli = [python, "-m", "swf_testbed.cli"]
    programs: list[Program] = []

    if services.broker_mode == "embedded":
        host, port = services.broker.host, services.broker.port
        programs.append(
            Program(
                "broker",
                "service",
                argv=[*cli, "broker", "--host", host, "--port", str(port)]
                + ["--data-dir", str(paths.root / "broker")],  # its journal: survives a kill -9
                env=base_env,
                directory=directory,
                priority=PRIORITY["broker"],
                stopwaitsecs=10,
                health="tcp",
                health_target=f"{host}:{port}",
                listen_host=host,
                listen_port=port,
            )
        )
    if services.monitor_mode == "embedded":
        ok, why = monitor_available()
        if ok:
            mon_env = dict(base_env)
            programs.append(
                Program(
                    "monitor-web",
                    "service",
                    argv=[
                        *cli,
                        "monitor",
                        "serve",
                        "--host",
                        services.monitor_host,
                        "--port",
                        str(services.monitor_port),
                    ],
                    env=mon_env,
                    directory=directory,
                    priority=PRIORITY["monitor-web"],
                    startsecs=2,
                    stopwaitsecs=15,
                    health="http",
                    health_target=services.monitor_url,
                    listen_host=services.monitor_host,
                    listen_port=services.monitor_port,
                )
            )
            programs.append(
                Program(
                    "monitor-ingest",
                    "service",
                    argv=[*cli, "monitor", "ingest", "--client-id", f"swf-monitor-ingest-{ns}"],
                    env=mon_env,
                    directory=directory,
                    priority=PRIORITY["monitor-ingest"],
                    startsecs=2,
                    stopwaitsecs=20,
                )
            )
        else:
            notices.append(f"monitor not started: {why} (the rest runs without it)")
    programs.append(
        Program(
            "watch",
            "service",
            argv=[
                python,
                "-m",
                "swf_testbed.orchestrator.watch",
                "--namespace",
                ns,
                "--output",
                str(paths.watch_file),
            ],
            env=base_env,
            directory=directory,
            priority=PRIORITY["watch"],
            stopwaitsecs=5,
        )
    )

    for name, agent in cfg.local_agents().items():
        # Each process has its own stable logical name: the program's, or with several
        # instances the process's (worker_00, worker_01), as supervisord names them.
        agent_name = name if agent.instances == 1 else f"{name}_{INSTANCE_SUFFIX}"
        env = {
            **base_env,
            "SWF_AGENT_NAME": agent_name,
            "SWF_HEARTBEAT_INTERVAL": f"{agent.heartbeat_interval:g}",
            "SWF_AGENT_INSTANCE": "%(process_num)d",
            "SWF_AGENT_LOG_LEVEL": agent.log_level,
            "SWF_AGENT_LOG_BUFFER": str(agent.log_buffer),
            **agent.env,
        }
        stopwait = int(agent.drain_timeout + 10)
        if agent.module:
            argv = [
                *cli,
                "agent",
                "run",
                agent.module,
                "--namespace",
                ns,  # --name: SWF_AGENT_NAME
                "--heartbeat-interval",
                f"{agent.heartbeat_interval:g}",
                "--drain-timeout",
                f"{agent.drain_timeout:g}",
            ]
            for key, value in agent.options.items():
                argv += ["--set", f"{key}={json.dumps(value)}"]
            argv += agent.args
            programs.append(
                Program(
                    name,
                    "agent",
                    argv=argv,
                    numprocs=agent.instances,
                    env=env,
                    directory=directory,
                    stopwaitsecs=stopwait,
                    heartbeat_interval=agent.heartbeat_interval,
                    health="heartbeat",
                )
            )
        else:
            script = " ".join([agent.script or "", *(shlex.quote(a) for a in agent.args)]).strip()
            programs.append(
                Program(
                    name,
                    "agent",
                    script=script,
                    numprocs=agent.instances,
                    env=env,
                    directory=directory,
                    stopwaitsecs=stopwait,
                    heartbeat_interval=agent.heartbeat_interval,
                    health="heartbeat",
                )
            )
    return programs, notices


def _base_env(namespace: str, services: Services, home: Path) -> dict[str, str]:
    env = {
        "SWF_HOME": str(Path(home).expanduser().absolute()),
        "SWF_NAMESPACE": namespace,
        "PYTHONUNBUFFERED": "1",
        "SWF_MONITOR_URL": services.monitor_url,
    }
    from_files = (
        secret_file_variables()
    )  # a secret given as a file is passed on as that file, never as its value
    env.update(from_files)
    broker = services.broker
    for name in sorted(broker.model_fields_set | {"host", "port"}):
        value = getattr(broker, name)
        if value is None or f"ACTIVEMQ_{name.upper()}_FILE" in from_files:
            continue
        text = (
            ("true" if value else "false")
            if isinstance(value, bool)
            else str(getattr(value, "value", value))
        )
        env[f"ACTIVEMQ_{name.upper()}"] = text
    if services.database_url and "DATABASE_URL_FILE" not in from_files:
        env["DATABASE_URL"] = services.database_url
    return env


# --------------------------------------------------------------------------- config file


INSTANCE_SUFFIX = "%(process_num)02d"
"""supervisord expands it to the process number of a multi-instance program."""


def _pct(text: str) -> str:
    """Escape supervisord's %-expansion."""
    return text.replace("%", "%%")


def _env_line(env: dict[str, str]) -> str:
    parts = []
    for key, value in env.items():
        problem = unrepresentable(value)
        if problem:
            raise SupervisorError(f"environment variable {key}: {problem}")
        keep_expansion = value == "%(process_num)d" or (
            value.endswith(INSTANCE_SUFFIX) and "%" not in value[: -len(INSTANCE_SUFFIX)]
        )
        quoted = f'"{value}"' if '"' not in value else f"'{value}'"
        parts.append(f"{key}={quoted if keep_expansion else _pct(quoted)}")
    return ",".join(parts)


def render_conf(paths: RuntimePaths, programs: list[Program], namespace: str) -> str:
    """The supervisord.conf for these programs."""
    lines = [
        f"; generated by swf-testbed for namespace {namespace}; edit testbed.toml, not this file",
        "[unix_http_server]",
        f"file={_pct(str(paths.socket))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_pct(str(paths.logfile))}",
        "logfile_maxbytes=5MB",
        "logfile_backups=2",
        "loglevel=info",
        f"pidfile={_pct(str(paths.pidfile))}",
        f"childlogdir={_pct(str(paths.logs))}",
        f"directory={_pct(str(paths.root))}",
        "nodaemon=false",
        "minfds=256",
        "minprocs=64",
        "umask=077",
        f"identifier=swf-testbed-{namespace}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory=supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_pct(str(paths.socket))}",
        "",
    ]
    for prog in programs:
        process_name = (
            "%(program_name)s" if prog.numprocs == 1 else "%(program_name)s_%(process_num)02d"
        )
        lines += [
            f"[program:{prog.name}]",
            f"command={_pct(prog.command)}",
            f"process_name={process_name}",
            f"numprocs={prog.numprocs}",
            f"directory={_pct(prog.directory or str(paths.root))}",
            f"priority={prog.priority}",
            "autostart=true",
            "autorestart=true",
            f"startsecs={prog.startsecs}",
            "startretries=2",
            "stopsignal=TERM",
            f"stopwaitsecs={prog.stopwaitsecs}",
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_pct(str(paths.logs))}/{process_name}.log",
            "stdout_logfile_maxbytes=10MB",
            "stdout_logfile_backups=3",
            f"environment={_env_line(prog.env)}",
            "",
        ]
    return "\n".join(lines)


class _CaseKeepingParser(configparser.RawConfigParser):
    """Option names as written (the default lower-cases them)."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def _program_sections(text: str) -> dict[str, dict[str, str]]:
    parser = _CaseKeepingParser(strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        return {}
    return {
        section.removeprefix("program:"): dict(parser.items(section))
        for section in parser.sections()
        if section.startswith("program:")
    }


def _env_values(line: str) -> dict[str, str]:
    """``environment=`` of a program section (as :func:`_env_line` writes it) → variables."""
    lexer = shlex.shlex(line, posix=True)
    lexer.whitespace, lexer.whitespace_split = ",", True
    out = {}
    try:
        for item in lexer:
            key, _, value = item.partition("=")
            out[key] = value
    except ValueError:  # unbalanced quotes: not ours
        pass
    return out


def change_reasons(old_text: str, new_text: str) -> dict[str, str]:
    """For each program in both configs whose settings differ: what changed, in a few words."""
    old, new = _program_sections(old_text), _program_sections(new_text)
    reasons: dict[str, str] = {}
    for name in sorted(old.keys() & new.keys()):
        before, after = old[name], new[name]
        parts = []
        for key in sorted(before.keys() | after.keys()):
            if before.get(key) == after.get(key):
                continue
            if key == "environment":
                a, b = _env_values(before.get(key, "")), _env_values(after.get(key, ""))
                names = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
                parts.append(f"environment ({', '.join(names)})")
            elif key == "command":
                a_argv, b_argv = before.get(key, "").split(), after.get(key, "").split()
                diff = [f"{x} -> {y}" for x, y in zip(a_argv, b_argv, strict=False) if x != y][:2]
                if len(a_argv) != len(b_argv):
                    diff.append("arguments added or removed")
                parts.append(f"command ({'; '.join(diff)})" if diff else "command")
            elif key == "directory":
                parts.append(f"directory ({before.get(key)} -> {after.get(key)})")
            else:
                parts.append(f"{key} ({before.get(key)} -> {after.get(key)})")
        if parts:
            reasons[name] = ", ".join(parts) + " changed"
    return reasons


# --------------------------------------------------------------------------- XML-RPC client


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix stream socket, with a timeout on connect and on every read."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class UnixSocketTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket, with a timeout.

    ``make_connection`` is the hook :class:`xmlrpc.client.Transport` offers for
    another kind of connection; supervisor's own ``SupervisorTransport`` has
    no timeout, and a hung supervisord must not hang the command line.
    """

    def __init__(self, path: str | Path, timeout: float) -> None:
        super().__init__()
        self.path = str(path)
        self.timeout = timeout

    def make_connection(self, host: object) -> http.client.HTTPConnection:
        return _UnixConnection(self.path, self.timeout)


class Supervisor:
    """A namespace's supervisord, reached over its XML-RPC unix socket."""

    def __init__(self, paths: RuntimePaths, *, timeout: float = 30.0) -> None:
        self.paths = paths
        self.timeout = timeout

    def _proxy(self, timeout: float | None = None) -> Any:
        transport = UnixSocketTransport(self.paths.socket, timeout or self.timeout)
        return xmlrpc.client.ServerProxy("http://localhost", transport=transport)

    def call(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``supervisor.<method>(*args)``; SupervisorError when unreachable."""
        proxy = self._proxy(timeout)
        try:
            return getattr(proxy.supervisor, method)(*args)
        except (OSError, http.client.HTTPException) as exc:
            raise SupervisorError(
                f"supervisord at {self.paths.socket} is not answering: {exc}"
            ) from None

    # ------------------------------------------------------------------ daemon

    def running(self) -> bool:
        if not self.paths.socket.exists():
            return False
        try:
            return bool(self.call("getState", timeout=5.0).get("statename") == "RUNNING")
        except (SupervisorError, xmlrpc.client.Fault):
            return False

    def pid(self) -> int | None:
        try:
            return int(self.paths.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def start_daemon(self, timeout: float = 20.0) -> None:
        """Start supervisord with the written config and wait until it answers."""
        cmd = [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.paths.conf)]
        # output to a file, not a pipe: the daemon must not hold our pipe open
        out_path = self.paths.root / "supervisord.out"
        with open(out_path, "wb") as out_file:
            result = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                timeout=timeout,
                check=False,
            )
        if result.returncode != 0:
            out = out_path.read_text(errors="replace").strip()
            raise SupervisorError(
                f"supervisord did not start (exit {result.returncode}): {out}\n"
                f"{self.log_tail()}".strip()
            )
        deadline = time.monotonic() + timeout
        poll = Backoff(0.05, 0.5)
        while time.monotonic() < deadline:
            if self.running():
                return
            time.sleep(poll.next_delay())
        raise SupervisorError(
            f"supervisord did not answer on {self.paths.socket} within {timeout:g} s\n"
            f"{self.log_tail()}".strip()
        )

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.paths.logfile.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def shutdown(self, timeout: float = 60.0) -> bool:
        """Stop every program and supervisord itself; True once it is gone."""
        pid = self.pid()
        try:
            self.call("shutdown", timeout=10.0)
        except (SupervisorError, xmlrpc.client.Fault):
            pass
        deadline = time.monotonic() + timeout
        poll = Backoff(0.02, 0.2)
        while time.monotonic() < deadline:
            if pid is None or not pid_alive(pid):
                return not self.running()
            time.sleep(poll.next_delay())
        return False

    def kill(self) -> None:
        """Last resort (tests): SIGKILL supervisord by its pid file, children by process group."""
        pid = self.pid()
        try:
            infos = self.call("getAllProcessInfo", timeout=3.0)
        except (SupervisorError, xmlrpc.client.Fault):
            infos = []
        for info in infos:
            if info.get("pid"):
                with contextlib.suppress(OSError):
                    os.killpg(info["pid"], signal.SIGKILL)
        if pid and pid_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)

    # ------------------------------------------------------------------ programs

    def apply(self) -> dict[str, list[str]]:
        """Re-read the config file; stop+remove removed groups, restart changed, add new ones."""
        added, changed, removed = self.call("reloadConfig")[0]
        for name in removed:
            self._stop_group(name)
            with contextlib.suppress(xmlrpc.client.Fault):
                self.call("removeProcessGroup", name)
        for name in changed:
            self._stop_group(name)
            with contextlib.suppress(xmlrpc.client.Fault):
                self.call("removeProcessGroup", name)
            self.call("addProcessGroup", name)
        for name in added:
            self.call("addProcessGroup", name)
        return {"added": list(added), "changed": list(changed), "removed": list(removed)}

    def _stop_group(self, name: str) -> None:
        try:
            self.call("stopProcessGroup", name, True, timeout=max(self.timeout, 120.0))
        except xmlrpc.client.Fault:
            pass

    def infos(self) -> dict[str, dict[str, Any]]:
        """Process info by namespec (``group:process``)."""
        return {f"{i['group']}:{i['name']}": i for i in self.call("getAllProcessInfo")}

    def start_process(self, namespec: str) -> None:
        try:
            self.call("startProcess", namespec, False)
        except xmlrpc.client.Fault as exc:
            if "ALREADY_STARTED" not in exc.faultString:
                raise SupervisorError(f"cannot start {namespec}: {exc.faultString}") from None

    def stop_process(self, namespec: str) -> None:
        try:
            self.call("stopProcess", namespec, True, timeout=max(self.timeout, 120.0))
        except xmlrpc.client.Fault as exc:
            if "NOT_RUNNING" not in exc.faultString:
                raise SupervisorError(f"cannot stop {namespec}: {exc.faultString}") from None

    def stop_group(self, name: str) -> None:
        try:
            self.call("stopProcessGroup", name, True, timeout=max(self.timeout, 120.0))
        except xmlrpc.client.Fault as exc:
            raise SupervisorError(f"cannot stop {name}: {exc.faultString}") from None

    def tail(self, namespec: str, nbytes: int = 4000) -> str:
        try:
            text, _offset, _overflow = self.call("tailProcessStdoutLog", namespec, 0, nbytes)
            return str(text)
        except (xmlrpc.client.Fault, SupervisorError):
            return ""


def pid_alive(pid: int) -> bool:
    """A process with this pid exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --------------------------------------------------------------------------- state file


def write_state(paths: RuntimePaths, data: dict[str, Any]) -> None:
    tmp = paths.state.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, paths.state)


def read_state(paths: RuntimePaths) -> dict[str, Any] | None:
    try:
        data = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def log_tail(path: Path, lines: int = 20) -> str:
    """The last lines of a log file (bounded read)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except OSError:
        return ""
    return "\n".join(data.decode(errors="replace").splitlines()[-lines:])

"""``swf-testbed init | run | up | status | stop | logs | restart``: the orchestrator's commands.

Exit codes: 0 success; 1 something failed (named, with the reason); 2 the
testbed.toml (or a command line option) is wrong and nothing was started;
130 interrupted (Ctrl+C).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from swf_testbed.cli.common import console, err_console
from swf_testbed.cli.output import EXIT_CONFIG, EXIT_FAILED, EXIT_INTERRUPTED, fail, say, warn

if TYPE_CHECKING:  # the orchestrator is imported when a command runs, not with the CLI
    from swf_testbed.orchestrator.checks import ProcessHealth
    from swf_testbed.orchestrator.config import LoadedConfig
    from swf_testbed.orchestrator.listener import Listener
    from swf_testbed.orchestrator.run import Testbed
    from swf_testbed.orchestrator.session import WorkflowSession
    from swf_testbed.settings import Settings

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_INTERRUPTED", "register"]

ConfigArg = Annotated[Path, typer.Argument(help="The testbed file.", show_default=True)]
ConfigOpt = Annotated[
    Path | None, typer.Option("--config", "-c", help="The testbed file (default ./testbed.toml).")
]
NamespaceOpt = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="Address a namespace's testbed without its testbed.toml."
    ),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout", help="Seconds to wait for health (default: [testbed] start_timeout)."
    ),
]


def _settings() -> Settings:
    from swf_testbed.settings import get_settings

    if logging.getLogger().level > logging.DEBUG:  # connection chatter only with --verbose
        logging.getLogger("swf_testbed.mq").setLevel(logging.WARNING)
        logging.getLogger("stomp.py").setLevel(logging.ERROR)
        logging.getLogger("httpx").setLevel(logging.WARNING)

    return get_settings()


def _load(path: Path) -> LoadedConfig:
    """Validated config, or exit 2 with the problems."""
    from swf_testbed.orchestrator.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            err_console.print(Text("error: ", style="bold red") + Text(line), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG) from None


def _testbed(config: Path | None, namespace: str | None) -> Testbed:
    """The testbed addressed by -c / -n (or ./testbed.toml)."""
    from swf_testbed.orchestrator.run import Testbed

    settings = _settings()
    if config is None and namespace:
        tb = Testbed(settings, namespace)
        if not tb.paths.root.exists():
            raise fail(f"no testbed for namespace {namespace!r} under {settings.home}", EXIT_CONFIG)
        return tb
    path = config or Path("testbed.toml")
    if config is None and not path.exists():
        raise fail(
            "no testbed.toml here: name one with --config, or a namespace with --namespace "
            "(or create one with `swf-testbed init`)",
            EXIT_CONFIG,
        )
    loaded = _load(path)
    if namespace and namespace != loaded.namespace:
        raise fail(
            f"--namespace {namespace} does not match {loaded.source} "
            f"(namespace {loaded.namespace})",
            EXIT_CONFIG,
        )
    return Testbed.from_config(loaded, settings)


class _Signals:
    """First Ctrl+C (or SIGTERM) asks for a clean stop; the second exits at once."""

    def __init__(self) -> None:
        self.count = 0
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.count += 1
        if self.count >= 2:
            os.write(2, b"\nsecond interrupt: exiting now\n")
            os._exit(EXIT_INTERRUPTED)

    @property
    def interrupted(self) -> bool:
        return self.count > 0


# --------------------------------------------------------------------------- bring up + wait


def _check_ports(tb: Testbed) -> None:
    """Stop (exit 1) before anything starts when a port of an embedded service is taken."""
    from swf_testbed.orchestrator.run import PortsInUse

    conflicts = tb.port_conflicts()
    if conflicts:
        raise fail(str(PortsInUse(conflicts, tb.loaded.source if tb.loaded else "testbed.toml")))


def _bring_up(
    tb: Testbed,
    listener: Listener,
    timeout: float,
    signals: _Signals,
    *,
    only: list[str] | None = None,
) -> list[ProcessHealth]:
    """ensure_up + wait_healthy with a display; exits on failure."""
    from swf_testbed.orchestrator.run import OrchestratorError, Unhealthy
    from swf_testbed.orchestrator.supervisor import SupervisorError

    for notice in tb.notices:
        warn(f"notice: {notice}")
    try:
        changes = tb.ensure_up(lambda m: say(m, "dim"), only=only)
    except (SupervisorError, OrchestratorError) as exc:
        raise fail(str(exc)) from None
    for key, verb in (("removed", "removed"), ("added", "added")):
        if changes.get(key) and not (
            key == "added" and changes["added"] == [p.name for p in tb.programs]
        ):
            say(f"{verb}: {', '.join(changes[key])}", "dim")
    reasons = changes.get("reasons", {})
    for name in changes.get("changed", []):  # one line per restarted program: which and why
        say(f"restarted (changed): {name}: {reasons.get(name, 'its settings changed')}", "yellow")
    listener.seed_from_watch(tb.paths)
    programs = (
        None if only is None else [p for p in tb.programs if p.kind == "service" or p.name in only]
    )
    names = [p.name for p in (programs or tb.programs)]
    say(f"waiting for {len(names)} programs to be healthy: {', '.join(names)}", "dim")
    t0 = time.monotonic()
    try:
        if console.is_terminal:
            with console.status("") as status:

                def show(health: list[ProcessHealth]) -> None:
                    waiting = [
                        f"{h.process} ({h.detail or h.state})" for h in health if not h.healthy
                    ]
                    status.update(f"waiting for {'; '.join(waiting)}" if waiting else "all healthy")

                health = tb.wait_healthy(
                    listener.beats,
                    timeout,
                    programs=programs,
                    on_progress=show,
                    cancelled=lambda: signals.interrupted,
                    broker_connected=lambda: listener.client.connected,
                )
        else:
            health = tb.wait_healthy(
                listener.beats,
                timeout,
                programs=programs,
                cancelled=lambda: signals.interrupted,
                broker_connected=lambda: listener.client.connected,
            )
    except (Unhealthy, OrchestratorError) as exc:
        raise fail(str(exc)) from None
    except SupervisorError as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        warn("interrupted while waiting for the programs; they keep starting under supervisord")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    say(f"all {len(health)} processes healthy ({time.monotonic() - t0:.1f} s)", "green")
    return health


# --------------------------------------------------------------------------- commands


def init(
    path: Annotated[Path, typer.Argument(help="Where to write it.")] = Path("testbed.toml"),
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Namespace (default: your user name).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter testbed.toml that runs as it is."""
    from swf_testbed.orchestrator.config import ConfigError, parse
    from swf_testbed.orchestrator.starter import choose_ports, render

    if path.exists() and not force:
        raise fail(f"{path} exists; use --force to overwrite it")
    ports, notes = choose_ports()
    text = render(namespace, broker_port=ports["broker"], monitor_port=ports["monitor"])
    try:
        parse(text, str(path), check_modules=False)
    except ConfigError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    for note in notes:
        warn(note)
    say(f"wrote {path}; start it with: swf-testbed run {path}")


def up(
    config: ConfigArg = Path("testbed.toml"),
    timeout: TimeoutOpt = None,
) -> None:
    """Start supervisord, the services and every enabled agent; wait until all are healthy."""
    from swf_testbed.cli.run_view import health_table
    from swf_testbed.orchestrator.listener import Listener
    from swf_testbed.orchestrator.run import Testbed

    loaded = _load(config)
    tb = Testbed.from_config(loaded, _settings())
    _check_ports(tb)
    listener = Listener(tb.broker, tb.namespace).start()
    try:
        with _Signals() as signals:
            health = _bring_up(
                tb, listener, timeout or loaded.config.testbed.start_timeout, signals
            )
        console.print(health_table(health))
        say(
            f"namespace {tb.namespace} is up; monitor: {tb.monitor_url}; run a workflow with "
            f"`swf-testbed run {config}`"
        )
    finally:
        listener.close()


def run(
    config: ConfigArg = Path("testbed.toml"),
    timeout: TimeoutOpt = None,
    attach: Annotated[
        bool, typer.Option("--attach", help="Follow the execution already running instead.")
    ] = False,
    stop_agents: Annotated[
        bool, typer.Option("--stop-agents", help="Stop the agents when the workflow ends.")
    ] = False,
    reply_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the workflow runner to answer.")
    ] = 30.0,
    stop_timeout: Annotated[
        float, typer.Option(help="Seconds to wait for a stopped workflow to close.")
    ] = 60.0,
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="After the run ends, seconds to wait for the agents to process what it produced."
        ),
    ] = 120.0,
) -> None:
    """Start what testbed.toml names, wait until healthy, run the workflow and follow it."""
    from swf_testbed.mq import BrokerUnavailable
    from swf_testbed.orchestrator.listener import Listener
    from swf_testbed.orchestrator.run import Testbed
    from swf_testbed.orchestrator.session import WorkflowSession

    loaded = _load(config)
    cfg = loaded.config
    tb = Testbed.from_config(loaded, _settings())
    _check_ports(tb)
    listener = Listener(tb.broker, tb.namespace, follow_data=True).start()
    code = 0
    try:
        with _Signals() as signals:
            _bring_up(tb, listener, timeout or cfg.testbed.start_timeout, signals)
            if not listener.wait_connected(15.0):
                raise fail(f"cannot reach the broker at {tb.broker.host}:{tb.broker.port}")
            session = WorkflowSession(listener, tb.namespace)
            if attach:
                _attach(tb, listener, session)
            else:
                try:
                    session.request(cfg.workflow, cfg.parameters)
                except BrokerUnavailable as exc:
                    raise fail(f"cannot send run_workflow: {exc}") from None
                say(
                    f"run_workflow sent: {cfg.workflow.name} ({cfg.workflow.config}) "
                    f"in namespace {tb.namespace}"
                )
            try:
                code = _follow(
                    tb,
                    session,
                    signals,
                    reply_timeout=reply_timeout,
                    stop_timeout=stop_timeout,
                    drain_timeout=drain_timeout,
                )
            finally:
                if stop_agents:
                    stopped = tb.stop_agents()
                    say(f"agents stopped: {', '.join(stopped) or 'none were running'}")
    finally:
        listener.close()
    raise typer.Exit(code)


def _attach(tb: Testbed, listener: Listener, session: WorkflowSession) -> None:
    """Follow the execution running in the namespace (as the broker or the monitor knows it)."""
    listener.seed_from_watch(tb.paths)
    rec = listener.executions.running()
    found = (rec.execution_id, rec.workflow_name) if rec else None
    if found is None:
        info, _src = tb.latest_execution(listener.executions)
        if info is not None and info.status == "running":
            found = (info.execution_id, info.workflow_name)
    if found is None:
        raise fail(f"no workflow is running in namespace {tb.namespace}; nothing to attach to")
    session.attach(*found)
    say(f"attached to execution {found[0]}")


def _follow(
    tb: Testbed,
    session: WorkflowSession,
    signals: _Signals,
    *,
    reply_timeout: float,
    stop_timeout: float,
    drain_timeout: float = 120.0,
) -> int:
    """Follow the session to its end with a live display; returns the exit code.

    The state is :class:`~swf_testbed.orchestrator.follow.Follow`, the display
    :class:`~swf_testbed.cli.run_view.FollowRenderer`.
    """
    from swf_testbed.cli.run_view import FollowRenderer, RunContext, report_end
    from swf_testbed.orchestrator.follow import End, Follow

    follow = Follow(
        session,
        tb.monitor,
        reply_timeout=reply_timeout,
        stop_timeout=stop_timeout,
        drain_timeout=drain_timeout,
    )
    renderer = FollowRenderer(tb.monitor_url)
    renderer.start(session.snapshot())
    try:
        while True:
            tick = follow.tick(signals.interrupted)
            renderer.show(tick)
            if tick.end is not None:
                break
    finally:
        renderer.stop(session.snapshot())
    if tick.end is End.STOP_TIMEOUT:
        warn(
            "no workflow_completed after the stop request; exiting (the runner may still close it)"
        )
        return EXIT_INTERRUPTED
    if tick.end is End.NO_REPLY:
        return fail(
            f"no workflow runner answered on the control queue of namespace {tb.namespace} "
            f"within {reply_timeout:g} s (is a runner agent configured and READY?)"
        ).exit_code
    silences = follow.silence.summary()
    if silences:
        warn("agents silent during the run:\n  " + "\n  ".join(silences))
    running = session.listener.executions.running()
    context = RunContext(
        namespace=tb.namespace,
        monitor_url=tb.monitor_url,
        drain_timeout=drain_timeout,
        interrupted=signals.interrupted,
        running_elsewhere=running.execution_id if running else None,
    )
    return report_end(session.snapshot(), follow, context)


def _status_health(tb: Testbed, listener: Listener, sup_running: bool) -> list[ProcessHealth]:
    """Own programs (from supervisord), remote agents and the other agents of the namespace."""
    from swf_testbed.orchestrator.checks import ProcessHealth, check_remote

    if sup_running:
        health = tb.check(listener.beats)
    else:
        health = [
            ProcessHealth(p.name, proc, p.kind, "NOT RUNNING")
            for p in tb.programs
            for proc in p.processes
        ]
        if tb.remote_agents:
            agents = tb.monitor_agents()
            health += check_remote(tb.remote_agents, agents, problem=tb.monitor.problem)
    return health + tb.others(health)


def _status_data(
    tb: Testbed, listener: Listener, health: list[ProcessHealth], sup_running: bool
) -> dict[str, Any]:
    from swf_testbed.orchestrator.health import read_watch_file

    snap = read_watch_file(tb.paths.watch_file)
    execution, exec_source = tb.latest_execution(listener.executions)
    running = listener.executions.running()
    expected = [h for h in health if h.expected]
    return {
        "namespace": tb.namespace,
        "config": str(tb.loaded.path) if tb.loaded else tb.recorded_config,
        "runtime_dir": str(tb.paths.root),
        "supervisord": {
            "running": sup_running,
            "pid": tb.supervisor.pid() if sup_running else None,
            "socket": str(tb.paths.socket),
        },
        "broker": f"{tb.broker.host}:{tb.broker.port}",
        "monitor_url": tb.monitor_url,
        "monitor": exec_source,
        "healthy": sup_running and bool(expected) and all(h.healthy for h in expected),
        "pending_changes": tb.pending_changes() if sup_running else False,
        "watch": {
            "fresh": bool(snap and snap.fresh),
            "updated_at": snap.updated_at if snap else None,
            "broker_connected": snap.broker_connected if snap else None,
        },
        "programs": [h.to_json() for h in health],
        "remote_agents": [r.to_json() for r in tb.remote_agents],
        "execution": asdict(execution) if execution else None,
        "execution_id": execution.execution_id if execution else None,
        "execution_status": execution.status if execution else None,
        "running_execution": running.execution_id if running else None,
        "running_workflow": running.workflow_name if running else None,
    }


def _status_print(tb: Testbed, health: list[ProcessHealth], data: dict[str, Any]) -> None:
    from swf_testbed.cli.run_view import execution_url, health_table

    sup_running = data["supervisord"]["running"]
    state = "running" if sup_running else "not running"
    say(f"namespace {tb.namespace}: supervisord {state} ({tb.paths.root})", "bold")
    if health:
        console.print(health_table(health))
    else:
        say("no programs")
    if any(not h.expected for h in health):
        say("(agents of the namespace that this testbed.toml does not name are not waited for)")
    if sup_running and not data["watch"]["fresh"]:
        warn("the watch program has not reported lately: heartbeat ages may be stale")
    elif sup_running and data["watch"]["broker_connected"] is False:
        warn(
            f"the watch program cannot reach the broker at {data['broker']}: "
            "no heartbeats are heard"
        )
    if data["pending_changes"]:
        warn(
            "testbed.toml (or the environment) changed since it was applied; "
            "`swf-testbed up` applies it"
        )
    say(f"broker {data['broker']}; monitor {tb.monitor_url} ({data['monitor']})")
    if data["running_execution"]:
        eid = data["running_execution"]
        say(
            f"running execution: {eid} ({data['running_workflow']}) "
            f"{execution_url(tb.monitor_url, eid)}"
        )
    elif data["execution"]:
        say(f"latest execution: {data['execution_id']} ({data['execution_status']})")
    else:
        say("no execution seen")


def status(
    config: ConfigOpt = None,
    namespace: NamespaceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object on stdout.")] = False,
    wait: Annotated[
        float,
        typer.Option(
            help="Listen this many seconds for heartbeats when the watch program has nothing fresh."
        ),
    ] = 0.0,
) -> None:
    """Programs, their health, the agents of the namespace elsewhere, and the running execution."""
    from swf_testbed.orchestrator.health import read_watch_file
    from swf_testbed.orchestrator.listener import Listener

    tb = _testbed(config, namespace)
    sup_running = tb.supervisor.running()
    listener = Listener(tb.broker, tb.namespace)
    listener.seed_from_watch(tb.paths)
    snap = read_watch_file(tb.paths.watch_file)
    if wait > 0 and not (snap and snap.fresh):
        listener.start()
        time.sleep(wait)
        listener.close()
    health = _status_health(tb, listener, sup_running)
    data = _status_data(tb, listener, health, sup_running)
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        sys.stdout.flush()
    else:
        _status_print(tb, health, data)
    raise typer.Exit(0 if data["healthy"] else EXIT_FAILED)


def stop(
    config: ConfigOpt = None,
    namespace: NamespaceOpt = None,
    all_: Annotated[
        bool, typer.Option("--all", help="Also the services and supervisord itself.")
    ] = False,
) -> None:
    """Stop the agents (with --all: everything, supervisord included)."""
    from swf_testbed.orchestrator.supervisor import SupervisorError

    tb = _testbed(config, namespace)
    if not tb.supervisor.running():
        say(f"nothing running for namespace {tb.namespace}")
        return
    try:
        if all_:
            if not tb.shutdown():
                raise fail(
                    f"supervisord (pid {tb.supervisor.pid()}) did not exit; see {tb.paths.logfile}"
                )
            say(f"namespace {tb.namespace}: all programs and supervisord stopped")
            return
        stopped = tb.stop_agents()
    except SupervisorError as exc:
        raise fail(str(exc)) from None
    say(f"stopped: {', '.join(stopped)}" if stopped else "no agent was running")
    say("services keep running; `swf-testbed stop --all` stops them too", "dim")


def logs(
    name: Annotated[
        str, typer.Argument(help="Program (agent or service) or process name; 'supervisord'.")
    ],
    config: ConfigOpt = None,
    namespace: NamespaceOpt = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing new lines.")
    ] = False,
    lines: Annotated[int, typer.Option("--lines", "-l", help="Lines to show.")] = 50,
) -> None:
    """Show (and follow) a program's log."""
    from swf_testbed.orchestrator.run import OrchestratorError
    from swf_testbed.orchestrator.supervisor import log_tail

    tb = _testbed(config, namespace)
    if name == "supervisord":
        files = [("supervisord", tb.paths.logfile)]
    else:
        try:
            _prog, processes = tb.find(name)
        except OrchestratorError as exc:
            raise fail(str(exc)) from None
        files = [(p, tb.paths.log_of(p)) for p in processes]
    multi = len(files) > 1
    found = False
    for proc, path in files:
        if not path.exists():
            warn(f"{proc}: no log yet ({path})")
            continue
        found = True
        for line in log_tail(path, lines).splitlines():
            sys.stdout.write((f"{proc} | " if multi else "") + line + "\n")
    sys.stdout.flush()
    if not follow:
        if not found:
            raise typer.Exit(EXIT_FAILED)
        return
    positions = {proc: (path.stat().st_size if path.exists() else 0) for proc, path in files}
    try:
        while True:
            time.sleep(0.3)
            for proc, path in files:
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                if size < positions[proc]:
                    positions[proc] = 0  # rotated
                if size > positions[proc]:
                    with open(path, "rb") as fh:
                        fh.seek(positions[proc])
                        chunk = fh.read(size - positions[proc])
                    positions[proc] = size
                    for line in chunk.decode(errors="replace").splitlines():
                        sys.stdout.write((f"{proc} | " if multi else "") + line + "\n")
                    sys.stdout.flush()
    except KeyboardInterrupt:
        return


def restart(
    name: Annotated[str, typer.Argument(help="Program or process name.")],
    config: ConfigOpt = None,
    namespace: NamespaceOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Restart one program (applies a changed testbed.toml first) and wait until it is healthy."""
    from swf_testbed.cli.run_view import health_table
    from swf_testbed.orchestrator.listener import Listener
    from swf_testbed.orchestrator.run import OrchestratorError, Unhealthy
    from swf_testbed.orchestrator.supervisor import SupervisorError

    tb = _testbed(config, namespace)
    try:
        prog, processes = tb.find(name)
    except OrchestratorError as exc:
        raise fail(str(exc)) from None
    listener = Listener(tb.broker, tb.namespace).start()
    try:
        with _Signals() as signals:
            if tb.loaded is not None:
                tb.ensure_up(lambda m: say(m, "dim"), only=[prog.name])
            elif not tb.supervisor.running():
                raise fail(
                    f"supervisord is not running for namespace {tb.namespace}; use `swf-testbed up`"
                )
            tb.restart(name)
            say(f"restarted {', '.join(processes)}; waiting until healthy", "dim")
            limit = timeout or (tb.loaded.config.testbed.start_timeout if tb.loaded else 120.0)
            health = tb.wait_healthy(
                listener.beats, limit, programs=[prog], cancelled=lambda: signals.interrupted
            )
        console.print(health_table(health))
    except (Unhealthy, SupervisorError, OrchestratorError) as exc:
        raise fail(str(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        listener.close()


def register(app: typer.Typer) -> None:
    """Add the orchestrator's commands to the ``swf-testbed`` app."""
    app.command("init")(init)
    app.command("run")(run)
    app.command("up")(up)
    app.command("status")(status)
    app.command("stop")(stop)
    app.command("logs")(logs)
    app.command("restart")(restart)

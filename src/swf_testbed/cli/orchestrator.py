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
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from swf_testbed.cli.common import console, err_console

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

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


# --------------------------------------------------------------------------- output helpers


def say(text: str, style: str | None = None) -> None:
    console.print(Text(text, style=style or ""), soft_wrap=True)


def warn(text: str) -> None:
    err_console.print(Text(text, style="yellow"), soft_wrap=True)


def fail(text: str, code: int = EXIT_FAILED) -> typer.Exit:
    err_console.print(Text("error: ", style="bold red") + Text(text), soft_wrap=True)
    return typer.Exit(code)


def _settings() -> Any:
    from swf_testbed.settings import get_settings

    if logging.getLogger().level > logging.DEBUG:  # connection chatter only with --verbose
        logging.getLogger("swf_testbed.mq").setLevel(logging.WARNING)
        logging.getLogger("stomp.py").setLevel(logging.ERROR)
        logging.getLogger("httpx").setLevel(logging.WARNING)

    return get_settings()


def _load(path: Path) -> Any:
    """Validated config, or exit 2 with the problems."""
    from swf_testbed.orchestrator.config import ConfigError, load

    try:
        return load(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            err_console.print(Text("error: ", style="bold red") + Text(line), soft_wrap=True)
        raise typer.Exit(EXIT_CONFIG) from None


def _testbed(config: Path | None, namespace: str | None) -> Any:
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
            f"--namespace {namespace} does not match {loaded.source} (namespace {loaded.namespace})",
            EXIT_CONFIG,
        )
    return Testbed.from_config(loaded, settings)


def _health_table(health: list[Any], title: str | None = None) -> Group:
    """The programs' health: a table that fits 80 columns with names that never break, then each
    process's detail in full on its own line."""
    table = Table(
        title=title,
        title_justify="left",
        box=None,
        pad_edge=False,
        padding=(0, 1),
        header_style="bold",
    )
    for col in ("program", "supervisord", "pid", "heartbeat", "liveness", "state"):
        table.add_column(col, no_wrap=True)
    colours = {"ok": "green", "late": "yellow", "down": "red", "n/a": "dim"}
    details: list[Text] = []
    for h in health:
        age = f"{h.heartbeat_age:.1f} s ago" if h.heartbeat_age is not None else "-"
        sup_style = (
            "green" if h.state == "RUNNING" else ("yellow" if h.state == "STARTING" else "red")
        )
        table.add_row(
            h.process,
            Text(h.state, style=sup_style),
            str(h.pid or "-"),
            age if h.kind == "agent" else "-",
            Text(h.liveness, style=colours.get(h.liveness, "")),
            h.operational_state or ("-" if h.kind == "agent" else h.kind),
        )
        if h.detail:
            details.append(Text(f"{h.process}: ", style="bold") + Text(h.detail))
    return Group(table, *details)


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


def _check_ports(tb: Any) -> None:
    """Stop (exit 1) before anything starts when a port of an embedded service is taken."""
    from swf_testbed.orchestrator.run import PortsInUse

    conflicts = tb.port_conflicts()
    if conflicts:
        raise fail(str(PortsInUse(conflicts, tb.loaded.source)))


def _bring_up(
    tb: Any, listener: Any, timeout: float, signals: _Signals, *, only: list[str] | None = None
) -> list[Any]:
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

                def show(health: list[Any]) -> None:
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
    from swf_testbed.orchestrator.run import Listener, Testbed

    loaded = _load(config)
    tb = Testbed.from_config(loaded, _settings())
    _check_ports(tb)
    listener = Listener(tb.broker, tb.namespace).start()
    try:
        with _Signals() as signals:
            health = _bring_up(
                tb, listener, timeout or loaded.config.testbed.start_timeout, signals
            )
        console.print(_health_table(health))
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
    from swf_testbed.orchestrator.run import Listener, Testbed, WorkflowSession

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
                listener.seed_from_watch(tb.paths)
                rec = listener.executions.running()
                found = (
                    {"execution_id": rec.execution_id, "workflow_name": rec.workflow_name}
                    if rec
                    else None
                )
                if found is None:
                    info, _src = tb.latest_execution(listener.executions)
                    if info and info.get("status") == "running":
                        found = info
                if found is None:
                    raise fail(
                        f"no workflow is running in namespace {tb.namespace}; nothing to attach to"
                    )
                session.attach(str(found["execution_id"]), str(found.get("workflow_name") or ""))
                say(f"attached to execution {found['execution_id']}")
            else:
                try:
                    session.request(cfg.workflow, cfg.parameters)
                except BrokerUnavailable as exc:
                    raise fail(f"cannot send run_workflow: {exc}") from None
                say(
                    f"run_workflow sent: {cfg.workflow.name} ({cfg.workflow.config}) in namespace {tb.namespace}"
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


DRAIN_SETTLE_S = 5.0
"""After the run, in a testbed without a processing chain: how long to wait for stragglers."""


def _produced(snap: dict[str, Any]) -> int:
    """STFs the run produced: the DAQ's own count once it is known (we may have missed some stf_gen)."""
    return max(snap["stf_produced"], snap["stf_count"] or 0)


def _drained(snap: dict[str, Any], figures: dict[str, int] | None = None) -> bool:
    """Every STF the run produced is processed and every slice sent has its result.

    ``figures``: processed / slice counts to judge by instead of the snapshot's (the monitor's);
    they also tell the samples that have no slice yet, which count once the run has slices at all
    (a sample whose message a fast-processing agent missed is never sliced: its slices are not late
    but lost, and they are in no slice count).
    """
    f = snap if figures is None else figures
    unsliced = f.get("samples_unsliced", 0) if f["slices"] else 0
    return (
        f["stf_processed"] >= _produced(snap)
        and f["slices_done"] + f["slices_failed"] >= f["slices"]
        and not unsliced
    )


MONITOR_CHECK_S = 2.0
"""How often the monitor's record is asked while draining after the broker connection was lost."""


def _monitor_figures(monitor_url: str, execution_id: str) -> dict[str, int] | None:
    """STFs processed, slices and unsliced samples of the execution as the monitor recorded them.

    None when it cannot tell.

    After the broker connection was lost mid-run our own counts are not to be
    trusted (we missed what was sent meanwhile, and redeliveries count twice);
    the monitor's ingest subscribes durably and records each message once.
    """
    import httpx

    try:
        with httpx.Client(base_url=f"{monitor_url}/api", timeout=5.0) as api:

            def count(path: str, **params: Any) -> int:
                response = api.get(path, params={**params, "limit": 1})
                response.raise_for_status()
                return int(response.json()["count"])

            response = api.get("/runs/", params={"execution_id": execution_id})
            response.raise_for_status()
            runs = response.json()
            runs = runs.get("results", []) if isinstance(runs, dict) else runs
            figures = {
                "stf_processed": count(
                    "/stf-files/", execution_id=execution_id, status="processed"
                ),
                "samples_unsliced": count(
                    "/fastmon-files/", execution_id=execution_id, has_slices="false"
                ),
                "slices": 0,
                "slices_done": 0,
                "slices_failed": 0,
            }
            for run in runs:
                number = run["run_number"]
                figures["slices"] += count("/tf-slices/", run_number=number)
                figures["slices_done"] += count(
                    "/tf-slices/", run_number=number, status="completed"
                )
                figures["slices_failed"] += count("/tf-slices/", run_number=number, status="failed")
            return figures
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def _follow(
    tb: Any,
    session: Any,
    signals: _Signals,
    *,
    reply_timeout: float,
    stop_timeout: float,
    drain_timeout: float = 120.0,
) -> int:
    """Follow the session to its end with a live display; returns the exit code.

    The DAQ run ends before the agents have handled all it produced; a
    completed execution is followed on until they have (or ``drain_timeout``).
    """
    monitor_url = tb.monitor_url
    reply_deadline = time.monotonic() + reply_timeout
    stop_deadline: float | None = None
    announced = False
    printed_events = 0
    last_line = 0.0
    live: Live | None = None
    if console.is_terminal:
        live = Live(
            _progress_view(session.snapshot(), monitor_url),
            console=console,
            refresh_per_second=4,
            transient=False,
        )
        live.start()
    drain_deadline: float | None = None
    last_total, last_change = -1, time.monotonic()
    reconnects_at_start = session.listener.client.reconnects
    recorded: dict[str, int] | None = None  # the monitor's figures, once our connection was lost
    last_check = 0.0
    try:
        while True:
            if session.done.wait(0.2):
                snap = session.snapshot()
                if snap["status"] != "completed" or signals.interrupted:
                    break
                if session.listener.client.reconnects > reconnects_at_start:
                    if time.monotonic() - last_check >= MONITOR_CHECK_S:
                        last_check = time.monotonic()
                        recorded = _monitor_figures(monitor_url, snap["execution_id"]) or recorded
                    # our own counts are not to be trusted now: only the monitor's record can end the wait early
                    if recorded is not None and _drained(snap, recorded):
                        break
                elif _drained(snap):
                    break
                total = (
                    snap["stf_ready"] + snap["stf_processed"] + snap["slices"] + snap["slices_done"]
                )
                if total != last_total:
                    last_total, last_change = total, time.monotonic()
                if drain_deadline is None:
                    drain_deadline = time.monotonic() + drain_timeout
                # stop at the deadline; or, when no agent ever took up the run's data (no processing
                # chain in this testbed), once nothing has moved for a while
                no_chain = not (snap["stf_ready"] or snap["stf_processed"] or snap["slices"])
                if time.monotonic() > drain_deadline or (
                    no_chain and time.monotonic() - last_change > DRAIN_SETTLE_S
                ):
                    break
            now = time.monotonic()
            snap = session.snapshot()
            if not announced and snap["execution_id"]:
                announced = True
                _print(
                    live,
                    f"execution {snap['execution_id']}: {monitor_url}/executions/{snap['execution_id']}/",
                )
            events = list(session.events)
            if live is None:
                for event in events[printed_events:]:
                    say(event)
                if now - last_line >= 5.0 and snap["execution_id"]:
                    last_line = now
                    say(_progress_line(snap), "dim")
            printed_events = len(events)
            if live is not None:
                live.update(_progress_view(snap, monitor_url))
            if signals.interrupted:
                if not session.stop_sent:
                    if session.stop():
                        _print(
                            live,
                            f"stopping execution {snap['execution_id']} (Ctrl+C again to exit now)",
                        )
                        stop_deadline = now + stop_timeout
                    elif stop_deadline is None:
                        stop_deadline = now + min(
                            reply_timeout, 10.0
                        )  # stop it as soon as it has an id
                if stop_deadline is not None and now > stop_deadline:
                    warn(
                        "no workflow_completed after the stop request; exiting (the runner may still close it)"
                    )
                    return EXIT_INTERRUPTED
            if not session.started.is_set() and now > reply_deadline:
                if live is not None:
                    live.stop()
                    live = None
                err = fail(
                    f"no workflow runner answered on the control queue of namespace {tb.namespace} "
                    f"within {reply_timeout:g} s (is a runner agent configured and READY?)"
                )
                return err.exit_code
    finally:
        if live is not None:
            live.update(_progress_view(session.snapshot(), monitor_url))
            live.stop()
    snap = session.snapshot()
    events = list(session.events)
    if not announced and snap["execution_id"]:
        say(f"execution {snap['execution_id']}: {monitor_url}/executions/{snap['execution_id']}/")
    if live is None:
        for event in events[printed_events:]:
            say(event)
    status = snap["status"]
    eid = snap["execution_id"]
    if status == "completed":
        lost = session.listener.client.reconnects > reconnects_at_start
        if lost:
            recorded = _monitor_figures(monitor_url, str(eid)) or recorded
        f = recorded if lost and recorded is not None else snap
        slices = f", {f['slices_done']} of {f['slices']} slices done" if f["slices"] else ""
        produced = _produced(snap)
        if signals.interrupted and not _drained(snap, f):
            # the run ended, the agents had not caught up: it is not "completed" for the person
            # who pressed Ctrl+C, and the agents go on with it
            if f["slices"]:
                pending = (
                    f"{f['slices'] - f['slices_done'] - f['slices_failed']} of {f['slices']} slices"
                )
            else:
                pending = f"{max(produced - f['stf_processed'], 0)} of {produced} STFs"
            warn(
                f"interrupted while {pending} were still in progress (the workers carry on; "
                f"`swf-testbed status` shows them)"
            )
            say(f"monitor: {monitor_url}/executions/{eid}/")
            return EXIT_INTERRUPTED
        say(
            f"workflow completed: execution {eid}, {produced} STFs produced, "
            f"{f['stf_processed']} processed{slices} ({snap['elapsed_s']:.1f} s)",
            "green",
        )
        say(f"monitor: {monitor_url}/executions/{eid}/")
        if f is recorded:
            say(
                "(processed and slice figures from the monitor's record: the broker connection was lost "
                "during the run, and what this command saw of it is incomplete)"
            )
        if signals.interrupted:
            return EXIT_INTERRUPTED
        if not _drained(snap, f) and (
            f["stf_processed"] or f["slices"]
        ):  # (no processing agent: nothing to wait for)
            missing = produced - f["stf_processed"]
            unsliced = f.get("samples_unsliced", 0)
            dropped = ""
            if lost:
                # after a broker restart the shortfall is most likely loss, not slowness: say so
                dropped = (
                    "\nthe broker connection was lost during the run: messages in flight then were "
                    "probably lost (the embedded broker keeps nothing across a restart); "
                    f"the monitor's record: {monitor_url}/executions/{eid}/"
                )
            raise fail(
                f"the agents did not catch up within {drain_timeout:g} s of the run's end: "
                f"{f['stf_processed']} of {produced} STFs processed"
                f"{f' ({missing} missing)' if missing > 0 else ''}, "
                f"{f['slices_done'] + f['slices_failed']} of {f['slices']} slices settled"
                f"{f', {unsliced} sample(s) never sliced' if unsliced else ''}{dropped}"
            )
        return 0
    if status == "terminated":
        tail = "" if snap["end_run"] else " (no end_run seen)"
        if signals.interrupted:
            say(f"workflow stopped: execution {eid} terminated{tail}", "yellow")
            return EXIT_INTERRUPTED
        raise fail(f"execution {eid} was terminated (stop_workflow from elsewhere){tail}")
    if status == "refused":
        running = session.listener.executions.running()
        hint = f" (execution {running.execution_id})" if running else ""
        raise fail(
            f"the workflow runner refused: {snap['error']}{hint}\n"
            f"a workflow is already running in namespace {tb.namespace}; follow it with "
            f"`swf-testbed run --attach`, or wait for it to end"
        )
    raise fail(f"workflow failed: execution {eid or '-'}: {snap['error']}")


def _print(live: Live | None, text: str) -> None:
    if live is not None:
        live.console.print(Text(text), soft_wrap=True)
    else:
        say(text)


def _progress_line(s: dict[str, Any]) -> str:
    return (
        f"[{s['elapsed_s']:.0f} s] {s['status']} run {s['run_id'] if s['run_id'] is not None else '-'} "
        f"{s['daq_state'] or '-'}: STFs produced {s['stf_produced']}, ready {s['stf_ready']}, processed "
        f"{s['stf_processed']}; samples {s['samples']}; slices {s['slices_done']} done, "
        f"{s['slices_failed']} failed; {s['stf_gen_per_s']:.2f} STF/s (last {s['rate_window_s']:g} s)"
    )


def _progress_view(s: dict[str, Any], monitor_url: str) -> Group:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    eid = s["execution_id"] or "(waiting for the runner)"
    table.add_row("execution", eid)
    table.add_row("workflow", s["workflow_name"] or "-")
    table.add_row(
        "status",
        Text(s["status"], style="green" if s["status"] in ("running", "completed") else "yellow"),
    )
    table.add_row(
        "run", f"{s['run_id'] if s['run_id'] is not None else '-'}  {s['daq_state'] or ''}"
    )
    table.add_row(
        "STFs",
        f"produced {s['stf_produced']}  ready {s['stf_ready']}  processed "
        f"{s['stf_processed']}  ({s['stf_gen_per_s']:.2f}/s produced, "
        f"{s['processed_per_s']:.2f}/s processed, last {s['rate_window_s']:g} s)",
    )
    table.add_row("samples", str(s["samples"]))
    table.add_row(
        "slices",
        f"{s['slices']} sent  {s['slices_done']} done  {s['slices_failed']} failed  "
        f"({s['slices_per_s']:.2f}/s, last {s['rate_window_s']:g} s)",
    )
    table.add_row("elapsed", f"{s['elapsed_s']:.0f} s")
    if s["execution_id"]:
        table.add_row("monitor", f"{monitor_url}/executions/{s['execution_id']}/")
    return Group(table)


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
    """Programs, their health, and the running execution."""
    from swf_testbed.orchestrator.health import read_watch_file
    from swf_testbed.orchestrator.run import Listener, ProcessHealth

    tb = _testbed(config, namespace)
    sup_running = tb.supervisor.running()
    listener = Listener(tb.broker, tb.namespace)
    listener.seed_from_watch(tb.paths)
    snap = read_watch_file(tb.paths.watch_file)
    watch_fresh = bool(snap and snap.fresh)
    if wait > 0 and not watch_fresh:
        listener.start()
        time.sleep(wait)
        listener.close()
    if sup_running:
        health = tb.check(listener.beats)
    else:
        health = [
            ProcessHealth(p.name, proc, p.kind, "NOT RUNNING")
            for p in tb.programs
            for proc in p.processes
        ]
    execution, exec_source = tb.latest_execution(listener.executions)
    running = listener.executions.running()
    healthy = sup_running and bool(health) and all(h.healthy for h in health)
    data = {
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
        "healthy": healthy,
        "pending_changes": tb.pending_changes() if sup_running else False,
        "watch": {
            "fresh": watch_fresh,
            "updated_at": snap.updated_at if snap else None,
            "broker_connected": snap.broker_connected if snap else None,
        },
        "programs": [h.to_json() for h in health],
        "execution": execution,
        "execution_id": execution.get("execution_id") if execution else None,
        "execution_status": execution.get("status") if execution else None,
        "running_execution": running.execution_id if running else None,
    }
    if as_json:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
        sys.stdout.flush()
        raise typer.Exit(0 if healthy else EXIT_FAILED)
    state = "running" if sup_running else "not running"
    say(f"namespace {tb.namespace}: supervisord {state} ({tb.paths.root})", "bold")
    if health:
        console.print(_health_table(health))
    else:
        say("no programs")
    if sup_running and not watch_fresh:
        warn("the watch program has not reported lately: heartbeat ages may be stale")
    elif sup_running and snap is not None and not snap.broker_connected:
        warn(
            f"the watch program cannot reach the broker at {data['broker']}: no heartbeats are heard"
        )
    if data["pending_changes"]:
        warn(
            "testbed.toml (or the environment) changed since it was applied; `swf-testbed up` applies it"
        )
    say(f"broker {data['broker']}; monitor {tb.monitor_url} ({exec_source})")
    if running:
        say(
            f"running execution: {running.execution_id} ({running.workflow_name}) "
            f"{tb.monitor_url}/executions/{running.execution_id}/"
        )
    elif execution:
        say(f"latest execution: {execution['execution_id']} ({execution.get('status')})")
    else:
        say("no execution seen")
    raise typer.Exit(0 if healthy else EXIT_FAILED)


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
    from swf_testbed.orchestrator.run import Listener, OrchestratorError, Unhealthy
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
        console.print(_health_table(health))
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

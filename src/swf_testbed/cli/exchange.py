"""``swf-testbed export`` / ``import``: an execution's messages as a JSON-lines file, and back into
a monitor.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from swf_testbed.cli.common import err_console


def export(
    execution_id: Annotated[str, typer.Argument(help="The execution to export.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write here instead of standard output.", dir_okay=False
        ),
    ] = None,
) -> None:
    """Write every message of an execution, in recorded order, as JSON lines after a header with
    its config.

    Reads the monitor's database (DATABASE_URL, else SQLite in SWF_HOME).
    """
    from swf_testbed import monitor

    monitor.setup()
    from swf_testbed.monitor.exchange import export_execution

    try:
        if output is None:
            count = export_execution(execution_id, sys.stdout)
        else:
            tmp = output.with_name(output.name + ".part")
            with open(tmp, "w", encoding="utf-8") as out:
                count = export_execution(execution_id, out)
            tmp.replace(output)
    except LookupError as exc:
        err_console.print(f"[red]{escape(str(exc.args[0]))}[/red]", highlight=False)
        raise typer.Exit(1) from None
    err_console.print(
        f"exported {count} messages of {execution_id}" + (f" to {output}" if output else "")
    )


def import_cmd(
    file: Annotated[
        Path,
        typer.Argument(help="A file written by swf-testbed export.", exists=True, dir_okay=False),
    ],
) -> None:
    """Load an export into this monitor's database: the execution, its messages and what they make.
    Idempotent.

    The whole file is checked first: a truncated or edited file is refused, naming the line, and
    nothing is written.
    """
    from swf_testbed import monitor

    monitor.setup()
    from swf_testbed.monitor.db import migrate
    from swf_testbed.monitor.exchange import ExportFileError, import_export, read_export

    migrate()
    try:
        export_file = read_export(file)
    except ExportFileError as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    result = import_export(export_file)
    err_console.print(
        f"imported {export_file.execution['execution_id']}: {result['stored']} messages stored, "
        f"{result['already_there']} already there"
        + ("" if result["execution_created"] else " (the execution existed)")
    )


def replay_cmd(
    file: Annotated[
        Path,
        typer.Argument(help="A file written by swf-testbed export.", exists=True, dir_okay=False),
    ],
    namespace: Annotated[
        str, typer.Option("--namespace", "-n", help="The namespace to replay into.")
    ],
    speed: Annotated[
        float | None,
        typer.Option(
            "--speed",
            min=0.001,
            help="Divide the recorded gaps between messages by this (default 1).",
        ),
    ] = None,
    as_fast_as_possible: Annotated[
        bool,
        typer.Option("--as-fast-as-possible", help="No gaps: send one message after the other."),
    ] = False,
    types: Annotated[
        str | None,
        typer.Option(
            "--types",
            help="Comma-separated message types to replay (default: run_imminent, start_run, "
            "pause_run, resume_run, stf_gen, end_run).",
        ),
    ] = None,
) -> None:
    """Publish the run messages of an export again into another namespace, re-timed, for its agents
    to react to.

    The replay is a new execution, with new run numbers and STF file names (docs/interfaces.md has
    the mapping), announced with workflow_started and ended with workflow_completed. It uses the
    broker of ACTIVEMQ_*.

    A truncated or edited file is refused naming the line, exit 2; Ctrl+C ends the open run
    (end_run), exit 130.
    """
    import re
    import signal
    import threading

    from swf_testbed.monitor.exchange import ExportFileError, read_export
    from swf_testbed.mq import BrokerClient
    from swf_testbed.mq.client import BrokerUnavailable
    from swf_testbed.orchestrator.config import NAMESPACE_PATTERN
    from swf_testbed.orchestrator.replay import ReplayError, parse_types, plan_replay, replay
    from swf_testbed.settings import get_settings

    def refuse(text: str) -> typer.Exit:
        err_console.print(f"[red]{escape(text)}[/red]", highlight=False, soft_wrap=True)
        return typer.Exit(2)

    if not re.match(NAMESPACE_PATTERN, namespace):
        raise refuse(
            f"--namespace {namespace!r}: letters, digits, _ . - (at most 64, a letter or digit "
            f"first)"
        )
    if as_fast_as_possible and speed is not None:
        raise refuse("give --speed or --as-fast-as-possible, not both")
    try:
        chosen = parse_types(types)
        export_file = read_export(file)
        plan = plan_replay(export_file, file, namespace, chosen)
    except (ExportFileError, ReplayError) as exc:
        raise refuse(str(exc)) from None
    for problem in plan.skipped:
        err_console.print(f"[yellow]{escape(problem)}[/yellow]", highlight=False, soft_wrap=True)
    runs = ", ".join(f"{old} → {new}" for old, new in plan.run_numbers.items())
    speed = None if as_fast_as_possible else (speed or 1.0)
    pace = "as fast as possible" if speed is None else f"at speed {speed:g}"
    err_console.print(
        f"replaying {len(plan.messages)} messages of {plan.source_execution} into namespace "
        f"{namespace} {pace}: execution {plan.execution_id}, run {runs}",
        highlight=False,
    )
    client = BrokerClient(get_settings().broker, client_name=f"swf-replay-{namespace}")
    stop = threading.Event()
    try:
        client.start(wait=30)
    except BrokerUnavailable as exc:
        err_console.print(f"[red]{escape(str(exc))}[/red]", highlight=False)
        raise typer.Exit(1) from None
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:  # Ctrl+C: the open run gets its end_run, the execution ends terminated
        outcome = replay(
            plan, lambda dest, msg: client.send(dest, msg, receipt=True), stop=stop, speed=speed
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        client.close()
    err_console.print(
        f"replay {'interrupted' if outcome.interrupted else 'completed'}: execution "
        f"{plan.execution_id}, {outcome.sent} messages sent, {outcome.stf_count} STFs",
        highlight=False,
    )
    if outcome.interrupted:
        raise typer.Exit(130)

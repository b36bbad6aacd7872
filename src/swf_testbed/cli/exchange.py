"""``swf-testbed export`` / ``import``: an execution's messages as a JSON-lines file, and back into a monitor."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from swf_testbed.cli.common import err_console


def export(
    execution_id: Annotated[str, typer.Argument(help="The execution to export.")],
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here instead of standard output.",
                                               dir_okay=False)] = None,
) -> None:
    """Write every message of an execution, in recorded order, as JSON lines after a header with its config.

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
    err_console.print(f"exported {count} messages of {execution_id}" + (f" to {output}" if output else ""))


def import_cmd(
    file: Annotated[Path, typer.Argument(help="A file written by swf-testbed export.", exists=True, dir_okay=False)],
) -> None:
    """Load an export into this monitor's database: the execution, its messages and what they make. Idempotent.

    The whole file is checked first: a truncated or edited file is refused, naming the line, and nothing is written.
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
    err_console.print(f"imported {export_file.execution['execution_id']}: {result['stored']} messages stored, "
                      f"{result['already_there']} already there"
                      + ("" if result["execution_created"] else " (the execution existed)"))

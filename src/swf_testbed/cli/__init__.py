"""The ``swf-testbed`` command line (Typer + Rich)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler

from swf_testbed import __version__
from swf_testbed.cli.agent import agent_app
from swf_testbed.cli.broker import broker
from swf_testbed.cli.common import console, err_console
from swf_testbed.cli.monitor import monitor_app
from swf_testbed.cli.orchestrator import register as register_orchestrator

app = typer.Typer(
    name="swf-testbed",
    help="Streaming workflow testbed for the ePIC experiment.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
docs_app = typer.Typer(help="Generate reference documentation from the code.", no_args_is_help=True)
app.add_typer(docs_app, name="docs")
app.add_typer(agent_app, name="agent")
app.command()(broker)
app.add_typer(monitor_app, name="monitor")
register_orchestrator(app)


def setup_logging(verbose: bool = False) -> None:
    """Rich logs for a person at a terminal; plain, timestamped lines for log files."""
    handler: logging.Handler
    if sys.stderr.isatty():
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=True)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    # stomp.py logs every frame at INFO/DEBUG; that is noise for users, and its DEBUG "sending frame"
    # line shows the CONNECT frame with the broker passcode in clear (its masking misses that form).
    # So it stays at WARNING even with -v: never lower it.
    logging.getLogger("stomp.py").setLevel(logging.WARNING)


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    setup_logging(verbose)


@app.command()
def version() -> None:
    """Print the version."""
    console.print(f"swf-testbed {__version__}")


@docs_app.command("messages")
def docs_messages(
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")] = None,
) -> None:
    """The message reference (Markdown), generated from the schema."""
    from swf_testbed.reference import messages_markdown

    text = messages_markdown()
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


def main() -> None:
    app()

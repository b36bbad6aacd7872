"""The ``swf-testbed`` command line (Typer + Rich)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.logging import RichHandler
from rich.text import Text

from swf_testbed import __version__
from swf_testbed.cli.agent import agent_app
from swf_testbed.cli.broker import broker
from swf_testbed.cli.common import console, err_console
from swf_testbed.cli.exchange import export, import_cmd, replay_cmd
from swf_testbed.cli.mcp_cmd import mcp
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
app.command()(mcp)
app.command()(export)
app.command("import")(import_cmd)
app.command("replay")(replay_cmd)
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
    # stomp.py logs every frame at INFO/DEBUG; that is noise for users, and its DEBUG "sending
    # frame" line shows the CONNECT frame with the broker passcode in clear (its masking misses that
    # form). So it stays at WARNING even with -v: never lower it.
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


OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
]


def _emit(text: str, output: Path | None) -> None:
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {output}")


@docs_app.command("messages")
def docs_messages(output: OutputOpt = None) -> None:
    """The message reference (Markdown), generated from the schema."""
    from swf_testbed.reference import messages_markdown

    _emit(messages_markdown(), output)


@docs_app.command("cli")
def docs_cli(output: OutputOpt = None) -> None:
    """The command line reference (Markdown): every command, its arguments and options."""
    from swf_testbed.reference import cli_markdown

    _emit(cli_markdown(), output)


@docs_app.command("config")
def docs_config(output: OutputOpt = None) -> None:
    """The configuration reference (Markdown): testbed.toml keys and environment variables."""
    from swf_testbed.reference import config_markdown

    _emit(config_markdown(), output)


@docs_app.command("openapi")
def docs_openapi(output: OutputOpt = None) -> None:
    """The monitor's OpenAPI schema (YAML), as /api/schema/ serves it."""
    from swf_testbed.reference import openapi_yaml

    _emit(openapi_yaml(), output)


@docs_app.command("write")
def docs_write(
    directory: Annotated[Path, typer.Option("--dir", help="The reference directory.")] = Path(
        "docs/reference"
    ),
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 if a file is out of date.")
    ] = False,
) -> None:
    """Regenerate every generated reference file (messages.md, cli.md, config.md, openapi.yaml)."""
    from swf_testbed.reference import GENERATED

    stale = []
    for name, generate in GENERATED.items():
        path = directory / name
        text = generate()
        if path.exists() and path.read_text() == text:
            continue
        stale.append(path)
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            console.print(f"wrote {path}")
    if check and stale:
        err_console.print(
            "out of date (run `swf-testbed docs write`): " + ", ".join(map(str, stale))
        )
        raise typer.Exit(1)
    if not stale:
        console.print(f"{directory}: every generated file is current")


def main() -> None:
    """The ``swf-testbed`` command; bad settings in the environment end it with one clear message,
    exit 2.
    """
    from swf_testbed.settings import SettingsError

    try:
        app()
    except SettingsError as exc:
        err_console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False)
        sys.exit(2)

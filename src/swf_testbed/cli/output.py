"""How the orchestrator's commands talk to a person: a line, a warning, an error and its exit code.

Exit codes: 0 success; 1 something failed (named, with the reason); 2 the
testbed.toml (or a command line option) is wrong and nothing was started;
130 interrupted (Ctrl+C).
"""

from __future__ import annotations

import typer
from rich.text import Text

from swf_testbed.cli.common import console, err_console

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def say(text: str, style: str | None = None) -> None:
    console.print(Text(text, style=style or ""), soft_wrap=True)


def warn(text: str) -> None:
    err_console.print(Text(text, style="yellow"), soft_wrap=True)


def fail(text: str, code: int = EXIT_FAILED) -> typer.Exit:
    """Print the error; the exit to raise."""
    err_console.print(Text("error: ", style="bold red") + Text(text), soft_wrap=True)
    return typer.Exit(code)

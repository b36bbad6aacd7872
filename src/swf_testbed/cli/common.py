"""Consoles shared by the CLI commands."""

from rich.console import Console

console = Console()
err_console = Console(stderr=True, soft_wrap=True)  # error lines stay whole, also in log files

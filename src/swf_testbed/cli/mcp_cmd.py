"""``swf-testbed mcp``: the MCP server (tools for AI assistants) over stdio."""

from __future__ import annotations

from typing import Annotated

import typer


def mcp(
    token: Annotated[
        str,
        typer.Option(
            envvar="SWF_API_TOKEN",
            show_default=False,
            help="A monitor token; writes (start/stop workflow, end execution) need its user to be "
            "staff or to have the api.change_workflowexecution permission. Without one, read-only.",
        ),
    ] = "",
) -> None:
    """Serve the MCP tools over stdio, on the monitor's database (DATABASE_URL, else SQLite in
    SWF_HOME).

    For an assistant on this machine, e.g. its config: {"command": "swf-testbed", "args": ["mcp"]}.
    The monitor web serves the same tools over streamable HTTP at /mcp/ (token auth).
    """
    from swf_testbed.monitor.mcp_server import run_stdio

    run_stdio(token)

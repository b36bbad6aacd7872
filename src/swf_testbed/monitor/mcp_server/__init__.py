"""The MCP server: the testbed's state and controls as tools for AI assistants (the official
``mcp`` SDK).

The same tools over two transports: stdio (``swf-testbed mcp``, for an
assistant on this machine, reading the monitor's database) and streamable HTTP
at ``/mcp/`` in the monitor web (:func:`http_app`, mounted beside Django in
``asgi.py``; stateless, JSON answers), where every request needs
``Authorization: Token <key>``.

Reads need a valid token over HTTP (over stdio, the local user reads the
database the monitor uses). **Writes** (``start_workflow``, ``stop_workflow``,
``end_execution``) need a user with write permission: staff, or a user given
the ``api.change_workflowexecution`` permission (admin → Users). Over stdio
that user is the owner of ``SWF_API_TOKEN``; without one the server is
read-only. An agent's ordinary token (a plain user) may read but not start or
stop workflows.

Results are compact JSON text; lists are paged (``limit`` ≤ 500, ``offset``)
and say ``total`` and ``next_offset``. A bad argument is a tool error saying
which and why, never a traceback.
"""

from swf_testbed.monitor.mcp_server.server import (
    TOOLS,
    WRITE_TOOLS,
    build_server,
    http_app,
    run_stdio,
)

__all__ = ["TOOLS", "WRITE_TOOLS", "build_server", "http_app", "run_stdio"]

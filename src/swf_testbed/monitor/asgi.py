"""ASGI entry point (``swf-testbed monitor serve`` runs it under uvicorn).

Django serves everything but ``/mcp/``, the MCP server's streamable HTTP
(the ``mcp`` SDK's own Starlette app, see ``mcp_server.py``). The lifespan
events go to that app: its session manager runs for the server's lifetime
(Django has no lifespan of its own).
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "swf_testbed.monitor.settings")

django_application = get_asgi_application()

from swf_testbed.monitor.mcp_server import http_app  # noqa: E402 - needs Django set up first

mcp_application = http_app()
MCP_PREFIX = "/mcp/"


async def application(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        await mcp_application(scope, receive, send)
    elif scope["type"] == "http" and (scope["path"] == MCP_PREFIX.rstrip("/") or scope["path"].startswith(MCP_PREFIX)):
        await mcp_application(scope, receive, send)
    else:
        await django_application(scope, receive, send)

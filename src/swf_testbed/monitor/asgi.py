"""ASGI entry point (``swf-testbed monitor serve`` runs it under uvicorn).

Three ways in, by path:

* ``/mcp/``: the MCP server's streamable HTTP (the ``mcp`` SDK's own Starlette
  app, see ``mcp_server.py``). The lifespan events go to that app too: its
  session manager runs for the server's lifetime (Django has no lifespan).
* ``/api/messages/stream/`` (and its ``status/``): Django's ASGI handler, whose
  async views hold a stream open without holding a thread.
* everything else: Django's WSGI handler on a fixed pool of threads (the
  ``a2wsgi`` adapter). Django's ASGI handler runs each request's sync code in a
  thread of its own, so a persistent database connection (``CONN_MAX_AGE``)
  never outlives its request there; on the pool each thread keeps its
  connection, and a request costs no thread start. The REST API is sync code
  throughout, so this is where its latency is won.
"""

import os
from typing import Any

from a2wsgi import WSGIMiddleware
from django.core.asgi import get_asgi_application
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "swf_testbed.monitor.settings")

django_application = get_asgi_application()
django_wsgi_application = WSGIMiddleware(
    get_wsgi_application(),  # type: ignore[arg-type]  # a2wsgi's WSGIApp is narrower than Django's
    workers=8,
)
"""Up to 8 sync requests at once; more wait for a thread (each holds one database connection)."""

from swf_testbed.monitor.mcp_server import http_app  # noqa: E402 - needs Django set up first

mcp_application = http_app()
MCP_PREFIX = "/mcp/"
ASYNC_DJANGO_PREFIXES = ("/api/messages/stream/",)
"""Paths of Django's async views (``api/stream.py``): served by the ASGI handler."""


def _under(path: str, prefix: str) -> bool:
    return path == prefix.rstrip("/") or path.startswith(prefix)


async def application(scope: Any, receive: Any, send: Any) -> None:  # the ASGI callable
    if scope["type"] == "lifespan":
        await mcp_application(scope, receive, send)
    elif scope["type"] != "http":
        await django_application(scope, receive, send)
    elif _under(scope["path"], MCP_PREFIX):
        await mcp_application(scope, receive, send)
    elif any(_under(scope["path"], prefix) for prefix in ASYNC_DJANGO_PREFIXES):
        await django_application(scope, receive, send)
    else:
        await django_wsgi_application(scope, receive, send)

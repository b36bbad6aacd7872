"""Who may do what on the API: reads may be open (a setting), writes never anonymous, deletes by
staff.

* GET/HEAD/OPTIONS: anyone when ``SWF_API_OPEN_READS`` is on, else a login.
* POST/PUT/PATCH: any authenticated user (token or session). Records have no
  owner: the agents of a testbed update each other's runs, files and slices,
  so user B may change what user A's agent created.
* DELETE: staff only. No agent deletes; a token handed to an agent must not be
  able to erase the record of what happened.
* The one anonymous write: ``POST /api/logs/`` (agents that log without a
  token), from clients in ``SWF_API_ANONYMOUS_LOGS_FROM`` only (by default
  loopback; nobody in production unless listed; nobody when
  ``SWF_API_ANONYMOUS_LOGS`` is off), rate-limited per client address
  (``throttling.py``). A view opts in with ``anonymous_create_setting``; only
  its ``create`` action is opened. Any other anonymous write is a 401.

The client address is ``REMOTE_ADDR``: the peer of the TCP connection. Behind
a reverse proxy, uvicorn (``swf-testbed monitor serve`` runs it with proxy
headers on) replaces it with the proxy's ``X-Forwarded-For`` only when the
proxy's own address is trusted (uvicorn's ``FORWARDED_ALLOW_IPS``, default
127.0.0.1); from any other peer that header is ignored.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request


def reads_are_open() -> bool:
    return bool(getattr(settings, "SWF_API_OPEN_READS", False))


def client_address(request: Request | HttpRequest) -> str:
    """The client's address as the server saw it (see the module on proxies)."""
    return str(request.META.get("REMOTE_ADDR") or "")


def _listed(address: str, networks: list[str]) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in ipaddress.ip_network(net, strict=False) for net in networks)


def anonymous_create_allowed(view: Any, request: Request) -> bool:
    """True when the view opts in to anonymous creates, its setting is on and the client is in an
    allowed network.
    """
    name = getattr(view, "anonymous_create_setting", "")
    if not name or getattr(view, "action", None) != "create" or not getattr(settings, name, False):
        return False
    return _listed(client_address(request), list(getattr(settings, f"{name}_FROM", [])))


class ReadOpenWriteAuthenticated(BasePermission):
    """Reads open (a setting), writes for a login, DELETE for staff (see the module)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS and reads_are_open():
            return True
        if request.method == "POST" and anonymous_create_allowed(view, request):
            return True
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method == "DELETE" and _handles(view, "delete"):
            return bool(user.is_staff)
        return True  # (a DELETE the view does not handle goes on to its 405)


def _handles(view: Any, method: str) -> bool:
    """Whether the view answers this HTTP method (a viewset's routed actions, else the view's
    handlers).
    """
    action_map = getattr(view, "action_map", None)
    return method in action_map if action_map is not None else hasattr(view, method)

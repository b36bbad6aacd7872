"""Who may do what on the API: reads may be open (a setting), writes never anonymous, deletes by staff.

* GET/HEAD/OPTIONS: anyone when ``SWF_API_OPEN_READS`` is on, else a login.
* POST/PUT/PATCH: any authenticated user (token or session). Records have no
  owner: the agents of a testbed update each other's runs, files and slices,
  so user B may change what user A's agent created.
* DELETE: staff only. No agent deletes; a token handed to an agent must not be
  able to erase the record of what happened.
* The one anonymous write, off by default: ``POST /api/logs/`` when
  ``SWF_API_ANONYMOUS_LOGS`` is on (agents that log without a token). A view
  opts in with ``anonymous_create_setting``; only its ``create`` action is opened.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request


def reads_are_open() -> bool:
    return bool(getattr(settings, "SWF_API_OPEN_READS", False))


def anonymous_create_allowed(view: Any) -> bool:
    """True when the view opts in to anonymous creates and its setting is on."""
    name = getattr(view, "anonymous_create_setting", "")
    return bool(name) and getattr(view, "action", None) == "create" and bool(getattr(settings, name, False))


class ReadOpenWriteAuthenticated(BasePermission):
    """Reads open (a setting), writes for a login, DELETE for staff (see the module)."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS and reads_are_open():
            return True
        if request.method == "POST" and anonymous_create_allowed(view):
            return True
        user = request.user
        if not (user and user.is_authenticated):
            return False
        if request.method == "DELETE" and _handles(view, "delete"):
            return bool(user.is_staff)
        return True  # (a DELETE the view does not handle goes on to its 405)


def _handles(view: Any, method: str) -> bool:
    """Whether the view answers this HTTP method (a viewset's routed actions, else the view's handlers)."""
    action_map = getattr(view, "action_map", None)
    return method in action_map if action_map is not None else hasattr(view, method)

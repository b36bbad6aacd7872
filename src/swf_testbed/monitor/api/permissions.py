"""Who may do what on the API: reads may be open (a setting), writes never anonymous."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request


def reads_are_open() -> bool:
    return bool(getattr(settings, "SWF_API_OPEN_READS", False))


class ReadOpenWriteAuthenticated(BasePermission):
    """GET/HEAD/OPTIONS for anyone when ``SWF_API_OPEN_READS`` is on; anything else needs a login."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if request.method in SAFE_METHODS and reads_are_open():
            return True
        return bool(request.user and request.user.is_authenticated)

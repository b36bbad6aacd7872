"""Rate limit of anonymous log posts: a fixed window per client address, counted in Django's cache.

Each address's window opens at its first post and lasts the rate's period
(``20000/min``: at most 20000 posts in the minute after the first one, and so on).

A refused post costs one cache increment and no database access, so a client
flooding the monitor is answered 429 without slowing anyone else (each address
has its own window). Refusals are counted for the Logs page
(:func:`refused_count`). The monitor runs one web process, whose in-memory
cache holds the windows and the count; a shared cache in ``CACHES`` would make
them span processes.
"""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.cache import cache
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from swf_testbed.monitor.api.permissions import client_address
from swf_testbed.settings import parse_rate

_PREFIX = "swf:anonymous-logs"
_REFUSED_KEY = f"{_PREFIX}:refused"


def _increment(key: str, timeout: float | None) -> int:
    """Add one to a cache counter, creating it (atomic per key in every Django cache backend but the
    dummy).
    """
    cache.add(key, 0, timeout=timeout)
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=timeout)
        return 1


def refused_count() -> int:
    """Anonymous log posts refused by the rate limit since this web process started."""
    return int(cache.get(_REFUSED_KEY, 0))


class AnonymousLogThrottle(BaseThrottle):
    """``SWF_API_ANONYMOUS_LOGS_RATE`` anonymous posts per client address and window; token holders
    pass.
    """

    def __init__(self) -> None:
        self.wait_s: float | None = None

    def allow_request(self, request: Request, view: Any) -> bool:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            return True
        limit, window = parse_rate(
            str(getattr(settings, "SWF_API_ANONYMOUS_LOGS_RATE", "20000/min"))
        )
        now = time.time()
        # The window opens at the address's first post and lasts `window` seconds (the keys expire
        # then).
        key = f"{_PREFIX}:{window}:{client_address(request)}"
        cache.add(f"{key}:opened", now, timeout=window)
        if _increment(key, timeout=window) <= limit:
            return True
        opened = float(cache.get(f"{key}:opened", now))
        self.wait_s = max(1.0, opened + window - now)
        _increment(_REFUSED_KEY, timeout=None)
        return False

    def wait(self) -> float | None:
        return self.wait_s

"""The monitor: a Django service that records every message and shows the testbed.

Two processes share one database: the web (``swf-testbed monitor serve``: UI,
REST API, admin) and the ingest (``swf-testbed monitor ingest``: broker →
database). Nothing here runs at import time; call :func:`setup` before using
the ORM outside Django's own entry points.
"""

from __future__ import annotations

import os

SETTINGS_MODULE = "swf_testbed.monitor.settings"


def setup() -> None:
    """Configure Django with the monitor's settings (idempotent)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    import django
    from django.apps import apps

    if not apps.ready:
        django.setup()

"""Database chores shared by the monitor's programs."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from django.core.management import call_command
from django.db import connection

_PG_LOCK_KEY = 0x5357_464D  # "SWFM": the advisory lock serialising migrations


@contextlib.contextmanager
def _migration_lock() -> Iterator[None]:
    """Only one process migrates at a time (web and ingest may start together)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", [_PG_LOCK_KEY])
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [_PG_LOCK_KEY])
    elif connection.vendor == "sqlite" and str(connection.settings_dict["NAME"]) not in (
        "",
        ":memory:",
    ):
        lock_path = Path(str(connection.settings_dict["NAME"]) + ".migrate-lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


def migrate(verbosity: int = 0) -> None:
    """Apply the monitor's migrations (safe to call from several processes at once)."""
    with _migration_lock():
        call_command("migrate", interactive=False, verbosity=verbosity)


def describe() -> str:
    """Which database this is, for logs (never the password)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"SQLite {s['NAME']}"
    user, host, port = s.get("USER") or "", s.get("HOST") or "localhost", s.get("PORT") or ""
    return f"{connection.vendor} {user}@{host}:{port}/{s['NAME']}"

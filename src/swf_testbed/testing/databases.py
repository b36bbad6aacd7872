"""Throw-away PostgreSQL databases for tests and benchmarks."""

from __future__ import annotations

import uuid
from collections.abc import Callable


def create_postgres_database(
    server_url: str, prefix: str = "swf_test"
) -> tuple[str, Callable[[], None]]:
    """A new, empty database on the server of ``server_url``: its URL, and a function that drops it.

    The drop uses ``WITH (FORCE)``: connections still open to it are ended.
    """
    import psycopg
    from psycopg import sql

    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop() -> None:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}", drop

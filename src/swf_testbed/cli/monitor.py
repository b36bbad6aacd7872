"""``swf-testbed monitor …``: the monitor's web, ingest, database and tokens."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Annotated

import typer

monitor_app = typer.Typer(
    help="The monitor: web UI + REST API (serve), broker → database (ingest), migrations, tokens.",
    no_args_is_help=True,
)


def _django(extra_hosts: list[str] | None = None) -> None:
    """Set Django up with the monitor's settings (once per process)."""
    if extra_hosts:
        from swf_testbed.settings import get_settings

        current = os.environ.get("SWF_ALLOWED_HOSTS") or get_settings().monitor.allowed_hosts
        hosts = [h for h in current.split(",") if h]
        hosts += [h for h in extra_hosts if h and h not in hosts]
        os.environ["SWF_ALLOWED_HOSTS"] = ",".join(hosts)
        get_settings.cache_clear()
    from swf_testbed import monitor

    monitor.setup()


def _echo_err(text: str) -> None:
    typer.echo(text, err=True)


@monitor_app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8002,
    migrate: Annotated[bool, typer.Option(help="Apply migrations before serving.")] = True,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the UI, the REST API and the admin (ASGI, uvicorn)."""
    extra = [host]
    if host in ("0.0.0.0", "::", ""):
        extra = [socket.gethostname(), socket.getfqdn()]
    _django(extra_hosts=extra)
    from swf_testbed.monitor.db import describe
    from swf_testbed.monitor.db import migrate as run_migrations

    if migrate:
        run_migrations()
    _echo_err(f"monitor on http://{host}:{port}/ ({describe()})")
    import uvicorn

    # lifespan: the MCP app's session manager (monitor/asgi.py); a graceful shutdown does not wait
    # for ever on open message streams (they never end by themselves): after a few seconds they are
    # cut
    uvicorn.run(
        "swf_testbed.monitor.asgi:application",
        host=host,
        port=port,
        log_level=log_level,
        proxy_headers=True,
        lifespan="on",
        timeout_graceful_shutdown=3,
    )


@monitor_app.command()
def ingest(
    destination: Annotated[
        list[str] | None,
        typer.Option(help="Also follow this destination, e.g. /queue/x (repeatable)."),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Messages per transaction at most.")
    ] = None,
    flush_ms: Annotated[
        int | None, typer.Option(help="Longest wait before writing a partial batch.")
    ] = None,
    durable: Annotated[
        bool, typer.Option(help="Durable topic subscriptions (nothing lost while down).")
    ] = True,
    client_id: Annotated[
        str, typer.Option(help="Stable broker client id of this ingest.")
    ] = "swf-monitor-ingest",
    migrate: Annotated[bool, typer.Option(help="Apply migrations first.")] = True,
) -> None:
    """Record every testbed message from the broker into the database, exactly once."""
    _django()
    from django.core.management import call_command

    args: list[str] = ["--client-id", client_id]
    for dest in destination or []:
        args += ["--destination", dest]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    if flush_ms is not None:
        args += ["--flush-ms", str(flush_ms)]
    if not durable:
        args.append("--no-durable")
    if not migrate:
        args.append("--no-migrate")
    call_command("ingest", *args)


@monitor_app.command("migrate")
def migrate_cmd() -> None:
    """Create or update the monitor's database tables."""
    _django()
    from swf_testbed.monitor.db import describe, migrate

    migrate(verbosity=1)
    _echo_err(f"database ready: {describe()}")


@monitor_app.command()
def token(
    username: Annotated[str, typer.Argument(help="The user (created if needed).")],
    regenerate: Annotated[bool, typer.Option(help="Replace an existing token.")] = False,
) -> None:
    """Print USER's API token (for SWF_API_TOKEN), creating the user and token if needed."""
    _django()
    from django.core.management import call_command

    from swf_testbed.monitor.db import migrate

    migrate()
    call_command("token", username, *(["--regenerate"] if regenerate else []))


@monitor_app.command()
def user(
    username: Annotated[str, typer.Argument(help="The login's user name.")],
    staff: Annotated[
        bool, typer.Option("--staff", help="Also let it use the Django admin.")
    ] = False,
    password_file: Annotated[
        Path | None,
        typer.Option(help="Read the password from this file (its first line) instead of a prompt."),
    ] = None,
) -> None:
    """Create a login for a person (or set its password); log in at /login/ on the monitor."""
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            _echo_err(f"error: --password-file {password_file}: cannot read: {exc}")
            raise typer.Exit(2) from None
        password = text.splitlines()[0] if text else ""
    else:
        password = typer.prompt(
            f"password for {username}", hide_input=True, confirmation_prompt=True
        )
    _django()
    from swf_testbed.monitor.api.accounts import LoginError, set_login
    from swf_testbed.monitor.db import migrate

    migrate()
    try:
        login, created = set_login(username, password, staff=staff)
    except LoginError as exc:
        _echo_err(f"error: {exc}")
        raise typer.Exit(2) from None
    role = " (staff: may also use the admin)" if login.is_staff else ""
    from swf_testbed.settings import get_settings

    typer.echo(
        f"{'created login' if created else 'password set for'} {username}{role}; "
        f"log in at {get_settings().monitor.monitor_url.rstrip('/')}/login/"
    )


@monitor_app.command()
def prune(
    older_than: Annotated[
        float,
        typer.Option(
            help="Delete messages and logs received more than DAYS ago (> 0).", metavar="DAYS"
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Only count what would be deleted.")
    ] = False,
    batch_size: Annotated[int, typer.Option(help="Rows per transaction.", min=1)] = 5000,
) -> None:
    """Retention: delete old messages and logs in batches, keeping the facet counts right."""
    if not older_than > 0:
        _echo_err(f"--older-than must be more than 0 days (got {older_than})")
        raise typer.Exit(2)
    _django()
    from django.core.management import call_command

    args: list[str] = ["--older-than", str(older_than), "--batch-size", str(batch_size)]
    if dry_run:
        args.append("--dry-run")
    call_command("prune_messages", *args)


@monitor_app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def manage(ctx: typer.Context) -> None:
    """Django's manage.py for the monitor, e.g. ``swf-testbed monitor manage createsuperuser``."""
    _django()
    from django.core.management import execute_from_command_line

    execute_from_command_line(["swf-testbed monitor manage", *ctx.args])

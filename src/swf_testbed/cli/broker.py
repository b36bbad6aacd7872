"""``swf-testbed broker``: the embedded STOMP broker (also ``python -m swf_testbed.broker``)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from swf_testbed.cli.common import err_console


def default_data_dir(port: int) -> Path | None:
    """``$SWF_HOME/broker/<port>``: the journal of the broker on that port; None for port 0.

    Per port, because the journal belongs to the broker that clients find at
    that address: the testbed's supervisord restarts it on the same port, so it
    finds its journal again, and two brokers of one SWF_HOME (two testbeds, or
    tests) never share one. A broker on a port picked at random (0) cannot be
    found again after a restart: it keeps nothing.
    """
    if port == 0:
        return None
    from swf_testbed.settings import default_home

    home = os.environ.get("SWF_HOME")
    base = Path(home).expanduser() if home else default_home()
    return base / "broker" / str(port)


def _print_stats(host: str, port: int, login: str | None, passcode: str | None) -> None:
    """``--stats``: one STOMP request to the broker's statistics destination, printed as JSON."""
    from swf_testbed.broker.admin import StatsError, request_stats

    try:
        figures = request_stats(host, port, login, passcode)
    except StatsError as exc:
        err_console.print(f"[red]cannot get the statistics of {host}:{port}:[/red] {exc}")
        raise typer.Exit(1) from None
    typer.echo(json.dumps(figures, indent=2, sort_keys=True))


def broker(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="STOMP port; 0 picks a free one.", min=0, max=65535)
    ] = 61613,
    login: Annotated[
        str | None,
        typer.Option(help="Require this login (with --passcode).", envvar="SWF_BROKER_LOGIN"),
    ] = None,
    passcode: Annotated[
        str | None,
        typer.Option(
            help="Require this passcode.", envvar="SWF_BROKER_PASSCODE", show_default=False
        ),
    ] = None,
    tls_cert: Annotated[
        Path | None,
        typer.Option(
            help="Serve STOMP over TLS with this certificate (PEM).", exists=True, dir_okay=False
        ),
    ] = None,
    tls_key: Annotated[
        Path | None,
        typer.Option(help="The certificate's private key (PEM).", exists=True, dir_okay=False),
    ] = None,
    tls_client_ca: Annotated[
        Path | None,
        typer.Option(
            help="Require client certificates signed by this CA.", exists=True, dir_okay=False
        ),
    ] = None,
    max_frame_size: Annotated[
        int, typer.Option(help="Largest message body accepted, bytes.", min=1)
    ] = 16 * 2**20,
    max_header_size: Annotated[
        int, typer.Option(help="Largest command line + headers, bytes.", min=64)
    ] = 64 * 2**10,
    max_headers: Annotated[int, typer.Option(help="Most headers in one frame.", min=1)] = 1000,
    max_pending_bytes: Annotated[
        int,
        typer.Option(
            help="Topic data one connection may have waiting before it is closed "
            "as a slow consumer.",
            min=1,
        ),
    ] = 64 * 2**20,
    slow_consumer_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds producers wait for a backed-up topic subscriber before it is "
            "closed; 0 = forever.",
            min=0,
        ),
    ] = 10.0,
    durable_max_messages: Annotated[
        int,
        typer.Option(
            help="Messages a durable subscription's backlog keeps in memory; past it "
            "persistent ones wait in the journal, others are dropped, the oldest first (logged).",
            min=1,
        ),
    ] = 1_000_000,
    durable_max_bytes: Annotated[
        int,
        typer.Option(
            help="Bytes a durable subscription's backlog keeps in memory; past it "
            "persistent ones wait in the journal, others are dropped, the oldest first (logged).",
            min=1,
        ),
    ] = 512 * 2**20,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Journal directory: persistent:true messages of queues and durable "
            "subscriptions are "
            "synced there before the send's RECEIPT and replayed on start. Default: "
            "$SWF_HOME/broker/<port> (memory only with --port 0).",
            file_okay=False,
        ),
    ] = None,
    memory_only: Annotated[
        bool,
        typer.Option(
            "--memory-only",
            help="No journal: keep everything in memory only (lost when the broker stops).",
        ),
    ] = False,
    queue_memory_limit: Annotated[
        int,
        typer.Option(
            help="Bytes of messages one queue holds in memory; past it persistent messages wait in "
            "the journal only and others are refused with an ERROR.",
            min=1,
        ),
    ] = 64 * 2**20,
    stats: Annotated[
        bool,
        typer.Option(
            "--stats",
            help="Do not serve: ask the broker at --host/--port for its statistics "
            "(memory, journal, "
            "depth per destination) and print them as JSON.",
        ),
    ] = False,
    mirror_queues: Annotated[
        bool,
        typer.Option(
            help="Copy every queue message to the topic VirtualTopic.Mirror.<queue> "
            "(the monitor reads queue traffic "
            "there; ActiveMQ's useMirroredQueues)."
        ),
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics (connections, messages per destination, "
            "queue depth, consumers, "
            "redeliveries, memory) on this port at /metrics; 0 picks a free one.",
            min=0,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics port.")] = "127.0.0.1",
) -> None:
    """Run the embedded STOMP broker until SIGTERM or Ctrl+C (one machine; production: ActiveMQ)."""
    from swf_testbed.broker.frames import Limits
    from swf_testbed.broker.server import run, server_tls_context
    from swf_testbed.broker.store import JournalError

    if stats:
        _print_stats(host, port, login, passcode)
        return
    if (login is None) != (passcode is None):
        err_console.print("[red]--login and --passcode go together[/red]")
        raise typer.Exit(2)
    if (tls_cert is None) != (tls_key is None) or (tls_client_ca and not tls_cert):
        err_console.print(
            "[red]--tls-cert and --tls-key go together (and --tls-client-ca needs them)[/red]"
        )
        raise typer.Exit(2)
    try:
        limits = Limits(max_frame_size, max_header_size, max_headers)
        ssl_context = (
            server_tls_context(
                str(tls_cert), str(tls_key), str(tls_client_ca) if tls_client_ca else None
            )
            if tls_cert and tls_key
            else None
        )
    except (ValueError, OSError) as exc:
        err_console.print(f"[red]bad broker option:[/red] {exc}")
        raise typer.Exit(2) from None
    logging.getLogger("swf_testbed.broker").setLevel(logging.INFO)
    if memory_only:
        data_dir = None
    elif data_dir is None:
        data_dir = default_data_dir(port)
    try:
        run(
            host,
            port,
            login,
            passcode,
            limits=limits,
            max_pending_bytes=max_pending_bytes,
            slow_consumer_timeout=slow_consumer_timeout,
            ssl_context=ssl_context,
            durable_max_messages=durable_max_messages,
            durable_max_bytes=durable_max_bytes,
            mirror_queues=mirror_queues,
            data_dir=data_dir,
            queue_memory_limit=queue_memory_limit,
            metrics=(metrics_host, metrics_port) if metrics_port is not None else None,
        )
    except JournalError as exc:
        err_console.print(f"[red]cannot open the journal:[/red] {exc.strerror or exc}")
        raise typer.Exit(1) from None
    except OSError as exc:
        err_console.print(f"[red]cannot listen on {host}:{port}:[/red] {exc}")
        raise typer.Exit(1) from None

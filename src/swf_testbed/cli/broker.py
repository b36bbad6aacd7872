"""``swf-testbed broker``: the embedded STOMP broker (also ``python -m swf_testbed.broker``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from swf_testbed.cli.common import err_console


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
            help="Topic data one connection may have waiting before it is closed as a slow consumer.",
            min=1,
        ),
    ] = 64 * 2**20,
    slow_consumer_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds producers wait for a backed-up topic subscriber before it is closed; 0 = forever.",
            min=0,
        ),
    ] = 10.0,
    durable_max_messages: Annotated[
        int,
        typer.Option(
            help="Messages a disconnected durable subscription keeps; past it the oldest are dropped (logged).",
            min=1,
        ),
    ] = 1_000_000,
    durable_max_bytes: Annotated[
        int,
        typer.Option(
            help="Bytes a disconnected durable subscription keeps; past it the oldest are dropped (logged).",
            min=1,
        ),
    ] = 512 * 2**20,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep persistent:true queue messages in a journal in this directory (synced before the send's "
            "RECEIPT, replayed on start); without it the broker keeps everything in memory only.",
            file_okay=False,
        ),
    ] = None,
    mirror_queues: Annotated[
        bool,
        typer.Option(
            help="Copy every queue message to the topic VirtualTopic.Mirror.<queue> (the monitor reads queue traffic "
            "there; ActiveMQ's useMirroredQueues)."
        ),
    ] = True,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            help="Serve Prometheus metrics (connections, messages per destination, queue depth, consumers, "
            "redeliveries, memory) on this port at /metrics; 0 picks a free one.",
            min=0,
            max=65535,
        ),
    ] = None,
    metrics_host: Annotated[str, typer.Option(help="Address of the metrics port.")] = "127.0.0.1",
) -> None:
    """Run the embedded STOMP broker until SIGTERM or Ctrl+C (for one machine; ActiveMQ in production)."""
    from swf_testbed.broker.frames import Limits
    from swf_testbed.broker.server import run, server_tls_context

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
            metrics=(metrics_host, metrics_port) if metrics_port is not None else None,
        )
    except OSError as exc:
        err_console.print(f"[red]cannot listen on {host}:{port}:[/red] {exc}")
        raise typer.Exit(1) from None

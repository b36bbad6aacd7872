"""``manage.py ingest``: run the monitor's ingest (broker → database) until stopped."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from swf_testbed.monitor.api.ingest import DEFAULT_CLIENT_ID, Ingestor, destinations_for
from swf_testbed.mq.destinations import Destination
from swf_testbed.settings import get_settings


class Command(BaseCommand):
    help = "Record every testbed message from the broker into the database, exactly once."

    def add_arguments(self, parser: CommandParser) -> None:
        mon = get_settings().monitor
        parser.add_argument(
            "--destination",
            action="append",
            default=[],
            help="also follow this destination, e.g. /queue/x (repeatable)",
        )
        parser.add_argument("--batch-size", type=int, default=mon.ingest_batch_size)
        parser.add_argument("--flush-ms", type=int, default=mon.ingest_flush_ms)
        parser.add_argument(
            "--client-id",
            default=DEFAULT_CLIENT_ID,
            help="stable broker client id (durable subscriptions belong to it)",
        )
        parser.add_argument(
            "--no-durable", action="store_true", help="plain (non-durable) topic subscriptions"
        )
        parser.add_argument(
            "--no-migrate", action="store_true", help="do not apply migrations first"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings = get_settings()
        if not options["no_migrate"]:
            from swf_testbed.monitor.db import migrate

            migrate()
        extra = [Destination.parse(d) for d in options["destination"]]
        ingestor = Ingestor(
            settings.broker,
            destinations_for(extra),
            batch_size=max(1, options["batch_size"]),
            flush_ms=max(1, options["flush_ms"]),
            durable=settings.monitor.ingest_durable and not options["no_durable"],
            client_id=options["client_id"],
            db_timeout_s=settings.monitor.db_timeout_s,
        )

        def _stop(signum: int, frame: object) -> None:
            ingestor.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _stop)
        if settings.monitor.ingest_metrics_port:
            from prometheus_client import start_http_server

            from swf_testbed.monitor.metrics import INGEST_REGISTRY

            start_http_server(
                settings.monitor.ingest_metrics_port,
                settings.monitor.ingest_metrics_host,
                registry=INGEST_REGISTRY,
            )
            self.stderr.write(
                f"ingest metrics on http://{settings.monitor.ingest_metrics_host}:"
                f"{settings.monitor.ingest_metrics_port}/metrics"
            )
        ingestor.start(wait=None)
        self.stderr.write(f"ingest running (broker {settings.broker.host}:{settings.broker.port})")
        ingestor.run()

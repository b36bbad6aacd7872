"""``manage.py prune_messages --older-than DAYS``: retention for the message and log tables.

Deletes :class:`WorkflowMessage` rows received, and :class:`AppLog` rows
logged, more than DAYS ago. It works in batches of ``--batch-size`` rows, one
short transaction each, so a huge table is never locked in one transaction and
the ingest keeps writing meanwhile.

Messages are deleted with plain SQL ``DELETE`` statements, not through the
ORM's per-row ``post_delete`` signal (``signals.py``), which would load every
row, body included, and issue one count update per message. Instead each
batch takes its messages off the facet counts with one grouped decrement per
facet key, in the same transaction as the delete, so the counts stay equal to
a fresh recount (``rebuild_message_counts``); count rows left at zero are
removed at the end.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection, transaction
from django.db.models import Count, F
from django.utils import timezone

from swf_testbed.monitor.api.models import AppLog, MessageCount, WorkflowMessage

DEFAULT_BATCH_SIZE = 5000
_CHUNK = 500  # ids per SQL statement: well under SQLite's bound-parameter limit
_KEY_FIELDS = ("namespace_id", "execution_id", "run_id", "msg_type", "sender", "is_valid")


@dataclass
class PruneResult:
    messages: int = 0
    logs: int = 0


def cutoff_for(days: float) -> datetime:
    """The received time before which rows go; refuses an age that is not positive."""
    if not days > 0:
        raise ValueError(f"the age must be more than 0 days (got {days})")
    return timezone.now() - timedelta(days=days)


def prune(
    cutoff: datetime, *, batch_size: int = DEFAULT_BATCH_SIZE, dry_run: bool = False
) -> PruneResult:
    """Delete messages received and logs logged before ``cutoff``; returns how many (or would be,
    dry run).
    """
    if batch_size < 1:
        raise ValueError(f"the batch size must be at least 1 (got {batch_size})")
    old_messages = WorkflowMessage.objects.filter(received_at__lt=cutoff)
    old_logs = AppLog.objects.filter(timestamp__lt=cutoff)
    if dry_run:
        return PruneResult(messages=old_messages.count(), logs=old_logs.count())
    result = PruneResult()
    while True:
        with transaction.atomic():
            ids = list(
                old_messages.order_by("received_at", "id").values_list("id", flat=True)[:batch_size]
            )
            if not ids:
                break
            for chunk in _chunks(ids):
                _uncount(chunk)
                result.messages += _delete_messages(chunk)
    MessageCount.objects.filter(count__lte=0).delete()
    while True:
        with transaction.atomic():
            ids = list(
                old_logs.order_by("timestamp", "id").values_list("id", flat=True)[:batch_size]
            )
            if not ids:
                break
            for chunk in _chunks(ids):
                result.logs += AppLog.objects.filter(id__in=chunk).delete()[0]
    return result


def _chunks(ids: list[int]) -> list[list[int]]:
    return [ids[i : i + _CHUNK] for i in range(0, len(ids), _CHUNK)]


def _uncount(ids: list[int]) -> None:
    """Take these messages off the facet counts: one update per facet key (the keys of
    ``facets.key_of``).
    """
    groups = (
        WorkflowMessage.objects.filter(id__in=ids)
        .order_by()
        .values(*_KEY_FIELDS)
        .annotate(n=Count("id"))
    )
    for group in groups:
        MessageCount.objects.filter(
            namespace=group["namespace_id"] or "",
            execution_id=group["execution_id"] or "",
            run_id=MessageCount.NO_RUN if group["run_id"] is None else group["run_id"],
            msg_type=group["msg_type"] or "",
            sender=group["sender"] or "",
            is_valid=bool(group["is_valid"]),
        ).update(count=F("count") - group["n"])


def _delete_messages(ids: list[int]) -> int:
    """One ``DELETE`` for these ids, bypassing the per-row signal (the counts were adjusted by
    :func:`_uncount`).
    """
    table = connection.ops.quote_name(WorkflowMessage._meta.db_table)
    column = WorkflowMessage._meta.pk.column if WorkflowMessage._meta.pk else None
    assert column is not None  # a concrete table with its own primary key column
    pk = connection.ops.quote_name(column)
    placeholders = ",".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"DELETE FROM {table} WHERE {pk} IN ({placeholders})", ids
        )  # table, column and placeholders only; ids are bound
        return int(cursor.rowcount)


class Command(BaseCommand):
    help = (
        "Delete messages and application logs older than --older-than DAYS, in batches "
        "(facet counts kept)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than",
            type=float,
            required=True,
            metavar="DAYS",
            help="delete rows received more than DAYS ago (fractions allowed; must be > 0)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            help=f"rows per transaction (default {DEFAULT_BATCH_SIZE})",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="only count what would be deleted"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            cutoff = cutoff_for(options["older_than"])
            result = prune(cutoff, batch_size=options["batch_size"], dry_run=options["dry_run"])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        verb = "would remove" if options["dry_run"] else "removed"
        self.stdout.write(
            f"{verb} {result.messages} messages and {result.logs} logs "
            f"received before {cutoff:%Y-%m-%d %H:%M:%S} UTC"
        )

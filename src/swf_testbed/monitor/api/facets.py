"""Message counts by facet, from the :class:`~swf_testbed.monitor.api.models.MessageCount` table.

Counting millions of messages per page view is too slow; the recorder keeps a
small table of counts per (namespace, execution_id, run_id, msg_type, sender,
is_valid) instead, and totals and facet counts are sums over it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.db.models import Count, Q, Sum, Window

from swf_testbed.monitor.api.fastinsert import increment_rows, insert_objects
from swf_testbed.monitor.api.models import MessageCount, WorkflowMessage

if TYPE_CHECKING:  # recording imports this module
    from swf_testbed.monitor.api.recording import MessageRow

FACETS = ("namespace", "execution_id", "run_id", "msg_type", "sender", "is_valid")

Key = tuple[str, str, int, str, str, bool]


def key_of(msg: MessageRow) -> Key:
    return (
        msg.namespace_id or "",
        msg.execution_id or "",
        MessageCount.NO_RUN if msg.run_id is None else int(msg.run_id),
        msg.msg_type or "",
        msg.sender or "",
        bool(msg.is_valid),
    )


def _key_fields(key: Key) -> dict[str, Any]:
    return dict(zip(FACETS, key, strict=True))


def add_counts(messages: Iterable[MessageRow], sign: int = 1) -> None:
    """Add (or, with ``sign=-1``, remove) messages to the counts. Call inside the recording
    transaction.

    One read of the counts the batch touches, one ``executemany`` of relative
    increments and one insert of the keys not counted yet: a batch has tens of
    keys, and an ORM update per key cost more than recording the messages.
    """
    counts = Counter(key_of(msg) for msg in messages)
    if not counts:
        return
    rows = MessageCount.objects.filter(
        execution_id__in={key[1] for key in counts},
        msg_type__in={key[3] for key in counts},
    ).values_list("pk", *FACETS)
    known = {tuple(row[1:]): row[0] for row in rows}
    increment_rows(
        MessageCount, "count", ((known[key], sign * n) for key, n in counts.items() if key in known)
    )
    if sign > 0:
        new = [
            MessageCount(count=n, **_key_fields(key))
            for key, n in counts.items()
            if key not in known
        ]
        insert_objects(new)


def rebuild_counts() -> int:
    """Recount everything from the messages table; returns the number of facet rows."""
    with transaction.atomic():
        MessageCount.objects.all().delete()
        rows = (
            WorkflowMessage.objects.order_by()
            .values("namespace_id", "execution_id", "run_id", "msg_type", "sender", "is_valid")
            .annotate(n=Count("id"))
        )
        objs = [
            MessageCount(
                namespace=r["namespace_id"] or "",
                execution_id=r["execution_id"] or "",
                run_id=MessageCount.NO_RUN if r["run_id"] is None else r["run_id"],
                msg_type=r["msg_type"] or "",
                sender=r["sender"] or "",
                is_valid=r["is_valid"],
                count=r["n"],
            )
            for r in rows
        ]
        MessageCount.objects.bulk_create(objs, batch_size=1000)
    return len(objs)


def _q(filters: dict[str, Any], exclude: str | None = None) -> Q:
    q = Q()
    for name, value in filters.items():
        if name == exclude or value in (None, ""):
            continue
        if name == "exclude_type":
            q &= ~Q(msg_type=str(value))
        elif name == "run_id":
            q &= Q(run_id=int(value))
        elif name == "is_valid":
            q &= Q(is_valid=bool(value))
        else:
            q &= Q(**{name: str(value)})
    return q


def count_from_rollup(filters: dict[str, Any]) -> int:
    """Number of messages matching ``filters`` (facet values only)."""
    total = MessageCount.objects.filter(_q(filters)).aggregate(total=Sum("count"))["total"]
    return int(total or 0)


@dataclass(frozen=True)
class Facet:
    """One facet under the *other* active filters: its top values and how many values it has."""

    values: list[tuple[Any, int]]
    """The values with the most messages (most first), with their counts."""
    size: int
    """How many distinct values have messages, listed or not."""


def count_facets(filters: dict[str, Any], limit: int = 25) -> dict[str, Facet]:
    """For each facet, its top ``limit`` values and their counts, and how many values it has, under
    the *other* active filters: one query per facet.

    The number of values is a window count over the grouped rows (``COUNT(*) OVER ()``, computed
    before the ``LIMIT``), so the same query that lists the top values also sizes the facet.
    """
    result: dict[str, Facet] = {}
    for facet in FACETS:
        rows = (
            MessageCount.objects.filter(_q(filters, exclude=facet))
            .values(facet)
            .annotate(n=Sum("count"))
            .filter(n__gt=0)
            .annotate(size=Window(Count("*")))
            .order_by("-n", facet)[:limit]
        )
        values: list[tuple[Any, int]] = []
        size = 0
        for row in rows:
            value = row[facet]
            if facet == "run_id" and value == MessageCount.NO_RUN:
                value = None
            values.append((value, int(row["n"])))
            size = int(row["size"])
        result[facet] = Facet(values, size)
    return result


def facet_counts(filters: dict[str, Any], limit: int = 25) -> dict[str, list[tuple[Any, int]]]:
    """For each facet, the top values and their counts under the *other* active filters."""
    return {name: facet.values for name, facet in count_facets(filters, limit).items()}

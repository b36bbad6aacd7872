"""Recording messages: every body becomes one ``WorkflowMessage`` row, exactly once.

:func:`record` is what the ingest calls for each batch (and what the
benchmarks seed with). In one transaction it stores the messages not seen
before (idempotent on ``msg_id``), updates the facet counts, and projects each
new message into the bookkeeping tables. A body that is not a valid message is
stored too, with the reason; nothing is dropped.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Protocol

from django.db import transaction
from django.utils.dateparse import parse_datetime

from swf_testbed.messages import (
    MAX_BODY_BYTES,
    NAME_PATTERN,
    Dialect,
    Message,
    MessageError,
    body_identity,
    is_v28,
    parse_received,
    peek_fields,
)
from swf_testbed.monitor.api import facets, projections
from swf_testbed.monitor.api.fastinsert import insert_rows
from swf_testbed.monitor.api.models import Namespace, WorkflowExecution, WorkflowMessage
from swf_testbed.settings import get_settings

log = logging.getLogger(__name__)

ORIGINAL_DESTINATION_HEADER = "swf-original-destination"
MAX_STORED_BODY = MAX_BODY_BYTES
_BIGINT_MAX = 2**63 - 1
_NAME = re.compile(NAME_PATTERN)


@dataclass(slots=True)
class Incoming:
    """One body as received from the broker."""

    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    destination: str = ""
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class RecordResult:
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    projection_errors: int = 0


def _clean(text: str, limit: int) -> str:
    """Text the database accepts: no NUL (PostgreSQL refuses it), at most ``limit`` characters."""
    text = text.replace("\x00", "\ufffd")
    return text[:limit]


def _str_field(data: dict[str, Any], key: str, limit: int) -> str:
    value = data.get(key)
    return _clean(value, limit) if isinstance(value, str) else ""


def _run_id(value: Any) -> int | None:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)  # the v28 dialect sends run numbers as strings of digits
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _BIGINT_MAX:
        return None
    return value


def _time(value: Any, naive_zone: tzinfo | None = None) -> datetime | None:
    """An ISO time as UTC; a naive one only when ``naive_zone`` says
    where it was read (v28 bodies).
    """
    if not isinstance(value, str):
        return None
    try:
        parsed = parse_datetime(value)
    except ValueError:
        return None
    if parsed is not None and parsed.tzinfo is None and naive_zone is not None:
        parsed = parsed.replace(tzinfo=naive_zone)
    if parsed is None or parsed.tzinfo is None:
        return None
    return parsed.astimezone(UTC)


def _synthetic_id(incoming: Incoming, text: str) -> str:
    """An id for a body without a usable ``msg_id``: stable across redeliveries."""
    return body_identity(incoming.headers.get("message-id", ""), text)


class MessageRow(Protocol):
    """What the facet counts and the projections read of a recorded message.

    Both a :class:`Row` (before it is inserted) and a ``WorkflowMessage`` have it.
    """

    @property
    def msg_id(self) -> str: ...
    @property
    def msg_type(self) -> str: ...
    @property
    def namespace_id(self) -> str | None: ...
    @property
    def execution_id(self) -> str: ...
    @property
    def run_id(self) -> int | None: ...
    @property
    def sender(self) -> str: ...
    @property
    def is_valid(self) -> bool: ...


@dataclass(slots=True)
class Row:
    """The values of one ``WorkflowMessage`` row, before it is inserted (cheaper than a model
    instance).
    """

    msg_id: str = ""
    msg_type: str = ""
    namespace_id: str | None = None
    execution_id: str = ""
    run_id: int | None = None
    sender: str = ""
    recipient: str = ""
    destination: str = ""
    sent_at: datetime | None = None
    received_at: datetime | None = None
    schema_version: int | None = None
    is_valid: bool = True
    error_reason: str = ""
    validation_error: str = ""
    projection_error: str = ""
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    dialect: str = ""


_ROW_FIELDS = tuple(Row.__dataclass_fields__)
"""The columns inserted, by attribute name (``namespace_id`` is the namespace foreign key)."""


def build_row(incoming: Incoming) -> tuple[Row, Message | None]:
    """The row for one body, and its typed message when it is valid."""
    raw = incoming.body
    text = _clean(raw.decode("utf-8", errors="replace"), MAX_STORED_BODY)
    headers = {_clean(str(k), 200): _clean(str(v), 2000) for k, v in incoming.headers.items()}
    destination = headers.get(ORIGINAL_DESTINATION_HEADER) or incoming.destination
    row = Row(
        destination=_clean(destination, 255),
        received_at=incoming.received_at,
        body=text,
        headers=headers,
    )
    zone = get_settings().legacy_zone
    try:
        msg = parse_received(
            raw, zone=zone, broker_message_id=incoming.headers.get("message-id", "")
        )
    except MessageError as exc:
        data = peek_fields(text) if len(raw) <= MAX_BODY_BYTES else {}
        full = _json_object(text) if len(raw) <= MAX_BODY_BYTES else {}
        legacy = bool(full) and is_v28(full)
        if full:
            row.dialect = Dialect.EPIC_V28.value if legacy else Dialect.SWF.value
        row.is_valid = False
        row.error_reason = exc.reason
        row.validation_error = _clean(exc.detail, 10_000)
        if len(raw) > MAX_STORED_BODY:
            row.validation_error += f" (body stored truncated to {MAX_STORED_BODY} characters)"
        msg_id = _str_field(data, "msg_id", 200)
        row.msg_id = msg_id or _synthetic_id(incoming, text)
        row.msg_type = _str_field(data, "msg_type", 64)
        namespace = _str_field(data, "namespace", 128)
        row.namespace_id = namespace if namespace and _NAME.match(namespace) else None
        row.sender = _str_field(data, "sender", 128)
        row.execution_id = _str_field(data, "execution_id", 200)
        row.run_id = _run_id(data.get("run_id"))
        row.sent_at = _time(data.get("timestamp"), zone if legacy else None)
        row.recipient = _str_field(full, "recipient", 200)
        return row, None
    row.msg_id = _clean(msg.msg_id, 200)
    row.msg_type = msg.msg_type
    row.namespace_id = (
        msg.namespace
    )  # None for a v28 slice: derived from its execution (see record)
    row.sender = _clean(msg.sender or "", 128)
    row.execution_id = _clean(msg.execution_id or "", 200)
    row.run_id = msg.run_id if msg.run_id is not None and msg.run_id <= _BIGINT_MAX else None
    row.sent_at = msg.timestamp
    row.schema_version = min(msg.schema_version, 32767) if msg.schema_version is not None else None
    row.dialect = msg.dialect
    return row, msg


def _derive_namespaces(pairs: list[tuple[Row, Message | None]]) -> None:
    """Give valid messages that name no namespace (v28 slices) their execution's namespace, where
    it is known.

    Known from another message of the batch, else from the execution's row; otherwise it stays
    empty.
    """
    missing = [
        (row, msg)
        for row, msg in pairs
        if msg is not None and not row.namespace_id and msg.execution_id
    ]
    if not missing:
        return
    known: dict[str, str] = {
        msg.execution_id: msg.namespace
        for _, msg in pairs
        if msg is not None and msg.namespace and msg.execution_id
    }
    wanted = {msg.execution_id for _, msg in missing if msg.execution_id not in known}
    if wanted:
        for execution_id, namespace_key in WorkflowExecution.objects.filter(
            execution_id__in=wanted, namespace__isnull=False
        ).values_list("execution_id", "namespace"):  # the namespace's key is its name
            known[execution_id] = str(namespace_key)
    for index, (row, msg) in enumerate(pairs):
        found = known.get(msg.execution_id or "") if msg is not None else None
        if msg is not None and not row.namespace_id and found:
            row.namespace_id = found
            pairs[index] = (row, msg.model_copy(update={"namespace": row.namespace_id}))


def _insert(rows: list[Row]) -> None:
    """Insert the rows with one prepared statement (``executemany``)."""
    fields: list[Any] = [  # the concrete columns of _ROW_FIELDS (Field, never a relation)
        WorkflowMessage._meta.get_field(
            name.removesuffix("_id") if name == "namespace_id" else name
        )
        for name in _ROW_FIELDS
    ]
    insert_rows(
        WorkflowMessage, fields, ([getattr(row, name) for name in _ROW_FIELDS] for row in rows)
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: arrays / objects nested too deeply
        return {}
    return data if isinstance(data, dict) else {}


def record(batch: list[Incoming]) -> RecordResult:
    """Store the batch in one transaction; messages already stored are skipped.

    Raises database errors (the caller retries the whole batch: it is idempotent).
    """
    result = RecordResult()
    built: dict[str, tuple[Row, Message | None]] = {}
    for incoming in batch:
        row, msg = build_row(incoming)
        if row.msg_id in built:
            result.duplicates += 1
            continue
        built[row.msg_id] = (row, msg)
    if not built:
        return result
    with transaction.atomic():
        existing = set(
            WorkflowMessage.objects.filter(msg_id__in=list(built)).values_list("msg_id", flat=True)
        )
        new = [pair for msg_id, pair in built.items() if msg_id not in existing]
        result.duplicates += len(existing)
        if not new:
            return result
        _derive_namespaces(new)
        Namespace.ensure({row.namespace_id for row, _ in new if row.namespace_id})
        rows = [row for row, _ in new]
        _insert(rows)
        facets.add_counts(rows)
        result.stored = len(rows)
        result.invalid = sum(1 for row in rows if not row.is_valid)
        failed = projections.project_batch(new)
        if failed:
            result.projection_errors = len(failed)
            for failed_row, error in failed:
                WorkflowMessage.objects.filter(msg_id=failed_row.msg_id).update(
                    projection_error=_clean(error, 10_000)
                )
    return result


def record_refused(incoming: Incoming, reason: str) -> RecordResult:
    """Store, in its own transaction, a message the database refused as an invalid one.

    The body is kept as its escaped text (the refusal may be about a value in it); no
    projection runs. Raises if even this cannot be stored: the caller then does not ack it.
    """
    row, _ = build_row(incoming)
    row.is_valid = False
    row.error_reason = _clean(reason, 500)
    row.validation_error = _clean(reason, 10_000)
    row.body = _clean(incoming.body.decode("utf-8", "backslashreplace"), MAX_STORED_BODY)
    result = RecordResult()
    with transaction.atomic():
        if WorkflowMessage.objects.filter(msg_id=row.msg_id).exists():
            result.duplicates = 1
            return result
        if row.namespace_id:  # the failed batch's namespace rows were rolled back with it
            Namespace.ensure({row.namespace_id})
        _insert([row])
        facets.add_counts([row])
    result.stored = result.invalid = 1
    return result

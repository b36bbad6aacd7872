"""Export of an execution to a JSON-lines file, and its import into another monitor.

The file: line 1 is a header ``{"format": "swf-testbed-export", "version": 1,
"execution": {...}, "messages": N}`` (the execution's row, its workflow
definition and merged config); then N lines, one per message in the order the
monitor recorded them: ``{"msg_id", "destination", "received_at", "headers",
"body"}``, the body as received (text). Import records the messages the way
the ingest does (idempotent on ``msg_id``, projections included), so importing
a file twice changes nothing the second time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

FORMAT = "swf-testbed-export"
VERSION = 1
_EXECUTION_FIELDS = (
    "execution_id",
    "namespace_id",
    "status",
    "parameter_values",
    "performance_metrics",
    "executed_by",
    "start_time",
    "end_time",
    "error",
)
_DEFINITION_FIELDS = (
    "workflow_name",
    "version",
    "workflow_type",
    "definition",
    "parameter_values",
    "created_by",
)


class ExportFileError(ValueError):
    """A file that is not a whole, unchanged export; the message names the line."""


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def export_execution(execution_id: str, out: IO[str]) -> int:
    """Write the execution's export to ``out``; returns the number of messages."""
    from swf_testbed.monitor.api.models import WorkflowExecution, WorkflowMessage

    execution = (
        WorkflowExecution.objects.select_related("workflow_definition")
        .filter(execution_id=execution_id)
        .first()
    )
    if execution is None:
        raise LookupError(f"no execution {execution_id!r} in this monitor")
    row = {f: getattr(execution, f) for f in _EXECUTION_FIELDS}
    row["namespace"] = row.pop("namespace_id")
    row["start_time"], row["end_time"] = _iso(execution.start_time), _iso(execution.end_time)
    definition = execution.workflow_definition
    row["workflow_definition"] = (
        {f: getattr(definition, f) for f in _DEFINITION_FIELDS} if definition else None
    )
    messages = WorkflowMessage.objects.filter(execution_id=execution_id).order_by("id")
    count = messages.count()
    out.write(
        json.dumps(
            {"format": FORMAT, "version": VERSION, "execution": row, "messages": count},
            separators=(",", ":"),
        )
        + "\n"
    )
    written = 0
    for msg in messages.only("msg_id", "destination", "received_at", "headers", "body").iterator(
        chunk_size=2000
    ):
        out.write(
            json.dumps(
                {
                    "msg_id": msg.msg_id,
                    "destination": msg.destination,
                    "received_at": _iso(msg.received_at),
                    "headers": msg.headers,
                    "body": msg.body,
                },
                separators=(",", ":"),
            )
            + "\n"
        )
        written += 1
    return written


@dataclass
class ExportFile:
    header: dict[str, Any]
    messages: list[dict[str, Any]]

    @property
    def execution(self) -> dict[str, Any]:
        return dict(self.header["execution"])


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="strict") as handle:
        try:
            yield from enumerate(handle, 1)
        except UnicodeDecodeError as exc:
            raise ExportFileError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _json_line(line: str, where: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise ExportFileError(f"{where}: not JSON ({exc.msg} at column {exc.colno})") from None
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise ExportFileError(f"{where}: not usable JSON ({exc})") from None


def read_export(path: Path) -> ExportFile:
    """Parse and check the whole file before anything is written (errors name the line)."""
    from django.utils.dateparse import parse_datetime

    header: dict[str, Any] | None = None
    messages: list[dict[str, Any]] = []
    for number, line in _lines(path):
        where = f"{path}:{number}"
        if not line.endswith("\n"):
            raise ExportFileError(
                f"{where}: the line is cut short (no end of line): the file is truncated"
            )
        data = _json_line(line, where)
        if not isinstance(data, dict):
            raise ExportFileError(f"{where}: a JSON object was expected")
        if header is None:
            if data.get("format") != FORMAT or data.get("version") != VERSION:
                raise ExportFileError(f"{where}: not a {FORMAT} version {VERSION} header")
            execution = data.get("execution")
            if (
                not isinstance(execution, dict)
                or not isinstance(execution.get("execution_id"), str)
                or not isinstance(data.get("messages"), int)
            ):
                raise ExportFileError(
                    f"{where}: the header needs an execution with an execution_id, and messages"
                )
            header = data
            continue
        for key, kind in (
            ("msg_id", str),
            ("destination", str),
            ("received_at", str),
            ("headers", dict),
            ("body", str),
        ):
            if not isinstance(data.get(key), kind):
                raise ExportFileError(f"{where}: {key!r} is missing or not a {kind.__name__}")
        try:
            parsed = parse_datetime(data["received_at"])
        except ValueError:
            parsed = None
        if parsed is None or parsed.tzinfo is None:
            raise ExportFileError(
                f"{where}: received_at {data['received_at'][:40]!r} is not a time with a zone"
            )
        if not all(isinstance(v, str) for v in data["headers"].values()):
            raise ExportFileError(f"{where}: header values must be text")
        data["received_at"] = parsed
        messages.append(data)
    if header is None:
        raise ExportFileError(f"{path}:1: empty file, no header")
    if len(messages) != header["messages"]:
        raise ExportFileError(
            f"{path}: the header announces {header['messages']} messages but "
            f"{len(messages)} follow: the file is truncated or was edited"
        )
    return ExportFile(header, messages)


def import_export(export: ExportFile) -> dict[str, int]:
    """Load the execution and its messages (idempotent); returns what was stored and what was there
    already.
    """
    from django.db import transaction

    from swf_testbed.monitor.api.models import Namespace, WorkflowDefinition, WorkflowExecution
    from swf_testbed.monitor.api.recording import Incoming, record

    execution = export.execution
    namespace = execution.get("namespace") or None
    with transaction.atomic():
        if namespace:
            Namespace.ensure({namespace})
        definition = None
        wanted = execution.get("workflow_definition")
        if isinstance(wanted, dict) and wanted.get("workflow_name"):
            definition = WorkflowDefinition.objects.filter(
                workflow_name=wanted["workflow_name"], version=wanted.get("version", "")
            ).first()
            if definition is None:
                definition = WorkflowDefinition.objects.create(
                    **{f: wanted[f] for f in _DEFINITION_FIELDS if f in wanted}
                )
        defaults = {
            f: execution[f]
            for f in (
                "status",
                "parameter_values",
                "performance_metrics",
                "executed_by",
                "start_time",
                "end_time",
                "error",
            )
            if execution.get(f) is not None
        }
        _, created = WorkflowExecution.objects.get_or_create(
            execution_id=execution["execution_id"],
            defaults={**defaults, "namespace_id": namespace, "workflow_definition": definition},
        )
        stored = duplicates = 0
        batch: list[Incoming] = []

        def flush() -> None:
            nonlocal stored, duplicates
            result = record(batch)
            stored += result.stored
            duplicates += result.duplicates
            batch.clear()

        for msg in export.messages:
            batch.append(
                Incoming(
                    body=msg["body"].encode("utf-8"),
                    headers=msg["headers"],
                    destination=msg["destination"],
                    received_at=msg["received_at"],
                )
            )
            if len(batch) >= 500:
                flush()
        if batch:
            flush()
    return {"execution_created": int(created), "stored": stored, "already_there": duplicates}

"""What every tool shares: the caller, argument checks, pages, the fields shown."""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from mcp.server.mcpserver.exceptions import ToolError

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
SENDER = "swf-mcp"


@dataclass(frozen=True)
class Caller:
    """Who calls the tools (per HTTP request, or the one of a stdio server)."""

    username: str = ""
    can_write: bool = False


NOBODY = Caller()
"""The caller of a request without a valid token: reads nothing, writes nothing."""

request_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar(
    "swf_mcp_caller", default=NOBODY
)
"""The caller of the HTTP request being served (set by the app of :func:`~.server.http_app`)."""

_stdio_caller: Caller | None = None


def set_stdio_caller(caller: Caller) -> None:
    """The one caller of a stdio server (``swf-testbed mcp``), for every tool call."""
    global _stdio_caller
    _stdio_caller = caller


def current_caller() -> Caller:
    return _stdio_caller if _stdio_caller is not None else request_caller.get()


def caller_of_token(key: str) -> Caller | None:
    """The active user owning the token, with its write permission; None for an unknown token."""
    from rest_framework.authtoken.models import Token

    token = Token.objects.select_related("user").filter(key=key).first()
    if token is None or not token.user.is_active:
        return None
    user = token.user
    return Caller(
        user.get_username(), bool(user.is_staff or user.has_perm("api.change_workflowexecution"))
    )


# --------------------------------------------------------------------------- argument checking


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def check_page(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_LIMIT:
        raise ToolError(f"limit must be between 1 and {MAX_LIMIT} (got {limit}); page with offset")
    if not 0 <= offset <= 10**9:
        raise ToolError(f"offset must be 0 or more (got {offset})")
    return limit, offset


def time_arg(name: str, value: str | None) -> datetime | None:
    if not value:
        return None
    from django.utils import timezone
    from django.utils.dateparse import parse_datetime

    try:
        parsed = parse_datetime(value.strip())
    except ValueError:
        parsed = None
    if parsed is None:
        raise ToolError(
            f"{name}: {value[:60]!r} is not an ISO 8601 date-time such as 2026-03-01T12:00:00Z"
        )
    return parsed if parsed.tzinfo else timezone.make_aware(parsed, UTC)


def text_arg(name: str, value: str | None, limit: int = 200) -> str:
    value = (value or "").strip()
    if len(value) > limit:
        raise ToolError(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise ToolError(f"{name} contains a NUL character")
    return value


def page_of(
    qs: Any,
    fields: list[str],
    limit: int,
    offset: int,
    *,
    order: tuple[str, ...] = (),
    rows: Callable[[Any], list[dict[str, Any]]] | None = None,
) -> str:
    """One page of ``qs``: its ``fields`` (or what ``rows`` makes of the page), with the total."""
    limit, offset = check_page(limit, offset)
    if order:
        qs = qs.order_by(*order)
    total = qs.count()
    if rows is not None:
        items = rows(qs[offset : offset + limit])
    else:
        items = list(qs.values(*fields)[offset : offset + limit])
    next_offset = offset + len(items) if offset + len(items) < total else None
    return dumps(
        {
            "total": total,
            "offset": offset,
            "limit": limit,
            "next_offset": next_offset,
            "items": items,
        }
    )


def in_range(qs: Any, field: str, start_time: str | None, end_time: str | None) -> Any:
    start, end = time_arg("start_time", start_time), time_arg("end_time", end_time)
    if start:
        qs = qs.filter(**{f"{field}__gte": start})
    if end:
        qs = qs.filter(**{f"{field}__lt": end})
    return qs


def get_one(qs: Any, what: str, fields: list[str] | None = None) -> str:
    row = qs.values(*(fields or [])).first()
    if row is None:
        raise ToolError(f"no {what}")
    return dumps(row)


def as_tool(fn: Callable[..., str]) -> Callable[..., Awaitable[str]]:
    """A tool body over the ORM, run in Django's thread; unexpected errors become a short tool
    error.
    """

    run = sync_to_async(fn, thread_sensitive=True)

    @wraps(fn)
    async def tool(*args: Any, **kwargs: Any) -> str:
        try:
            return await run(*args, **kwargs)
        except ToolError:
            raise
        except Exception as exc:  # noqa: BLE001 - an assistant gets a sentence, the log gets the traceback
            import logging

            logging.getLogger(__name__).exception("tool %s failed", fn.__name__)
            raise ToolError(f"{fn.__name__} failed: {type(exc).__name__}") from None

    return tool


def writer() -> Caller:
    caller = current_caller()
    if not caller.can_write:
        who = caller.username or "this server (no SWF_API_TOKEN)"
        raise ToolError(
            f"permission denied: {who} may read but not write; writes need a staff user or the "
            "'api.change_workflowexecution' permission"
        )
    return caller


def api_models() -> Any:
    from swf_testbed.monitor.api import models

    return models


AGENT_FIELDS = [
    "id",
    "instance_name",
    "agent_type",
    "namespace",
    "status",
    "operational_state",
    "hostname",
    "pid",
    "last_heartbeat",
    "heartbeat_interval",
    "mq_connected",
    "total_stf_processed",
]
EXECUTION_FIELDS = [
    "execution_id",
    "workflow_definition__workflow_name",
    "namespace",
    "status",
    "executed_by",
    "start_time",
    "end_time",
    "error",
]
MESSAGE_FIELDS = [
    "id",
    "msg_id",
    "msg_type",
    "namespace",
    "execution_id",
    "run_id",
    "sender",
    "destination",
    "sent_at",
    "received_at",
    "is_valid",
    "error_reason",
]
RUN_FIELDS = [
    "run_id",
    "run_number",
    "execution_id",
    "execution__namespace",
    "start_time",
    "end_time",
    "total_stf_files",
]
STF_FIELDS = [
    "file_id",
    "stf_filename",
    "run__run_number",
    "status",
    "file_size_bytes",
    "checksum",
    "sequence",
    "tf_count",
    "generated_at",
    "created_at",
    "updated_at",
]
SLICE_FIELDS = [
    "id",
    "slice_id",
    "run_number",
    "stf_filename",
    "tf_filename",
    "tf_first",
    "tf_last",
    "tf_count",
    "status",
    "retries",
    "assigned_worker",
    "created_at",
    "completed_at",
    "processing_time_s",
]
LOG_FIELDS = [
    "id",
    "timestamp",
    "app_name",
    "instance_name",
    "levelname",
    "level",
    "message",
    "module",
    "funcname",
    "lineno",
    "execution_id",
    "run_id",
]


def where(qs: Any, **conditions: Any) -> Any:
    """``qs`` filtered by each condition that is given (neither empty nor None)."""
    given = {field: value for field, value in conditions.items() if value not in ("", None)}
    return qs.filter(**given) if given else qs

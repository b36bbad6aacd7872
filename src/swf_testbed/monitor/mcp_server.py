"""The MCP server: the testbed's state and controls as tools for AI assistants (the official ``mcp`` SDK).

The same tools over two transports: stdio (``swf-testbed mcp``, for an
assistant on this machine, reading the monitor's database) and streamable HTTP
at ``/mcp/`` in the monitor web (:func:`http_app`, mounted beside Django in
``asgi.py``; stateless, JSON answers), where every request needs
``Authorization: Token <key>``.

Reads need a valid token over HTTP (over stdio, the local user reads the
database the monitor uses). **Writes** (``start_workflow``, ``stop_workflow``,
``end_execution``) need a user with write permission: staff, or a user given
the ``api.change_workflowexecution`` permission (admin → Users). Over stdio
that user is the owner of ``SWF_API_TOKEN``; without one the server is
read-only. An agent's ordinary token (a plain user) may read but not start or
stop workflows.

Results are compact JSON text; lists are paged (``limit`` ≤ 500, ``offset``)
and say ``total`` and ``next_offset``. A bad argument is a tool error saying
which and why, never a traceback.
"""

from __future__ import annotations

import contextvars
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
SENDER = "swf-mcp"


@dataclass(frozen=True)
class Caller:
    """Who calls the tools (per HTTP request, or the one of a stdio server)."""

    username: str = ""
    can_write: bool = False


_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("swf_mcp_caller", default=Caller())
_stdio_caller: Caller | None = None


def current_caller() -> Caller:
    return _stdio_caller if _stdio_caller is not None else _caller.get()


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


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


def _limit(limit: int, offset: int) -> tuple[int, int]:
    if not 1 <= limit <= MAX_LIMIT:
        raise ToolError(f"limit must be between 1 and {MAX_LIMIT} (got {limit}); page with offset")
    if not 0 <= offset <= 10**9:
        raise ToolError(f"offset must be 0 or more (got {offset})")
    return limit, offset


def _time(name: str, value: str | None) -> datetime | None:
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
    return parsed if parsed.tzinfo else timezone.make_aware(parsed, timezone.UTC)


def _text(name: str, value: str | None, limit: int = 200) -> str:
    value = (value or "").strip()
    if len(value) > limit:
        raise ToolError(f"{name} is longer than {limit} characters")
    if "\x00" in value:
        raise ToolError(f"{name} contains a NUL character")
    return value


def _page(
    qs: Any, fields: list[str], limit: int, offset: int, *, order: tuple[str, ...] = ()
) -> str:
    limit, offset = _limit(limit, offset)
    if order:
        qs = qs.order_by(*order)
    total = qs.count()
    items = list(qs.values(*fields)[offset : offset + limit])
    next_offset = offset + len(items) if offset + len(items) < total else None
    return _dumps(
        {
            "total": total,
            "offset": offset,
            "limit": limit,
            "next_offset": next_offset,
            "items": items,
        }
    )


def _in_range(qs: Any, field: str, start_time: str | None, end_time: str | None) -> Any:
    start, end = _time("start_time", start_time), _time("end_time", end_time)
    if start:
        qs = qs.filter(**{f"{field}__gte": start})
    if end:
        qs = qs.filter(**{f"{field}__lt": end})
    return qs


def _one(qs: Any, what: str, fields: list[str] | None = None) -> str:
    row = qs.values(*(fields or [])).first()
    if row is None:
        raise ToolError(f"no {what}")
    return _dumps(row)


def _tool(fn: Callable[..., str]) -> Callable[..., Awaitable[str]]:
    """A tool body over the ORM, run in Django's thread; unexpected errors become a short tool error."""

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


def _writer() -> Caller:
    caller = current_caller()
    if not caller.can_write:
        who = caller.username or "this server (no SWF_API_TOKEN)"
        raise ToolError(
            f"permission denied: {who} may read but not write; writes need a staff user or the "
            "'api.change_workflowexecution' permission"
        )
    return caller


# --------------------------------------------------------------------------- the tools


def _m() -> Any:
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


def _agents_with_liveness(qs: Any) -> list[dict[str, Any]]:
    from django.utils import timezone

    now = timezone.now()
    rows = []
    for agent in qs:
        row = {f: getattr(agent, "namespace_id" if f == "namespace" else f) for f in AGENT_FIELDS}
        row["liveness"] = str(agent.liveness(now))
        rows.append(row)
    return rows


def get_system_state() -> str:
    m = _m()
    from django.db.models import Count, Sum

    agents: dict[str, int] = {}
    for row in _agents_with_liveness(m.SystemAgent.objects.all()):
        agents[row["liveness"]] = agents.get(row["liveness"], 0) + 1
    executions = {
        r["status"]: r["n"]
        for r in m.WorkflowExecution.objects.values("status").annotate(n=Count("pk")).order_by()
    }
    latest = (
        m.RunState.objects.order_by("-state_changed_at")
        .values("run_number", "phase", "state", "substate", "state_changed_at")
        .first()
    )
    return _dumps(
        {
            "namespaces": m.Namespace.objects.count(),
            "agents_by_liveness": agents,
            "executions_by_status": executions,
            "running_executions": list(
                m.WorkflowExecution.objects.filter(status="running").values_list(
                    "execution_id", flat=True
                )[:20]
            ),
            "messages": m.MessageCount.objects.aggregate(n=Sum("count"))["n"] or 0,
            "runs": m.Run.objects.count(),
            "latest_run_state": latest,
        }
    )


def list_agents(
    namespace: str = "",
    agent_type: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    m = _m()
    limit, offset = _limit(limit, offset)
    qs = m.SystemAgent.objects.all()
    if namespace := _text("namespace", namespace):
        qs = qs.filter(namespace_id=namespace)
    if agent_type := _text("agent_type", agent_type):
        qs = qs.filter(agent_type=agent_type)
    qs = _in_range(qs, "last_heartbeat", start_time, end_time).order_by(
        "namespace", "instance_name"
    )
    total = qs.count()
    items = _agents_with_liveness(qs[offset : offset + limit])
    return _dumps(
        {
            "total": total,
            "offset": offset,
            "limit": limit,
            "next_offset": offset + len(items) if offset + len(items) < total else None,
            "items": items,
        }
    )


def get_agent(name: str, namespace: str = "") -> str:
    m = _m()
    qs = m.SystemAgent.objects.filter(instance_name=_text("name", name))
    if namespace := _text("namespace", namespace):
        qs = qs.filter(namespace_id=namespace)
    rows = _agents_with_liveness(qs[:2])
    if not rows:
        raise ToolError(
            f"no agent named {name[:100]!r}" + (f" in namespace {namespace!r}" if namespace else "")
        )
    if len(rows) > 1:
        raise ToolError(f"agent {name[:100]!r} exists in several namespaces: give namespace")
    return _dumps(rows[0])


def list_namespaces(limit: int = DEFAULT_LIMIT, offset: int = 0) -> str:
    return _page(
        _m().Namespace.objects.all(),
        ["name", "owner", "description", "created_at"],
        limit,
        offset,
        order=("name",),
    )


def get_namespace(name: str) -> str:
    m = _m()
    name = _text("name", name, 128)
    row = (
        m.Namespace.objects.filter(name=name)
        .values("name", "owner", "description", "created_at")
        .first()
    )
    if row is None:
        raise ToolError(f"no namespace {name!r}")
    row["agents"] = m.SystemAgent.objects.filter(namespace_id=name).count()
    row["executions"] = m.WorkflowExecution.objects.filter(namespace_id=name).count()
    return _dumps(row)


def list_workflow_definitions(
    workflow_name: str = "", limit: int = DEFAULT_LIMIT, offset: int = 0
) -> str:
    qs = _m().WorkflowDefinition.objects.all()
    if workflow_name := _text("workflow_name", workflow_name):
        qs = qs.filter(workflow_name=workflow_name)
    return _page(
        qs,
        ["id", "workflow_name", "version", "workflow_type", "created_by", "created_at"],
        limit,
        offset,
        order=("workflow_name", "version"),
    )


def list_workflow_executions(
    namespace: str = "",
    status: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = _m().WorkflowExecution.objects.all()
    if namespace := _text("namespace", namespace):
        qs = qs.filter(namespace_id=namespace)
    if status := _text("status", status):
        qs = qs.filter(status=status)
    qs = _in_range(qs, "start_time", start_time, end_time)
    return _page(qs, EXECUTION_FIELDS, limit, offset, order=("-start_time",))


def get_workflow_execution(execution_id: str) -> str:
    m = _m()
    execution_id = _text("execution_id", execution_id)
    row = (
        m.WorkflowExecution.objects.filter(execution_id=execution_id)
        .values(*EXECUTION_FIELDS, "parameter_values")
        .first()
    )
    if row is None:
        raise ToolError(f"no execution {execution_id!r}")
    row["runs"] = list(
        m.Run.objects.filter(execution_id=execution_id).values_list("run_number", flat=True)
    )
    return _dumps(row)


def list_messages(
    namespace: str = "",
    execution_id: str = "",
    msg_type: str = "",
    sender: str = "",
    run_id: int | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = _m().WorkflowMessage.objects.all()
    for field, value in (
        ("namespace_id", _text("namespace", namespace)),
        ("execution_id", _text("execution_id", execution_id)),
        ("msg_type", _text("msg_type", msg_type)),
        ("sender", _text("sender", sender)),
    ):
        if value:
            qs = qs.filter(**{field: value})
    if run_id is not None:
        qs = qs.filter(run_id=run_id)
    qs = _in_range(qs, "received_at", start_time, end_time)
    return _page(qs, MESSAGE_FIELDS, limit, offset, order=("-received_at", "-id"))


def get_message(message_id: int) -> str:
    m = _m()
    msg = m.WorkflowMessage.objects.filter(id=message_id).first()
    if msg is None:
        raise ToolError(f"no message with id {message_id}")
    return _dumps(
        {
            **{f: getattr(msg, "namespace_id" if f == "namespace" else f) for f in MESSAGE_FIELDS},
            "body": msg.parsed_body(),
            "validation_error": msg.validation_error,
        }
    )


def list_runs(
    namespace: str = "",
    execution_id: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = _m().Run.objects.all()
    if namespace := _text("namespace", namespace):
        qs = qs.filter(execution__namespace_id=namespace)
    if execution_id := _text("execution_id", execution_id):
        qs = qs.filter(execution_id=execution_id)
    qs = _in_range(qs, "start_time", start_time, end_time)
    return _page(qs, RUN_FIELDS, limit, offset, order=("-run_number",))


def get_run(run_number: int) -> str:
    m = _m()
    row = m.Run.objects.filter(run_number=run_number).values(*RUN_FIELDS, "run_conditions").first()
    if row is None:
        raise ToolError(f"no run {run_number}")
    row["state"] = (
        m.RunState.objects.filter(run_number=run_number)
        .values(
            "phase",
            "state",
            "substate",
            "stf_samples_received",
            "slices_created",
            "slices_completed",
            "slices_failed",
            "state_changed_at",
        )
        .first()
    )
    row["stf_files"] = m.StfFile.objects.filter(run__run_number=run_number).count()
    return _dumps(row)


def list_stf_files(
    run_number: int | None = None,
    namespace: str = "",
    status: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = _m().StfFile.objects.all()
    if run_number is not None:
        qs = qs.filter(run__run_number=run_number)
    if namespace := _text("namespace", namespace):
        qs = qs.filter(run__execution__namespace_id=namespace)
    if status := _text("status", status):
        qs = qs.filter(status=status)
    qs = _in_range(qs, "created_at", start_time, end_time)
    return _page(qs, STF_FIELDS, limit, offset, order=("-created_at",))


def get_stf_file(stf_filename: str) -> str:
    name = _text("stf_filename", stf_filename, 255)
    return _one(
        _m().StfFile.objects.filter(stf_filename=name),
        f"STF file {name!r}",
        [*STF_FIELDS, "metadata"],
    )


def list_tf_slices(
    run_number: int | None = None,
    status: str = "",
    stf_filename: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = _m().TFSlice.objects.all()
    if run_number is not None:
        qs = qs.filter(run_number=run_number)
    if status := _text("status", status):
        qs = qs.filter(status=status)
    if stf_filename := _text("stf_filename", stf_filename, 255):
        qs = qs.filter(stf_filename=stf_filename)
    qs = _in_range(qs, "created_at", start_time, end_time)
    return _page(qs, SLICE_FIELDS, limit, offset, order=("run_number", "tf_filename", "slice_id"))


def get_tf_slice(slice_pk: int) -> str:
    return _one(
        _m().TFSlice.objects.filter(id=slice_pk),
        f"slice with id {slice_pk}",
        [*SLICE_FIELDS, "error"],
    )


def list_logs(
    execution_id: str = "",
    instance_name: str = "",
    app_name: str = "",
    min_level: int = 0,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = _m().AppLog.objects.all()
    for field, value in (
        ("execution_id", _text("execution_id", execution_id)),
        ("instance_name", _text("instance_name", instance_name)),
        ("app_name", _text("app_name", app_name)),
    ):
        if value:
            qs = qs.filter(**{field: value})
    if min_level:
        qs = qs.filter(level__gte=min_level)
    qs = _in_range(qs, "timestamp", start_time, end_time)
    return _page(qs, LOG_FIELDS, limit, offset, order=("-timestamp", "-id"))


def get_log_entry(log_id: int) -> str:
    return _one(
        _m().AppLog.objects.filter(id=log_id),
        f"log record with id {log_id}",
        [*LOG_FIELDS, "extra_data"],
    )


def get_testbed_status(namespace: str) -> str:
    m = _m()
    namespace = _text("namespace", namespace, 128)
    if not m.Namespace.objects.filter(name=namespace).exists():
        raise ToolError(f"no namespace {namespace!r}")
    agents = _agents_with_liveness(m.SystemAgent.objects.filter(namespace_id=namespace)[:MAX_LIMIT])
    running = list(
        m.WorkflowExecution.objects.filter(namespace_id=namespace, status="running").values(
            "execution_id", "start_time"
        )[:20]
    )
    latest = (
        m.WorkflowExecution.objects.filter(namespace_id=namespace)
        .order_by("-start_time")
        .values("execution_id", "status", "start_time", "end_time")
        .first()
    )
    return _dumps(
        {
            "namespace": namespace,
            "healthy": bool(agents) and all(a["liveness"] in ("ok", "exited") for a in agents),
            "agents": [
                {
                    k: a[k]
                    for k in (
                        "instance_name",
                        "agent_type",
                        "liveness",
                        "operational_state",
                        "last_heartbeat",
                    )
                }
                for a in agents
            ],
            "running_executions": running,
            "latest_execution": latest,
        }
    )


def execution_progress(execution_id: str) -> dict[str, Any]:
    """What an execution is doing now: the counts ``swf-testbed run`` shows, from the message counts."""
    m = _m()
    from django.db.models import Count, Sum

    execution = (
        m.WorkflowExecution.objects.filter(execution_id=execution_id)
        .values("execution_id", "namespace", "status", "start_time", "end_time")
        .first()
    )
    counts = {
        r["msg_type"]: r["n"]
        for r in m.MessageCount.objects.filter(execution_id=execution_id, is_valid=True)
        .values("msg_type")
        .annotate(n=Sum("count"))
        .order_by()
    }
    if execution is None and not counts:
        raise ToolError(f"no execution {execution_id!r}")
    run_numbers = list(
        m.Run.objects.filter(execution_id=execution_id).values_list("run_number", flat=True)
    )
    state = (
        m.RunState.objects.filter(run_number__in=run_numbers)
        .order_by("-state_changed_at")
        .values("run_number", "state", "substate", "phase")
        .first()
        if run_numbers
        else None
    )

    slices = (
        {
            r["status"]: r["n"]
            for r in m.TFSlice.objects.filter(run_number__in=run_numbers)
            .values("status")
            .annotate(n=Count("id"))
            .order_by()
        }
        if run_numbers
        else {}
    )
    return {
        **(execution or {"execution_id": execution_id, "status": "unknown"}),
        "runs": run_numbers,
        "daq_state": f"{state['state']}/{state['substate']}" if state else "",
        "stf_produced": counts.get("stf_gen", 0),
        "stf_ready": counts.get("stf_ready", 0),
        "stf_processed": counts.get("processing_complete", 0),
        "samples": counts.get("tf_file_registered", 0),
        "slices": sum(slices.values()),
        "slices_by_status": slices,
        "end_run": counts.get("end_run", 0) > 0,
        "messages": sum(counts.values()),
    }


def get_workflow_monitor(execution_id: str) -> str:
    return _dumps(execution_progress(_text("execution_id", execution_id)))


def list_workflow_monitors(namespace: str = "", limit: int = 20, offset: int = 0) -> str:
    m = _m()
    limit, offset = _limit(limit, offset)
    qs = m.WorkflowExecution.objects.filter(status="running")
    if namespace := _text("namespace", namespace):
        qs = qs.filter(namespace_id=namespace)
    ids = list(
        qs.order_by("-start_time").values_list("execution_id", flat=True)[offset : offset + limit]
    )
    return _dumps(
        {
            "total": qs.count(),
            "offset": offset,
            "limit": limit,
            "items": [execution_progress(i) for i in ids],
        }
    )


def _send_control(namespace: str, msg: Any) -> None:
    from swf_testbed.mq.client import BrokerClient
    from swf_testbed.mq.destinations import control_queue
    from swf_testbed.settings import get_settings

    client = BrokerClient(get_settings().broker, client_name=SENDER)
    try:
        client.start(wait=15)
        client.send(control_queue(namespace), msg, timeout=15.0)
    except Exception as exc:  # noqa: BLE001
        raise ToolError(f"cannot reach the broker to send {msg.msg_type}: {exc}") from None
    finally:
        client.close()


def start_workflow(
    namespace: str,
    workflow_name: str = "stf_datataking",
    config: str = "fast_processing",
    time_scale: float | None = None,
    duration: float = 0,
    params: dict[str, Any] | None = None,
) -> str:
    caller = _writer()
    from pydantic import ValidationError

    from swf_testbed.errors import describe
    from swf_testbed.messages import RunWorkflow

    try:
        msg = RunWorkflow(
            namespace=_text("namespace", namespace, 128),
            sender=SENDER,
            workflow_name=_text("workflow_name", workflow_name),
            config=_text("config", config),
            time_scale=time_scale,
            duration=duration,
            params=dict(params or {}),
        )
    except ValidationError as exc:
        raise ToolError("bad argument: " + describe(exc)) from None
    _send_control(msg.namespace or "", msg)
    return _dumps(
        {
            "sent": "run_workflow",
            "msg_id": msg.msg_id,
            "namespace": msg.namespace,
            "by": caller.username,
            "next": "the runner answers with workflow_started (list_messages msg_type=workflow_started)",
        }
    )


def stop_workflow(
    namespace: str, execution_id: str, reason: str = "stopped by an assistant"
) -> str:
    caller = _writer()
    from swf_testbed.messages import StopWorkflow

    execution_id, namespace = (
        _text("execution_id", execution_id),
        _text("namespace", namespace, 128),
    )
    if not execution_id or not namespace:
        raise ToolError("namespace and execution_id are both needed")
    msg = StopWorkflow(
        namespace=namespace,
        sender=SENDER,
        execution_id=execution_id,
        reason=_text("reason", reason, 1000),
    )
    _send_control(namespace, msg)
    return _dumps(
        {
            "sent": "stop_workflow",
            "msg_id": msg.msg_id,
            "execution_id": execution_id,
            "by": caller.username,
        }
    )


def end_execution(execution_id: str, status: str = "terminated") -> str:
    caller = _writer()
    m = _m()
    from django.utils import timezone

    execution_id = _text("execution_id", execution_id)
    allowed = {m.ExecutionStatus.TERMINATED, m.ExecutionStatus.FAILED, m.ExecutionStatus.COMPLETED}
    if status not in allowed:
        raise ToolError(f"status must be one of {sorted(allowed)} (got {status[:40]!r})")
    execution = m.WorkflowExecution.objects.filter(execution_id=execution_id).first()
    if execution is None:
        raise ToolError(f"no execution {execution_id!r}")
    if execution.end_time is not None:
        raise ToolError(
            f"execution {execution_id!r} already ended ({execution.status} at {execution.end_time})"
        )
    execution.status, execution.end_time = status, timezone.now()
    execution.error = execution.error or f"ended by {caller.username} through MCP"
    execution.save(update_fields=["status", "end_time", "error"])
    return _dumps(
        {
            "execution_id": execution_id,
            "status": status,
            "end_time": execution.end_time,
            "by": caller.username,
        }
    )


TOOLS: list[tuple[Callable[..., str], str]] = [
    (
        get_system_state,
        "The whole monitor at a glance: namespaces, agents by liveness (ok/late/down/exited), "
        "executions by status and the running ones, total messages, runs, the latest run state.",
    ),
    (
        list_agents,
        "Agents (one page): name, type, namespace, liveness from the last heartbeat, operational state, "
        "host, pid. Filter by namespace, agent_type, last heartbeat in [start_time, end_time).",
    ),
    (
        get_agent,
        "One agent by its name (instance_name), with its liveness; give namespace when the name is "
        "used in several.",
    ),
    (list_namespaces, "Namespaces (testbed instances): name, owner, description."),
    (get_namespace, "One namespace with its number of agents and executions."),
    (list_workflow_definitions, "Workflow definitions: id, name, version, type."),
    (
        list_workflow_executions,
        "Workflow executions, newest first: id, workflow, namespace, status "
        "(running/completed/terminated/failed), times. Filter by namespace, status, start in [start_time, end_time).",
    ),
    (get_workflow_execution, "One execution with its parameters and run numbers."),
    (
        list_messages,
        "Recorded messages, newest first (without bodies: get_message has the body). Filter by "
        "namespace, execution_id, msg_type, sender, run_id, received in [start_time, end_time).",
    ),
    (
        get_message,
        "One message by its id (from list_messages), with its body and validation error if any.",
    ),
    (
        list_runs,
        "Runs, newest first: run number, execution, times, STF count. Filter by namespace, execution_id, "
        "start in [start_time, end_time).",
    ),
    (
        get_run,
        "One run by run number, with its current state and counters and its number of STF files.",
    ),
    (
        list_stf_files,
        "STF files: name, run, status, size, checksum, sequence. Filter by run_number, namespace, "
        "status, created in [start_time, end_time).",
    ),
    (get_stf_file, "One STF file by its file name, with its metadata."),
    (
        list_tf_slices,
        "TF slices: run, STF, TF range, status, worker. Filter by run_number, status, stf_filename, "
        "created in [start_time, end_time).",
    ),
    (get_tf_slice, "One TF slice by its id (from list_tf_slices)."),
    (
        list_logs,
        "Application logs, newest first. Filter by execution_id, instance_name, app_name, min_level "
        "(20 = INFO, 30 = WARNING, 40 = ERROR), time in [start_time, end_time).",
    ),
    (get_log_entry, "One log record by id, with its extra data."),
    (
        get_testbed_status,
        "A testbed (namespace): its agents with liveness, whether all are healthy, its running "
        "and latest execution.",
    ),
    (
        get_workflow_monitor,
        "What an execution is doing now, as `swf-testbed run` shows it: status, DAQ state, "
        "STFs produced / ready / processed, samples, slices by status, whether end_run was seen.",
    ),
    (
        list_workflow_monitors,
        "The live progress (as get_workflow_monitor) of every running execution.",
    ),
    (
        start_workflow,
        "WRITE. Ask a namespace's workflow runner to start a workflow: sends run_workflow to "
        "its control queue and returns the request's msg_id (the runner replies workflow_started). Needs write "
        "permission.",
    ),
    (
        stop_workflow,
        "WRITE. Ask the runner to stop an execution cleanly (stop_workflow: end_run is sent, the "
        "execution ends terminated). Needs write permission.",
    ),
    (
        end_execution,
        "WRITE. Mark an execution ended in the monitor (status terminated, failed or completed) when "
        "its runner is gone and it shows running for ever; sends nothing. Needs write permission.",
    ),
]
WRITE_TOOLS = frozenset({"start_workflow", "stop_workflow", "end_execution"})


def build_server() -> MCPServer:
    from swf_testbed import __version__

    server = MCPServer(
        "swf-testbed",
        version=__version__,
        instructions=(
            "Tools over the swf-testbed monitor (ePIC streaming workflow testbed): agents, namespaces, workflow "
            "executions, runs, STF files, TF slices, messages, logs, live progress; start and stop workflows. "
            "Results are compact JSON; lists are pages (limit <= 500, offset, total, next_offset); times are "
            "ISO 8601."
        ),
    )
    for fn, description in TOOLS:
        server.add_tool(
            _tool(fn), name=fn.__name__, description=description, structured_output=False
        )

    names = [fn.__name__ for fn, _ in TOOLS]

    async def list_available_tools() -> str:
        return _dumps(
            {
                "tools": [
                    {"name": n, "write": n in WRITE_TOOLS} for n in ["list_available_tools", *names]
                ],
                "can_write": current_caller().can_write,
            }
        )

    server.add_tool(
        list_available_tools,
        name="list_available_tools",
        description="The tool names, which of them write, and whether this caller may write.",
        structured_output=False,
    )
    return server


def run_stdio(token: str = "") -> None:
    """``swf-testbed mcp``: serve the tools over stdio (writes when ``token`` has write permission)."""
    global _stdio_caller
    from swf_testbed import monitor

    monitor.setup()
    caller = caller_of_token(token) if token else Caller()
    if caller is None:
        raise SystemExit("SWF_API_TOKEN is not a valid token of this monitor's database")
    _stdio_caller = caller
    build_server().run("stdio")


def http_app() -> Any:
    """The ASGI app of ``/mcp/``: token auth and the Host check in front of the SDK's streamable HTTP app."""
    from django.conf import settings
    from django.http.request import split_domain_port, validate_host
    from mcp.server.transport_security import TransportSecuritySettings

    inner = build_server().streamable_http_app(
        streamable_http_path="/mcp/",
        stateless_http=True,
        json_response=True,
        # the Host is checked below against Django's ALLOWED_HOSTS; a token header is no ambient credential
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False),
    )
    who = sync_to_async(caller_of_token, thread_sensitive=True)

    async def reply(send: Any, status: int, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"www-authenticate", b"Token"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await inner(scope, receive, send)
            return
        headers = {
            k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])
        }
        domain, _port = split_domain_port(headers.get("host", ""))
        if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
            await reply(send, 400, "Host not allowed")
            return
        scheme, _, key = headers.get("authorization", "").partition(" ")
        caller = await who(key.strip()) if scheme.lower() == "token" and key.strip() else None
        if caller is None:
            await reply(
                send, 401, "send 'Authorization: Token <key>' (swf-testbed monitor token USER)"
            )
            return
        reset = _caller.set(caller)
        try:
            await inner(scope, receive, send)
        finally:
            _caller.reset(reset)

    return app

"""Tools about workflows: definitions, executions and their live progress."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from swf_testbed.monitor.mcp_server.common import (
    DEFAULT_LIMIT,
    EXECUTION_FIELDS,
    api_models,
    check_page,
    dumps,
    in_range,
    page_of,
    text_arg,
    where,
)


def list_workflow_definitions(
    workflow_name: str = "", limit: int = DEFAULT_LIMIT, offset: int = 0
) -> str:
    qs = where(
        api_models().WorkflowDefinition.objects.all(),
        workflow_name=text_arg("workflow_name", workflow_name),
    )
    return page_of(
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
    qs = where(
        api_models().WorkflowExecution.objects.all(),
        namespace_id=text_arg("namespace", namespace),
        status=text_arg("status", status),
    )
    qs = in_range(qs, "start_time", start_time, end_time)
    return page_of(qs, EXECUTION_FIELDS, limit, offset, order=("-start_time",))


def get_workflow_execution(execution_id: str) -> str:
    m = api_models()
    execution_id = text_arg("execution_id", execution_id)
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
    return dumps(row)


def execution_progress(execution_id: str) -> dict[str, Any]:
    """What an execution is doing now: the counts ``swf-testbed run`` shows, from the message
    counts.
    """
    m = api_models()
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
    return dumps(execution_progress(text_arg("execution_id", execution_id)))


def list_workflow_monitors(namespace: str = "", limit: int = 20, offset: int = 0) -> str:
    m = api_models()
    limit, offset = check_page(limit, offset)
    qs = where(
        m.WorkflowExecution.objects.filter(status="running"),
        namespace_id=text_arg("namespace", namespace),
    )
    ids = list(
        qs.order_by("-start_time").values_list("execution_id", flat=True)[offset : offset + limit]
    )
    return dumps(
        {
            "total": qs.count(),
            "offset": offset,
            "limit": limit,
            "items": [execution_progress(i) for i in ids],
        }
    )

"""Tools about the testbeds: the whole monitor, agents, namespaces, a testbed's status."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from swf_testbed.monitor.mcp_server.common import (
    AGENT_FIELDS,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    api_models,
    dumps,
    in_range,
    page_of,
    text_arg,
    where,
)


def agents_with_liveness(qs: Any) -> list[dict[str, Any]]:
    from django.utils import timezone

    now = timezone.now()
    rows = []
    for agent in qs:
        row = {f: getattr(agent, "namespace_id" if f == "namespace" else f) for f in AGENT_FIELDS}
        row["liveness"] = str(agent.liveness(now))
        rows.append(row)
    return rows


def get_system_state() -> str:
    m = api_models()
    from django.db.models import Count, Sum

    agents: dict[str, int] = {}
    for row in agents_with_liveness(m.SystemAgent.objects.all()):
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
    return dumps(
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
    qs = where(
        api_models().SystemAgent.objects.all(),
        namespace_id=text_arg("namespace", namespace),
        agent_type=text_arg("agent_type", agent_type),
    )
    qs = in_range(qs, "last_heartbeat", start_time, end_time)
    order = ("namespace", "instance_name")
    return page_of(qs, AGENT_FIELDS, limit, offset, order=order, rows=agents_with_liveness)


def get_agent(name: str, namespace: str = "") -> str:
    namespace = text_arg("namespace", namespace)
    qs = where(
        api_models().SystemAgent.objects.filter(instance_name=text_arg("name", name)),
        namespace_id=namespace,
    )
    rows = agents_with_liveness(qs[:2])
    if not rows:
        raise ToolError(
            f"no agent named {name[:100]!r}" + (f" in namespace {namespace!r}" if namespace else "")
        )
    if len(rows) > 1:
        raise ToolError(f"agent {name[:100]!r} exists in several namespaces: give namespace")
    return dumps(rows[0])


def list_namespaces(limit: int = DEFAULT_LIMIT, offset: int = 0) -> str:
    return page_of(
        api_models().Namespace.objects.all(),
        ["name", "owner", "description", "created_at"],
        limit,
        offset,
        order=("name",),
    )


def get_namespace(name: str) -> str:
    m = api_models()
    name = text_arg("name", name, 128)
    row = (
        m.Namespace.objects.filter(name=name)
        .values("name", "owner", "description", "created_at")
        .first()
    )
    if row is None:
        raise ToolError(f"no namespace {name!r}")
    row["agents"] = m.SystemAgent.objects.filter(namespace_id=name).count()
    row["executions"] = m.WorkflowExecution.objects.filter(namespace_id=name).count()
    return dumps(row)


def get_testbed_status(namespace: str) -> str:
    m = api_models()
    namespace = text_arg("namespace", namespace, 128)
    if not m.Namespace.objects.filter(name=namespace).exists():
        raise ToolError(f"no namespace {namespace!r}")
    agents = agents_with_liveness(m.SystemAgent.objects.filter(namespace_id=namespace)[:MAX_LIMIT])
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
    return dumps(
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

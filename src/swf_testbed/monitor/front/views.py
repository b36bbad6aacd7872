"""UI pages. Server-rendered; each page's live part is re-fetched by htmx every few seconds."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.utils import timezone

from swf_testbed.liveness import NEEDS_ATTENTION
from swf_testbed.monitor.api import facets
from swf_testbed.monitor.api import filters as f
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.throttling import refused_count
from swf_testbed.monitor.front import plots
from swf_testbed.monitor.front.utils import (
    PAGE_SIZE,
    flatten,
    paginate,
    pretty_json,
    query_with,
    reads_allowed,
    render_live,
)

LIVE_INTERVAL_S = 2


def site_context(request: HttpRequest) -> dict[str, Any]:
    return {
        "live_interval": LIVE_INTERVAL_S,
        "reads_open": getattr(settings, "SWF_API_OPEN_READS", False),
    }


# --------------------------------------------------------------------------- dashboard


DASHBOARD_BUCKETS = 60
"""Bars of the dashboard's 10-minute charts: 10 s each, so the last 6 are the last minute."""


def _bucket_counts(
    queryset: Any, field: str, start: Any, end: Any, buckets: int = DASHBOARD_BUCKETS
) -> list[int]:
    """How many rows have ``field`` in each of ``buckets`` equal intervals of [start, end], in one
    query.

    The database counts (one conditional count per bucket over the index
    range) instead of sending every timestamp here: with the ingest writing
    thousands of messages a second, the 10-minute window holds millions.
    """
    width = (end - start) / buckets
    edges = [start + width * i for i in range(buckets)] + [end]
    aggregates = {
        f"b{i}": Count(
            "pk",
            filter=Q(
                **{
                    f"{field}__gte": edges[i],
                    f"{field}__lt" if i < buckets - 1 else f"{field}__lte": edges[i + 1],
                }
            ),
        )
        for i in range(buckets)
    }
    counts = (
        queryset.filter(**{f"{field}__gte": start, f"{field}__lte": end})
        .order_by()
        .aggregate(**aggregates)
    )
    return [int(counts[f"b{i}"] or 0) for i in range(buckets)]


@reads_allowed
def dashboard(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    minute_ago = now - timedelta(seconds=60)
    agents = list(m.SystemAgent.objects.all())
    health = Counter(agent.liveness(now).value for agent in agents)
    window_start = now - timedelta(minutes=10)
    message_counts = _bucket_counts(
        m.WorkflowMessage.objects.all(), "received_at", window_start, now
    )
    stf_times = list(
        m.StfFile.objects.filter(created_at__gte=now - timedelta(minutes=10)).values_list(
            "created_at", flat=True
        )
    )
    # heartbeats drown everything else: hidden unless asked for
    show_heartbeats = request.GET.get("heartbeats") == "show"
    recent = m.WorkflowMessage.objects.defer("body", "headers")
    if not show_heartbeats:
        recent = recent.exclude(msg_type="heartbeat")
    context = {
        "now": now,
        "running": m.WorkflowExecution.objects.filter(status=m.ExecutionStatus.RUNNING)
        .select_related("workflow_definition")
        .annotate(stf_count=Count("runs__stf_files"))
        .order_by("-start_time")[:20],
        "recent_executions": m.WorkflowExecution.objects.exclude(
            status=m.ExecutionStatus.RUNNING
        ).select_related("workflow_definition")[:5],
        "message_rate": sum(message_counts[-DASHBOARD_BUCKETS // 10 :]) / 60.0,
        "stf_rate": sum(1 for t in stf_times if t >= minute_ago) / 60.0,
        "message_chart": plots.counts_chart(
            message_counts, "Messages received, last 10 min", window_start, now
        ),
        "stf_chart": plots.rate_chart(
            stf_times, "STF files recorded, last 10 min", start=now - timedelta(minutes=10), end=now
        ),
        "health": {
            k: health.get(k, 0) for k in ("ok", "late", "down", "exited", "gone", "unknown")
        },
        "troubled": [a for a in agents if a.liveness(now) in NEEDS_ATTENTION][:20],
        "total_messages": facets.count_from_rollup({}),
        "invalid_messages": facets.count_from_rollup({"is_valid": False}),
        "recent_messages": recent[:10],
        "heartbeats_shown": show_heartbeats,
    }
    return render_live(request, "front/dashboard.html", context)


# --------------------------------------------------------------------------- agents


@reads_allowed
def agent_list(request: HttpRequest) -> HttpResponse:
    now = timezone.now()
    agents = m.SystemAgent.objects.all()
    namespace = request.GET.get("namespace")
    if namespace:
        # a NUL is in no name, and PostgreSQL refuses it in a query (a 500, not an empty list)
        agents = agents.filter(namespace_id=namespace) if "\x00" not in namespace else agents.none()
    rows = [(agent, agent.liveness(now).value) for agent in agents]
    wanted = request.GET.get("liveness")
    if wanted:
        rows = [row for row in rows if row[1] == wanted]
    return render_live(
        request,
        "front/agent_list.html",
        {
            "rows": rows,
            "now": now,
            "namespace": namespace,
            "liveness": wanted,
            "liveness_choices": [v.value for v in m.Liveness],
        },
    )


HEARTBEAT_HISTORY = 50


@reads_allowed
def agent_detail(request: HttpRequest, pk: int) -> HttpResponse:
    agent = get_object_or_404(m.SystemAgent, pk=pk)
    sent = m.WorkflowMessage.objects.filter(sender=agent.instance_name).defer("headers")
    if agent.namespace_id:
        sent = sent.filter(namespace_id=agent.namespace_id)
    # the history is long and rarely wanted: collapsed unless asked for (a parameter, so the live
    # refresh keeps it)
    show_heartbeats = request.GET.get("heartbeats") == "show"
    heartbeats = []
    for message in sent.filter(msg_type="heartbeat")[: HEARTBEAT_HISTORY if show_heartbeats else 0]:
        body = message.parsed_body()
        body = body if isinstance(body, dict) else {}
        heartbeats.append(
            {
                "message": message,
                "state": body.get("operational_state", ""),
                "status": body.get("status", ""),
                "mq": body.get("mq_connected"),
            }
        )
    context = {
        "agent": agent,
        "liveness": agent.liveness().value,
        "heartbeats": heartbeats,
        "show_heartbeats": show_heartbeats,
        "heartbeat_limit": HEARTBEAT_HISTORY,
        "heartbeat_count": facets.count_from_rollup(
            {
                "sender": agent.instance_name,
                "msg_type": "heartbeat",
                **({"namespace": agent.namespace_id} if agent.namespace_id else {}),
            }
        ),
        "messages": sent.exclude(msg_type="heartbeat").defer("body")[:50],
        "counters": sorted(agent.counters.items()) if isinstance(agent.counters, dict) else [],
        **agent_logs_context(agent),
    }
    return render_live(request, "front/agent_detail.html", context)


def agent_logs_context(agent: m.SystemAgent) -> dict[str, Any]:
    """The agent page's logs block: its latest records, how many there are, and how many its buffer
    dropped."""
    logs = m.AppLog.objects.filter(instance_name=agent.instance_name)
    if agent.namespace_id:
        logs = logs.filter(namespace_id=agent.namespace_id)
    dropped = (
        agent.counters.get("log_records_dropped") if isinstance(agent.counters, dict) else None
    )
    return {
        "agent_logs": logs.order_by("-timestamp", "-id")[:20],
        "agent_log_count": logs.count(),
        "agent_logs_dropped": dropped if isinstance(dropped, int) else None,
    }


@reads_allowed
def agent_named(request: HttpRequest) -> HttpResponse:
    """The agent page of a sender name (``?name=&namespace=``): a message's sender links here."""
    name = request.GET.get("name", "")
    agents = (
        m.SystemAgent.objects.filter(instance_name=name)
        if "\x00" not in name
        else m.SystemAgent.objects.none()
    )
    namespace = request.GET.get("namespace")
    if namespace and "\x00" not in namespace:
        agents = agents.filter(namespace_id=namespace)
    agent = agents.order_by("-last_heartbeat").first()
    if agent is None:
        raise Http404("no agent of that name has sent a heartbeat")
    return redirect("front:agent", pk=agent.pk)


# ------------------------------------------------------------------- namespaces and workflows


@reads_allowed
def namespace_list(request: HttpRequest) -> HttpResponse:
    namespaces = m.Namespace.objects.annotate(
        agent_count=Count("agents", distinct=True),
        execution_count=Count("executions", distinct=True),
    ).order_by("name")
    return render_live(request, "front/namespace_list.html", {"namespaces": namespaces})


@reads_allowed
def namespace_detail(request: HttpRequest, name: str) -> HttpResponse:
    namespace = get_object_or_404(m.Namespace, name=name)
    now = timezone.now()
    context = {
        "namespace": namespace,
        "agents": [(a, a.liveness(now).value) for a in namespace.agents.all()],
        "executions": namespace.executions.select_related("workflow_definition")[:20],
        "message_count": facets.count_from_rollup({"namespace": name}),
        "by_type": facets.facet_counts({"namespace": name})["msg_type"],
    }
    return render_live(request, "front/namespace_detail.html", context)


@reads_allowed
def definition_list(request: HttpRequest) -> HttpResponse:
    definitions = m.WorkflowDefinition.objects.annotate(
        execution_count=Count("executions")
    ).order_by("workflow_name", "-created_at")
    return render_live(
        request, "front/definition_list.html", {"page": paginate(request, definitions)}
    )


@reads_allowed
def definition_detail(request: HttpRequest, pk: int) -> HttpResponse:
    definition = get_object_or_404(m.WorkflowDefinition, pk=pk)
    return render_live(
        request,
        "front/definition_detail.html",
        {
            "definition": definition,
            "parameters": pretty_json(definition.parameter_values),
            "executions": definition.executions.all()[:50],
        },
    )


# --------------------------------------------------------------------------- executions and runs


@reads_allowed
def execution_list(request: HttpRequest) -> HttpResponse:
    executions = (
        m.WorkflowExecution.objects.select_related("workflow_definition")
        .annotate(stf_count=Count("runs__stf_files"))
        .order_by("-start_time")
    )
    filterset = f.WorkflowExecutionFilter(request.GET, queryset=executions)
    return render_live(
        request,
        "front/execution_list.html",
        {
            "page": paginate(request, filterset.qs),
            "statuses": m.ExecutionStatus.choices,
            "status": request.GET.get("status", ""),
            "namespace": request.GET.get("namespace", ""),
            "query_with": lambda **kw: query_with(request, **kw),
        },
    )


STF_RATE_TITLE = "STF files generated"
"""One definition on every page: STF files by the time of their stf_gen, per second, in bins the
title names."""


@reads_allowed
def execution_detail(request: HttpRequest, execution_id: str) -> HttpResponse:
    execution = get_object_or_404(
        m.WorkflowExecution.objects.select_related("workflow_definition"), execution_id=execution_id
    )
    now = timezone.now()
    runs = list(
        execution.runs.select_related("state")
        .annotate(stf_count=Count("stf_files"))
        .order_by("run_number")
    )
    run_numbers = [run.run_number for run in runs]
    end = execution.end_time or now
    stf_pairs = m.StfFile.objects.filter(run__execution=execution).values_list(
        "generated_at", "created_at"
    )
    stf_times: list[datetime] = [gen or created for gen, created in stf_pairs]
    slice_times: list[datetime] = [
        at
        for at in m.TFSlice.objects.filter(
            run_number__in=run_numbers, completed_at__isnull=False
        ).values_list("completed_at", flat=True)
        if at is not None
    ]
    # the agents finish the run's work after the execution ends: the plots cover that too
    end = max([end, *stf_times, *slice_times])
    events = m.SystemStateEvent.history(run_numbers)
    by_run: dict[int, list[tuple[Any, str, str]]] = {}
    for event in events:
        by_run.setdefault(event.run_number, []).append((event.timestamp, *event.shown_state))
    context = {
        "execution": execution,
        "runs": runs,
        "config": pretty_json(execution.parameter_values),
        "metrics": pretty_json(execution.performance_metrics),
        "stf_total": len(stf_times),
        "stf_chart": plots.rate_chart(
            stf_times, STF_RATE_TITLE, start=execution.start_time, end=end
        ),
        "slice_chart": plots.rate_chart(
            slice_times, "Slices completed", start=execution.start_time, end=end
        ),
        "timeline": plots.state_timeline(
            [(f"run {n}", ev) for n, ev in sorted(by_run.items())], end
        ),
        "events": events[:200],
        "stages": execution.stages.order_by("created_at", "stage_id")[:200],
        "logs": m.AppLog.objects.filter(execution_id=execution.execution_id).order_by(
            "-timestamp", "-id"
        )[:50],
        "log_count": m.AppLog.objects.filter(execution_id=execution.execution_id).count(),
        "by_type": facets.facet_counts({"execution_id": execution.execution_id})["msg_type"],
        "message_count": facets.count_from_rollup({"execution_id": execution.execution_id}),
    }
    return render_live(request, "front/execution_detail.html", context)


@reads_allowed
def run_list(request: HttpRequest) -> HttpResponse:
    runs = (
        m.Run.objects.select_related("state", "execution")
        .annotate(stf_count=Count("stf_files"))
        .order_by("-run_number")
    )
    filterset = f.RunFilter(request.GET, queryset=runs)
    return render_live(request, "front/run_list.html", {"page": paginate(request, filterset.qs)})


@reads_allowed
def run_detail(request: HttpRequest, run_number: int) -> HttpResponse:
    run = get_object_or_404(m.Run.objects.select_related("execution"), run_number=run_number)
    events = m.SystemStateEvent.history([run_number])
    end = run.end_time or timezone.now()
    stf_times = [
        gen or created for gen, created in run.stf_files.values_list("generated_at", "created_at")
    ]
    context = {
        "run": run,
        "state": m.RunState.objects.filter(run_number=run_number).first(),
        "events": events,
        "timeline": plots.state_timeline(
            [(f"run {run_number}", [(e.timestamp, *e.shown_state) for e in events])], end
        ),
        "stf_chart": plots.rate_chart(stf_times, STF_RATE_TITLE, start=run.start_time, end=end),
        "stf_files": run.stf_files.order_by("-sequence", "-created_at")[:100],
        "conditions": pretty_json(run.run_conditions),
    }
    return render_live(request, "front/run_detail.html", context)


@reads_allowed
def stf_list(request: HttpRequest) -> HttpResponse:
    filterset = f.StfFileFilter(request.GET, queryset=m.StfFile.objects.select_related("run"))
    return render_live(
        request,
        "front/stf_list.html",
        {"page": paginate(request, filterset.qs), "statuses": m.FileStatus.choices},
    )


@reads_allowed
def sample_list(request: HttpRequest) -> HttpResponse:
    filterset = f.FastMonFileFilter(
        request.GET, queryset=m.FastMonFile.objects.select_related("stf_file__run")
    )
    return render_live(request, "front/sample_list.html", {"page": paginate(request, filterset.qs)})


@reads_allowed
def slice_list(request: HttpRequest) -> HttpResponse:
    filterset = f.TFSliceFilter(request.GET, queryset=m.TFSlice.objects.all())
    return render_live(
        request,
        "front/slice_list.html",
        {"page": paginate(request, filterset.qs), "statuses": m.SliceStatus.choices},
    )


LOG_FACETS = (("instance_name", "Agent"), ("levelname", "Level"), ("execution_id", "Execution"))
LOG_FACET_LIMIT = 15


def _log_facets(request: HttpRequest, qs: Any) -> list[dict[str, Any]]:
    """Counts of the filtered logs by agent, level and execution (the most frequent first), with
    what is left out."""
    blocks = []
    for name, label in LOG_FACETS:
        counts = list(qs.order_by().values_list(name).annotate(n=Count("pk")).order_by("-n", name))
        shown = counts[:LOG_FACET_LIMIT]
        active = request.GET.get(name, "")
        blocks.append(
            {
                "name": name,
                "label": label,
                "items": [
                    {
                        "label": value or "(none)",
                        "count": n,
                        "selected": active == value and value != "",
                        "href": query_with(request, **{name: value}, page=None),
                    }
                    for value, n in shown
                ],
                "more": len(counts) - len(shown),
                "more_records": sum(n for _, n in counts[LOG_FACET_LIMIT:]),
                "clear": query_with(request, **{name: None, "page": None}) if active else None,
            }
        )
    return blocks


def agents_dropping_logs(namespace: str | None = None) -> list[tuple[m.SystemAgent, int]]:
    """Agents whose log buffer dropped records (their heartbeat counter ``log_records_dropped``),
    most first."""
    agents = m.SystemAgent.objects.all()
    if namespace:
        agents = agents.filter(namespace_id=namespace)
    rows = []
    for agent in agents:
        dropped = (
            agent.counters.get("log_records_dropped", 0) if isinstance(agent.counters, dict) else 0
        )
        if isinstance(dropped, int) and dropped > 0:
            rows.append((agent, dropped))
    return sorted(rows, key=lambda row: (-row[1], row[0].instance_name))


@reads_allowed
def log_list(request: HttpRequest) -> HttpResponse:
    filterset = f.AppLogFilter(request.GET, queryset=m.AppLog.objects.all())
    valid = filterset.is_valid()
    qs = filterset.qs if valid else m.AppLog.objects.none()
    namespace = request.GET.get("namespace") or None
    return render_live(
        request,
        "front/log_list.html",
        {
            "page": paginate(request, qs),
            "total": qs.count(),
            "errors": None if valid else filterset.errors,
            "facets": _log_facets(request, qs) if valid else [],
            "dropping": agents_dropping_logs(
                namespace if namespace and "\x00" not in namespace else None
            ),
            "levels": ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
            "rate_limited": refused_count(),
            "rate": getattr(settings, "SWF_API_ANONYMOUS_LOGS_RATE", ""),
        },
    )


# --------------------------------------------------------------------------- messages

MESSAGE_SORTS = {
    "-received_at": ("-received_at", "-id"),
    "received_at": ("received_at", "id"),
    "-sent_at": ("-sent_at", "-id"),
    "sent_at": ("sent_at", "id"),
    "msg_type": ("msg_type", "-received_at"),
    "sender": ("sender", "-received_at"),
}
SORT_LABELS = {
    "-received_at": "newest received",
    "received_at": "oldest received",
    "-sent_at": "newest sent",
    "sent_at": "oldest sent",
    "msg_type": "type",
    "sender": "sender",
}
FACET_SHOWN = 15
FACET_ALL = 1000
"""A facet lists its top values; "and N more" lists up to this many."""
FACET_LABELS = {
    "namespace": "Namespace",
    "execution_id": "Execution",
    "run_id": "Run",
    "msg_type": "Type",
    "sender": "Sender",
    "is_valid": "Validity",
}


@reads_allowed
def message_list(request: HttpRequest) -> HttpResponse:
    filterset = f.MessagePageFilter(
        request.GET, queryset=m.WorkflowMessage.objects.defer("body", "headers")
    )
    sort = request.GET.get("sort", "-received_at")
    if sort not in MESSAGE_SORTS:
        sort = "-received_at"
    if not filterset.is_valid():
        qs = m.WorkflowMessage.objects.none()
        active: dict[str, Any] = {}
        errors = filterset.errors
    else:
        qs = filterset.qs.order_by(*MESSAGE_SORTS[sort])
        active = {k: v for k, v in filterset.form.cleaned_data.items() if v not in (None, "")}
        errors = None
    facet_filters = filterset.facet_values()
    try:
        page_number = max(1, int(request.GET.get("page", "1")))
    except ValueError:
        page_number = 1
    offset = (page_number - 1) * PAGE_SIZE
    rows = list(qs[offset : offset + PAGE_SIZE + 1])
    has_next = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    total = facets.count_from_rollup(facet_filters) if facet_filters is not None else None
    facet_blocks = []
    if facet_filters is not None:
        expanded = request.GET.get("more", "")
        counted = facets.count_facets(
            facet_filters, limit=FACET_ALL if expanded in FACET_LABELS else FACET_SHOWN
        )
        for name, facet in counted.items():
            values = facet.values if name == expanded else facet.values[:FACET_SHOWN]
            items = []
            for value, count in values:
                shown = (
                    ("valid" if value else "invalid")
                    if name == "is_valid"
                    else (value if value not in ("", None) else "(none)")
                )
                param = (
                    ("true" if value else "false")
                    if name == "is_valid"
                    else ("" if value is None else value)
                )
                selected = name in active and str(active[name]).lower() == str(param).lower()
                items.append(
                    {
                        "label": shown,
                        "count": count,
                        "selected": selected,
                        "href": query_with(request, **{name: param}, page=None),
                    }
                )
            more = facet.size - len(items)
            facet_blocks.append(
                {
                    "name": name,
                    "label": FACET_LABELS[name],
                    "items": items,
                    "more": more,
                    "more_href": query_with(request, more=name) if more > 0 else None,
                    "less_href": query_with(request, more=None) if expanded == name else None,
                    "clear": query_with(request, **{name: None, "page": None})
                    if name in active
                    else None,
                }
            )
    context = {
        "rows": rows,
        "active": active,
        "errors": errors,
        "facets": facet_blocks,
        "total": total,
        "page_number": page_number,
        "last_page": ((total - 1) // PAGE_SIZE + 1) if total else None,
        "has_next": has_next,
        "next_href": query_with(request, page=page_number + 1) if has_next else None,
        "prev_href": query_with(request, page=page_number - 1) if page_number > 1 else None,
        "sort": sort,
        "sort_links": {
            key: (SORT_LABELS[key], query_with(request, sort=key, page=None))
            for key in MESSAGE_SORTS
        },
        "form": filterset.form,
        "heartbeats_hidden": request.GET.get("exclude_type") == "heartbeat",
        "hide_heartbeats_href": query_with(request, exclude_type="heartbeat", page=None),
        "show_heartbeats_href": query_with(request, exclude_type=None, page=None),
        "clear_all": "?",
    }
    return render_live(request, "front/message_list.html", context)


@reads_allowed
def message_detail(request: HttpRequest, pk: int) -> HttpResponse:
    message = get_object_or_404(m.WorkflowMessage, pk=pk)
    body = message.parsed_body()
    agent = None
    if message.sender:
        agent = m.SystemAgent.objects.filter(
            instance_name=message.sender,
            **({"namespace_id": message.namespace_id} if message.namespace_id else {}),
        ).first()
    context = {
        "message": message,
        "flat": flatten(body) if not isinstance(body, str) else [],
        "body_is_json": not isinstance(body, str),
        "pretty_body": pretty_json(body) if not isinstance(body, str) else body,
        "headers": sorted((message.headers or {}).items()),
        "extra_fields": sorted((k, json.dumps(v)) for k, v in message.extra_fields().items())
        if message.is_valid
        else [],
        "agent": agent,
        "execution": m.WorkflowExecution.objects.filter(execution_id=message.execution_id).first()
        if message.execution_id
        else None,
        "run": m.Run.objects.filter(run_number=message.run_id).first()
        if message.run_id is not None
        else None,
    }
    return render_live(request, "front/message_detail.html", context)

"""The MCP server through the SDK's own client: over stdio (``swf-testbed mcp``) and over HTTP
(``/mcp/``).

Against a real monitor: the embedded broker, the ingest process recording a
run sent the way the DAQ sends it, the monitor web under uvicorn; the stdio
server is ``swf-testbed mcp`` as a child process on the same database.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from swf_testbed.monitor.mcp_server import TOOLS, WRITE_TOOLS
from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import RUN_TOPIC, control_queue
from swf_testbed.testing.brokers import BrokerProcess
from swf_testbed.testing.monitor import MonitorWebProcess

from .ingestlib import IngestProcess, database_url_of_tests, wait_for, wait_until_ingesting
from .test_stream import run_messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

EXPECTED_TOOLS = {fn.__name__ for fn, _ in TOOLS} | {"list_available_tools"}


@pytest.fixture
def world(embedded_broker: BrokerProcess) -> Iterator[dict[str, Any]]:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    from swf_testbed.monitor.api import models as m

    staff = User.objects.create_user("mcp-staff", password="x" * 12, is_staff=True)
    reader = User.objects.create_user("mcp-reader", password="x" * 12)
    ns = f"mcp-{uuid.uuid4().hex[:6]}"
    m.Namespace.objects.create(name=ns, owner="alice")
    definition = m.WorkflowDefinition.objects.create(workflow_name="stf_datataking", version="1")
    m.WorkflowExecution.objects.create(
        execution_id="exec-MCP",
        workflow_definition=definition,
        namespace_id=ns,
        status="running",
        executed_by="alice",
    )
    ingest = IngestProcess(embedded_broker, "--client-id", f"mcp-{uuid.uuid4().hex[:8]}").start()
    web = MonitorWebProcess(database_url_of_tests(), env=embedded_broker.env).start()
    client = BrokerClient(embedded_broker.settings(), client_name="mcp-test").start(wait=30)
    try:
        wait_until_ingesting(client, ingest)
        run = run_messages(ns, "exec-MCP", 7301, 4)
        for msg in run:
            client.send(RUN_TOPIC, msg)
        wait_for(
            lambda: m.WorkflowMessage.objects.filter(namespace_id=ns).count() == len(run),
            60,
            "the run",
        )
        m.AppLog.objects.create(
            app_name="agent",
            instance_name="daq-1",
            timestamp=run[0].timestamp,
            level=20,
            levelname="INFO",
            message="run started",
            extra_data={"execution_id": "exec-MCP"},
        )
        yield {
            "ns": ns,
            "web": web,
            "broker": embedded_broker,
            "client": client,
            "staff": Token.objects.create(user=staff).key,
            "reader": Token.objects.create(user=reader).key,
        }
    finally:
        client.close()
        web.stop()
        ingest.stop()


def http_client(world: dict[str, Any], token: str) -> Client:
    http = httpx2.AsyncClient(headers={"Authorization": f"Token {token}"}, timeout=60)
    return Client(streamable_http_client(world["web"].url + "/mcp/", http_client=http))


def stdio_client(world: dict[str, Any], token: str) -> Client:
    env = {
        **world["broker"].env,
        "DATABASE_URL": database_url_of_tests(),
        "SWF_API_TOKEN": token,
        "SWF_HOME": str(world["web"].home),
    }
    return Client(
        StdioServerParameters(
            command=sys.executable,
            args=["-c", "from swf_testbed.cli import main; main()", "mcp"],
            env=env,
        )
    )


def text(result: Any) -> str:
    return "".join(getattr(block, "text", "") for block in result.content)


def read_calls(world: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """One call of every read tool, with arguments that find the run."""
    from swf_testbed.monitor.api import models as m

    ns = world["ns"]
    stf = (
        m.StfFile.objects.filter(run__run_number=7301)
        .values_list("stf_filename", flat=True)
        .first()
    )
    message = m.WorkflowMessage.objects.filter(namespace_id=ns).values_list("id", flat=True).first()
    agent = m.SystemAgent.objects.values_list("instance_name", flat=True).first()
    log = m.AppLog.objects.values_list("id", flat=True).first()
    assert stf and message and agent and log
    return {
        "list_available_tools": {},
        "get_system_state": {},
        "list_agents": {"limit": 5},
        "get_agent": {"name": agent},
        "list_namespaces": {},
        "get_namespace": {"name": ns},
        "list_workflow_definitions": {},
        "list_workflow_executions": {"namespace": ns, "status": "running"},
        "get_workflow_execution": {"execution_id": "exec-MCP"},
        "list_messages": {
            "namespace": ns,
            "msg_type": "stf_gen",
            "limit": 2,
            "start_time": "2000-01-01T00:00:00Z",
        },
        "get_message": {"message_id": message},
        "list_runs": {"execution_id": "exec-MCP"},
        "get_run": {"run_number": 7301},
        "list_stf_files": {"run_number": 7301},
        "get_stf_file": {"stf_filename": stf},
        "list_tf_slices": {"run_number": 7301},
        "list_logs": {"execution_id": "exec-MCP"},
        "get_log_entry": {"log_id": log},
        "get_testbed_status": {"namespace": ns},
        "get_workflow_monitor": {"execution_id": "exec-MCP"},
        "list_workflow_monitors": {"namespace": ns},
    }


HOSTILE = [
    ("list_messages", {"limit": 10**9}, "limit"),
    ("list_messages", {"offset": -5}, "offset"),
    ("list_runs", {"start_time": "yesterday'; DROP TABLE api_run; --"}, "start_time"),
    ("get_workflow_execution", {"execution_id": "' OR 1=1 --"}, "no execution"),
    ("get_run", {"run_number": 10**30}, ""),
    ("get_namespace", {"name": "x" * 10_000}, "longer than"),
    ("get_agent", {"name": "\x00"}, "NUL"),
    ("list_tf_slices", {"run_number": "not a number"}, ""),
]
WRITER_HOSTILE = [
    ("end_execution", {"execution_id": "exec-MCP", "status": "exploded"}, "status must be"),
    ("end_execution", {"execution_id": "no-such-execution"}, "no execution"),
    ("stop_workflow", {"namespace": "", "execution_id": ""}, "both needed"),
]


async def exercise(
    client: Client, calls: dict[str, dict[str, Any]], *, writer: bool
) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with client:
        tools = await client.list_tools()
        seen["tools"] = {t.name: t for t in tools.tools}
        for name, arguments in calls.items():
            result = await client.call_tool(name, arguments)
            assert not result.is_error, (name, text(result))
            seen[name] = json.loads(text(result))
        for name, arguments, words in [*HOSTILE, *(WRITER_HOSTILE if writer else [])]:
            result = await client.call_tool(name, arguments)
            message = text(result)
            assert result.is_error, (name, arguments, message)
            assert words in message and "Traceback" not in message, (name, message)
        stop = await client.call_tool(
            "stop_workflow",
            {
                "namespace": calls["get_namespace"]["name"],
                "execution_id": "exec-MCP",
                "reason": "test",
            },
        )
        seen["stop_workflow"] = (stop.is_error, text(stop))
        if writer:
            start = await client.call_tool(
                "start_workflow",
                {
                    "namespace": calls["get_namespace"]["name"],
                    "config": "fast_processing",
                    "time_scale": 0,
                },
            )
            assert not start.is_error, text(start)
            seen["start_workflow"] = json.loads(text(start))
            bad = await client.call_tool("start_workflow", {"namespace": "bad namespace!"})
            assert bad.is_error and "namespace" in text(bad)
    return seen


def check_reads(seen: dict[str, Any], ns: str) -> None:
    assert set(seen["tools"]) == EXPECTED_TOOLS
    assert all(len(t.description or "") > 30 for t in seen["tools"].values())
    assert seen["get_system_state"]["executions_by_status"]["running"] >= 1
    assert seen["list_messages"]["total"] == 4 and len(seen["list_messages"]["items"]) == 2
    assert seen["list_messages"]["next_offset"] == 2
    assert seen["get_run"]["run_number"] == 7301 and seen["get_run"]["stf_files"] == 4
    assert seen["list_stf_files"]["total"] == 4
    assert (
        seen["get_workflow_monitor"]["stf_produced"] == 4
        and seen["get_workflow_monitor"]["end_run"] is True
    )
    assert seen["list_workflow_monitors"]["items"][0]["execution_id"] == "exec-MCP"
    assert seen["get_testbed_status"]["namespace"] == ns
    assert seen["list_logs"]["items"][0]["message"] == "run started"
    assert seen["get_message"]["body"]["namespace"] == ns


class ControlListener:
    """What reaches a namespace's control queue (where the runner listens)."""

    def __init__(self, world: dict[str, Any]) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = BrokerClient(world["broker"].settings(), client_name="mcp-control").start(
            wait=30
        )
        self.client.subscribe(control_queue(world["ns"]), self._on)

    def _on(self, delivery: Any) -> None:
        with self.lock:
            self.bodies.append(json.loads(delivery.body))

    def types(self) -> list[str]:
        with self.lock:
            return [b["msg_type"] for b in self.bodies]


def test_http_mcp_needs_a_token(world: dict[str, Any]) -> None:
    url = world["web"].url + "/mcp/"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Token nope"}):
        reply = httpx.post(url, json=body, headers=headers, timeout=30)
        assert reply.status_code == 401 and "Token" in reply.json()["detail"]
    assert (
        httpx.get(world["web"].url + "/", timeout=30).status_code == 200
    )  # Django still serves the rest


def test_every_tool_over_http_with_write_permission(world: dict[str, Any]) -> None:
    control = ControlListener(world)
    try:
        seen = asyncio.run(
            exercise(http_client(world, world["staff"]), read_calls(world), writer=True)
        )
        check_reads(seen, world["ns"])
        assert seen["list_available_tools"]["can_write"] is True
        assert seen["stop_workflow"][0] is False
        wait_for(
            lambda: sorted(control.types()) == ["run_workflow", "stop_workflow"],
            60,
            "the control messages",
        )
        run_workflow = next(b for b in control.bodies if b["msg_type"] == "run_workflow")
        assert run_workflow["msg_id"] == seen["start_workflow"]["msg_id"]
        assert (
            run_workflow["namespace"] == world["ns"] and run_workflow["config"] == "fast_processing"
        )
    finally:
        control.client.close()

    async def end() -> Any:
        async with http_client(world, world["staff"]) as client:
            return await client.call_tool("end_execution", {"execution_id": "exec-MCP"})

    result = asyncio.run(end())
    assert not result.is_error, text(result)
    from swf_testbed.monitor.api.models import WorkflowExecution

    execution = WorkflowExecution.objects.get(execution_id="exec-MCP")
    assert execution.status == "terminated" and execution.end_time is not None


def test_every_tool_over_stdio_read_only(world: dict[str, Any]) -> None:
    """A plain user's token reads everything and is refused every write."""
    seen = asyncio.run(
        exercise(stdio_client(world, world["reader"]), read_calls(world), writer=False)
    )
    check_reads(seen, world["ns"])
    assert seen["list_available_tools"]["can_write"] is False
    refused, message = seen["stop_workflow"]
    assert refused and "permission denied" in message

    async def writes() -> list[Any]:
        async with http_client(world, world["reader"]) as client:
            return [
                await client.call_tool(name, {"namespace": world["ns"], "execution_id": "exec-MCP"})
                for name in sorted(WRITE_TOOLS)
            ]

    for result in asyncio.run(writes()):
        assert result.is_error and "permission denied" in text(result)
    from swf_testbed.monitor.api.models import WorkflowExecution

    assert WorkflowExecution.objects.get(execution_id="exec-MCP").status == "running"

"""The server: the tool list, and the stdio and streamable-HTTP transports."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from asgiref.sync import sync_to_async
from mcp.server.mcpserver import MCPServer

from swf_testbed.monitor.mcp_server.agents import (
    get_agent,
    get_namespace,
    get_system_state,
    get_testbed_status,
    list_agents,
    list_namespaces,
)
from swf_testbed.monitor.mcp_server.common import (
    Caller,
    as_tool,
    caller_of_token,
    current_caller,
    dumps,
    request_caller,
    set_stdio_caller,
)
from swf_testbed.monitor.mcp_server.control import (
    end_execution,
    start_workflow,
    stop_workflow,
)
from swf_testbed.monitor.mcp_server.records import (
    get_log_entry,
    get_message,
    list_logs,
    list_messages,
)
from swf_testbed.monitor.mcp_server.runs import (
    get_run,
    get_stf_file,
    get_tf_slice,
    list_runs,
    list_stf_files,
    list_tf_slices,
)
from swf_testbed.monitor.mcp_server.workflows import (
    get_workflow_execution,
    get_workflow_monitor,
    list_workflow_definitions,
    list_workflow_executions,
    list_workflow_monitors,
)

TOOLS: list[tuple[Callable[..., str], str]] = [
    (
        get_system_state,
        "The whole monitor at a glance: namespaces, agents by liveness (ok/late/down/exited), "
        "executions by status and the running ones, total messages, runs, the latest run state.",
    ),
    (
        list_agents,
        "Agents (one page): name, type, namespace, liveness from the last heartbeat, operational "
        "state, host, pid. Filter by namespace, agent_type, last heartbeat in [start_time, "
        "end_time).",
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
        "(running/completed/terminated/failed), times. Filter by namespace, status, start in "
        "[start_time, end_time).",
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
        "Runs, newest first: run number, execution, times, STF count. Filter by namespace, "
        "execution_id, start in [start_time, end_time).",
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
        "TF slices: run, STF, TF range, status, worker. Filter by run_number, status, "
        "stf_filename, created in [start_time, end_time).",
    ),
    (get_tf_slice, "One TF slice by its id (from list_tf_slices)."),
    (
        list_logs,
        "Application logs, newest first. Filter by execution_id, instance_name, app_name, "
        "min_level (20 = INFO, 30 = WARNING, 40 = ERROR), time in [start_time, end_time).",
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
        "WRITE. Ask a namespace's workflow runner to start a workflow: sends run_workflow to its "
        "control queue and returns the request's msg_id (the runner replies workflow_started). "
        "Needs write permission.",
    ),
    (
        stop_workflow,
        "WRITE. Ask the runner to stop an execution cleanly (stop_workflow: end_run is sent, the "
        "execution ends terminated). Needs write permission.",
    ),
    (
        end_execution,
        "WRITE. Mark an execution ended in the monitor (status terminated, failed or completed) "
        "when its runner is gone and it shows running for ever; sends nothing. Needs write "
        "permission.",
    ),
]
WRITE_TOOLS = frozenset({"start_workflow", "stop_workflow", "end_execution"})


def build_server() -> MCPServer:
    from swf_testbed import __version__

    server = MCPServer(
        "swf-testbed",
        version=__version__,
        instructions=(
            "Tools over the swf-testbed monitor (ePIC streaming workflow testbed): agents, "
            "namespaces, workflow executions, runs, STF files, TF slices, messages, logs, live "
            "progress; start and stop workflows. Results are compact JSON; lists are pages (limit "
            "<= 500, offset, total, next_offset); times are ISO 8601."
        ),
    )
    for fn, description in TOOLS:
        server.add_tool(
            as_tool(fn), name=fn.__name__, description=description, structured_output=False
        )

    names = [fn.__name__ for fn, _ in TOOLS]

    async def list_available_tools() -> str:
        return dumps(
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
    """``swf-testbed mcp``: serve the tools over stdio (writes when
    ``token`` has write permission).
    """
    from swf_testbed import monitor

    monitor.setup()
    caller = caller_of_token(token) if token else Caller()
    if caller is None:
        raise SystemExit("SWF_API_TOKEN is not a valid token of this monitor's database")
    set_stdio_caller(caller)
    build_server().run("stdio")


def http_app() -> Any:
    """The ASGI app of ``/mcp/``: token auth and the Host check in front of the SDK's streamable
    HTTP app.
    """
    from django.conf import settings
    from django.http.request import split_domain_port, validate_host
    from mcp.server.transport_security import TransportSecuritySettings

    inner = build_server().streamable_http_app(
        streamable_http_path="/mcp/",
        stateless_http=True,
        json_response=True,
        # the Host is checked below against Django's ALLOWED_HOSTS; a token header is no ambient
        # credential
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
        reset = request_caller.set(caller)
        try:
            await inner(scope, receive, send)
        finally:
            request_caller.reset(reset)

    return app

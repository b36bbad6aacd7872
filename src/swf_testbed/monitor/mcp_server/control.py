"""The tools that write: start and stop a workflow, end an execution."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from swf_testbed.monitor.mcp_server.common import (
    SENDER,
    api_models,
    dumps,
    text_arg,
    writer,
)


def _send_control(namespace: str, msg: Any) -> None:
    from swf_testbed.mq.client import BrokerClient
    from swf_testbed.mq.destinations import control_queue
    from swf_testbed.settings import get_settings

    client = BrokerClient(get_settings().broker, client_name=SENDER)
    try:
        client.start(wait=15)
        client.send(control_queue(namespace), msg, timeout=15.0)
    except Exception as exc:  # noqa: BLE001 - any failure to reach the broker is the tool's error
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
    caller = writer()
    from pydantic import ValidationError

    from swf_testbed.errors import describe
    from swf_testbed.messages import RunWorkflow

    try:
        msg = RunWorkflow(
            namespace=text_arg("namespace", namespace, 128),
            sender=SENDER,
            workflow_name=text_arg("workflow_name", workflow_name),
            config=text_arg("config", config),
            time_scale=time_scale,
            duration=duration,
            params=dict(params or {}),
        )
    except ValidationError as exc:
        raise ToolError("bad argument: " + describe(exc)) from None
    _send_control(msg.namespace or "", msg)
    return dumps(
        {
            "sent": "run_workflow",
            "msg_id": msg.msg_id,
            "namespace": msg.namespace,
            "by": caller.username,
            "next": "the runner answers with workflow_started (list_messages "
            "msg_type=workflow_started)",
        }
    )


def stop_workflow(
    namespace: str, execution_id: str, reason: str = "stopped by an assistant"
) -> str:
    caller = writer()
    from swf_testbed.messages import StopWorkflow

    execution_id, namespace = (
        text_arg("execution_id", execution_id),
        text_arg("namespace", namespace, 128),
    )
    if not execution_id or not namespace:
        raise ToolError("namespace and execution_id are both needed")
    msg = StopWorkflow(
        namespace=namespace,
        sender=SENDER,
        execution_id=execution_id,
        reason=text_arg("reason", reason, 1000),
    )
    _send_control(namespace, msg)
    return dumps(
        {
            "sent": "stop_workflow",
            "msg_id": msg.msg_id,
            "execution_id": execution_id,
            "by": caller.username,
        }
    )


def end_execution(execution_id: str, status: str = "terminated") -> str:
    caller = writer()
    m = api_models()
    from django.utils import timezone

    execution_id = text_arg("execution_id", execution_id)
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
    return dumps(
        {
            "execution_id": execution_id,
            "status": status,
            "end_time": execution.end_time,
            "by": caller.username,
        }
    )

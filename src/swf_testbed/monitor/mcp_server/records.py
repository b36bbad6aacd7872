"""Tools about what was recorded: the messages and the agents' logs."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from swf_testbed.monitor.mcp_server.common import (
    DEFAULT_LIMIT,
    LOG_FIELDS,
    MESSAGE_FIELDS,
    api_models,
    dumps,
    get_one,
    in_range,
    page_of,
    text_arg,
    where,
)


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
    qs = where(
        api_models().WorkflowMessage.objects.all(),
        namespace_id=text_arg("namespace", namespace),
        execution_id=text_arg("execution_id", execution_id),
        msg_type=text_arg("msg_type", msg_type),
        sender=text_arg("sender", sender),
        run_id=run_id,
    )
    qs = in_range(qs, "received_at", start_time, end_time)
    return page_of(qs, MESSAGE_FIELDS, limit, offset, order=("-received_at", "-id"))


def get_message(message_id: int) -> str:
    m = api_models()
    msg = m.WorkflowMessage.objects.filter(id=message_id).first()
    if msg is None:
        raise ToolError(f"no message with id {message_id}")
    return dumps(
        {
            **{f: getattr(msg, "namespace_id" if f == "namespace" else f) for f in MESSAGE_FIELDS},
            "body": msg.parsed_body(),
            "validation_error": msg.validation_error,
        }
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
    qs = where(
        api_models().AppLog.objects.all(),
        execution_id=text_arg("execution_id", execution_id),
        instance_name=text_arg("instance_name", instance_name),
        app_name=text_arg("app_name", app_name),
        level__gte=min_level or None,
    )
    qs = in_range(qs, "timestamp", start_time, end_time)
    return page_of(qs, LOG_FIELDS, limit, offset, order=("-timestamp", "-id"))


def get_log_entry(log_id: int) -> str:
    return get_one(
        api_models().AppLog.objects.filter(id=log_id),
        f"log record with id {log_id}",
        [*LOG_FIELDS, "extra_data"],
    )

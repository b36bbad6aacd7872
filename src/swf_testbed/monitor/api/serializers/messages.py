"""Serializers of the recorded messages and the agents' logs."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.serializers.fields import (
    ModelSerializer,
    NamespaceField,
)


class WorkflowMessageSerializer(ModelSerializer[m.WorkflowMessage]):
    body = serializers.SerializerMethodField(
        help_text="the body as JSON, or as text when it is not JSON"
    )
    # Names the existing ePIC monitor uses for the same values.
    message_type = serializers.CharField(source="msg_type", read_only=True)
    sender_agent = serializers.CharField(source="sender", read_only=True)
    message_content = serializers.SerializerMethodField()
    namespace = NamespaceField(read_only=True)

    class Meta:
        model = m.WorkflowMessage
        fields = [
            "id",
            "msg_id",
            "msg_type",
            "namespace",
            "execution_id",
            "run_id",
            "sender",
            "recipient",
            "destination",
            "sent_at",
            "received_at",
            "schema_version",
            "is_valid",
            "error_reason",
            "validation_error",
            "projection_error",
            "body",
            "headers",
            "dialect",
            "message_type",
            "sender_agent",
            "message_content",
        ]
        read_only_fields = fields

    def get_body(self, obj: m.WorkflowMessage) -> Any:
        return obj.parsed_body()

    def get_message_content(self, obj: m.WorkflowMessage) -> Any:
        return obj.parsed_body()


class AppLogSerializer(ModelSerializer[m.AppLog]):
    namespace = NamespaceField(read_only=True)

    class Meta:
        model = m.AppLog
        fields = [
            "id",
            "app_name",
            "instance_name",
            "timestamp",
            "level",
            "levelname",
            "message",
            "module",
            "funcname",
            "lineno",
            "process",
            "thread",
            "extra_data",
            "execution_id",
            "run_id",
            "namespace",
            "source_msg_id",
        ]
        read_only_fields = ["id", "execution_id", "run_id", "namespace", "source_msg_id"]
        extra_kwargs = {"message": {"allow_blank": True}}

    def validate_extra_data(self, value: Any) -> Any:
        if value is not None and not isinstance(value, dict):
            raise serializers.ValidationError("must be an object or null")
        return value

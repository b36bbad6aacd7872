"""Serializers of namespaces, agents, heartbeats and subscribers."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone
from rest_framework import serializers

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.serializers.fields import (
    ModelSerializer,
    NamespaceField,
    check_name,
)


class NamespaceSerializer(ModelSerializer[m.Namespace]):
    class Meta:
        model = m.Namespace
        fields = ["id", "name", "owner", "description", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class EnsureNamespaceSerializer(serializers.Serializer[Any]):
    name = serializers.CharField(max_length=128)
    owner = serializers.CharField(max_length=150, required=False, allow_blank=True, default="")
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)

    def validate_name(self, value: str) -> str:
        return check_name(value)


class SystemAgentSerializer(ModelSerializer[m.SystemAgent]):
    namespace = NamespaceField()
    liveness = serializers.SerializerMethodField()

    class Meta:
        model = m.SystemAgent
        fields = [
            "id",
            "instance_name",
            "agent_type",
            "namespace",
            "description",
            "status",
            "operational_state",
            "instance_id",
            "pid",
            "hostname",
            "mq_connected",
            "heartbeat_interval",
            "last_heartbeat",
            "liveness",
            "workflow_enabled",
            "current_stf_count",
            "total_stf_processed",
            "counters",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "liveness", "created_at", "updated_at"]

    def get_liveness(self, obj: m.SystemAgent) -> str:
        return obj.liveness().value


class HeartbeatSerializer(serializers.Serializer[Any]):
    """``POST /api/systemagents/heartbeat/``: the payload existing agents send (plus ours)."""

    instance_name = serializers.CharField(max_length=200)
    agent_type = serializers.CharField(max_length=100, required=False, allow_blank=True)
    status = serializers.ChoiceField(choices=m.AGENT_STATUS_CHOICES, required=False)
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    mq_connected = serializers.BooleanField(required=False, allow_null=True)
    pid = serializers.IntegerField(
        required=False, allow_null=True, min_value=0, max_value=2**31 - 1
    )
    hostname = serializers.CharField(max_length=255, required=False, allow_blank=True)
    operational_state = serializers.ChoiceField(choices=m.OPERATIONAL_STATE_CHOICES, required=False)
    namespace = serializers.CharField(
        max_length=128, required=False, allow_null=True, allow_blank=True
    )
    workflow_enabled = serializers.BooleanField(required=False)
    current_stf_count = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
    total_stf_processed = serializers.IntegerField(required=False, min_value=0, max_value=2**31 - 1)
    instance_id = serializers.CharField(max_length=200, required=False, allow_blank=True)
    heartbeat_interval = serializers.FloatField(
        required=False, allow_null=True, min_value=0.001, max_value=86400
    )
    counters = serializers.DictField(child=serializers.IntegerField(), required=False)
    metadata = serializers.DictField(required=False)

    def validate_namespace(self, value: str | None) -> str | None:
        return check_name(value) if value else None

    def save_heartbeat(self, extra: dict[str, Any]) -> tuple[m.SystemAgent, bool]:
        """Create or update the agent; only the fields sent change. Returns (agent, created).

        ``extra`` holds fields sent that this API does not know; they are kept in ``metadata``.
        """
        data = dict(self.validated_data)
        name = data.pop("instance_name")
        namespace = data.pop("namespace", None)
        if extra:
            data["metadata"] = {**(data.get("metadata") or {}), **extra}
        data["last_heartbeat"] = timezone.now()
        if data.get("status") == msgs.AgentStatus.EXITED and "operational_state" not in data:
            data["operational_state"] = msgs.OperationalState.EXITED.value
        for attempt in (1, 2):
            try:
                with transaction.atomic():
                    if namespace:
                        m.Namespace.ensure({namespace})
                        candidates = m.SystemAgent.objects.filter(
                            namespace_id=namespace, instance_name=name
                        )
                    else:
                        candidates = m.SystemAgent.objects.filter(instance_name=name).order_by(
                            F("namespace").asc(nulls_first=True)
                        )
                    agent = candidates.select_for_update().first()
                    created = agent is None
                    if agent is None:
                        agent = m.SystemAgent(instance_name=name, namespace_id=namespace)
                    elif "metadata" in data:
                        kept = agent.metadata if isinstance(agent.metadata, dict) else {}
                        data["metadata"] = {**kept, **data["metadata"]}
                    for field, value in data.items():
                        setattr(agent, field, value)
                    agent.save()
                    return agent, created
            except IntegrityError:
                if attempt == 2:
                    raise
                # a concurrent first heartbeat created it: update that one
        raise AssertionError("unreachable")


class SubscriberSerializer(ModelSerializer[m.Subscriber]):
    class Meta:
        model = m.Subscriber
        fields = [
            "subscriber_id",
            "subscriber_name",
            "fraction",
            "description",
            "is_active",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["subscriber_id", "created_at", "updated_at"]
        extra_kwargs = {"description": {"allow_null": False}}

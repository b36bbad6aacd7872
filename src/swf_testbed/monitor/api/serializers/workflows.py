"""Serializers of workflow definitions, executions and stages."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.serializers.fields import (
    JSONObjectField,
    ModelSerializer,
    NamespaceField,
)


class WorkflowDefinitionSerializer(ModelSerializer[m.WorkflowDefinition]):
    class Meta:
        model = m.WorkflowDefinition
        fields = [
            "id",
            "workflow_name",
            "version",
            "workflow_type",
            "definition",
            "parameter_values",
            "created_by",
            "created_at",
        ]
        read_only_fields = ["id", "created_at"]


class WorkflowExecutionSerializer(ModelSerializer[m.WorkflowExecution]):
    namespace = NamespaceField()
    workflow_name = serializers.SerializerMethodField()
    stf_count = serializers.SerializerMethodField(help_text="STF files of the execution's runs")

    class Meta:
        model = m.WorkflowExecution
        fields = [
            "execution_id",
            "workflow_definition",
            "workflow_name",
            "namespace",
            "status",
            "parameter_values",
            "performance_metrics",
            "executed_by",
            "start_time",
            "end_time",
            "error",
            "stf_count",
        ]
        extra_kwargs = {
            "workflow_definition": {"required": True, "allow_null": False},
            "start_time": {"required": False},
        }

    def get_workflow_name(self, obj: m.WorkflowExecution) -> str:
        return obj.workflow_name

    def get_stf_count(self, obj: m.WorkflowExecution) -> int:
        # annotated on lists and details; counted for the answer to a create or an update
        annotated = getattr(obj, "stf_count", None)
        return (
            int(annotated)
            if annotated is not None
            else m.StfFile.objects.filter(run__execution=obj).count()
        )

    def update(
        self, instance: m.WorkflowExecution, validated_data: dict[str, Any]
    ) -> m.WorkflowExecution:
        if (
            "execution_id" in validated_data
            and validated_data["execution_id"] != instance.execution_id
        ):
            raise serializers.ValidationError({"execution_id": "cannot be changed"})
        return super().update(instance, validated_data)


class WorkflowStageSerializer(ModelSerializer[m.WorkflowStage]):
    """A stage as the v28 processing agent sends it; every field is optional.

    Fields the model does not have are kept, merged into ``metadata`` (a value
    given in ``metadata`` wins), so nothing an agent sends is lost.
    """

    id = serializers.IntegerField(
        source="stage_id", read_only=True, help_text="the same as stage_id"
    )
    execution_id = serializers.SlugRelatedField(
        source="execution",
        slug_field="execution_id",
        queryset=m.WorkflowExecution.objects.all(),
        required=False,
        allow_null=True,
        help_text="linked from run_number or stf_filename when not given",
    )
    agent: serializers.PrimaryKeyRelatedField[m.SystemAgent] = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text="the SystemAgent of agent_name, if known"
    )
    metadata = JSONObjectField(required=False, allow_null=True)

    class Meta:
        model = m.WorkflowStage
        fields = [
            "stage_id",
            "id",
            "execution_id",
            "agent",
            "agent_name",
            "agent_type",
            "status",
            "run_number",
            "stf_filename",
            "started_at",
            "completed_at",
            "error",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["stage_id", "created_at", "updated_at"]

    def to_internal_value(self, data: Any) -> Any:
        validated = super().to_internal_value(data)
        if isinstance(data, dict):
            extra = {k: v for k, v in data.items() if k not in self.fields}
            if extra:
                given = validated.get("metadata")
                if given is None and self.instance is not None and "metadata" not in data:
                    given = self.instance.metadata
                validated["metadata"] = {**extra, **(given or {})}
        return validated

    def save(self, **kwargs: Any) -> m.WorkflowStage:
        stage = super().save(**kwargs)
        before = (stage.execution_id, stage.agent_id)
        stage.link()
        if (stage.execution_id, stage.agent_id) != before:
            stage.save(update_fields=["execution", "agent"])
        return stage

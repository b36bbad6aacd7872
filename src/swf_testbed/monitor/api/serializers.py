"""Serializers: field names and payloads of the existing ePIC testbed monitor, validated."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from django.db import IntegrityError, models, transaction
from django.db.models import F
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from swf_testbed import messages as msgs
from swf_testbed.messages import NAME_PATTERN
from swf_testbed.monitor.api import models as m
from swf_testbed.settings import get_settings

_NAME_RE = re.compile(NAME_PATTERN)
_M = TypeVar("_M", bound=models.Model)


def check_name(value: str, what: str = "namespace") -> str:
    if not _NAME_RE.match(value):
        raise serializers.ValidationError(
            f"invalid {what} {value[:80]!r}: letters, digits and _ . : @ - only, at most 128 characters"
        )
    return value


class NamespaceField(serializers.SlugRelatedField):
    """A namespace by name; an unknown but well-formed name is created."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("slug_field", "name")
        kwargs.setdefault("queryset", m.Namespace.objects.all())
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> m.Namespace:
        if not isinstance(data, str):
            raise serializers.ValidationError(
                f"a namespace name (string) is required, not {type(data).__name__}"
            )
        check_name(data)
        m.Namespace.ensure({data})
        return m.Namespace.objects.get(name=data)


@extend_schema_field(OpenApiTypes.OBJECT)
class JSONObjectField(serializers.JSONField):
    """A JSON object (or null where the column allows it), for the models' ``default=dict`` JSON columns.

    The code that reads these columns merges and iterates them as dicts (heartbeats
    merge ``metadata``, the agent page lists ``counters``, the ingest merges
    ``metadata``/``performance_metrics``), so another JSON value is a 400 here,
    not a 500 later. DRF also checks for null before it parses a form value, so
    ``counters=null`` in a form would otherwise reach a NOT NULL column.
    """

    def to_internal_value(self, data: Any) -> Any:
        value = super().to_internal_value(data)
        if value is None:
            if not self.allow_null:
                self.fail("null")
            return value
        if not isinstance(value, dict):
            raise serializers.ValidationError(f"must be a JSON object, not {type(value).__name__}")
        return value


class DateTimeField(serializers.DateTimeField):
    """A time; a naive one (as the ePIC v28 agents send) is read in ``SWF_LEGACY_TIMEZONE``, like their messages."""

    def enforce_timezone(self, value: datetime) -> datetime:
        if timezone.is_naive(value):
            value = value.replace(tzinfo=get_settings().legacy_zone)
        return super().enforce_timezone(value)


class ModelSerializer(serializers.ModelSerializer[_M]):
    # The monitor's model serializers: the models' JSON columns take JSON objects, naive times are read in the
    # legacy zone. (A comment, not a docstring: the schema would show it on every component.)
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.JSONField: JSONObjectField,
        models.DateTimeField: DateTimeField,
    }

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        # DRF builds a model serializer's fields from the model on every instance (a third of a log post's
        # time). They depend on the class alone here (Meta, declared fields, the model), so they are built
        # once per class and each instance gets a fresh copy, as DRF does for a plain serializer's fields.
        cls = type(self)
        template = cls.__dict__.get("_field_template")
        if template is None:
            template = super().get_fields()
            cls._field_template = template  # type: ignore[attr-defined]
        return copy.deepcopy(template)


class MergingCreate:
    """A create that merges into the row a message already made (``merged`` then says so; the view answers 200).

    The ePIC v28 agents POST what their messages also announce (a run, an STF
    file, a run state); whichever arrives first makes the row, the other fills it in.
    """

    merged = False

    def create_or_merge(
        self, find: Callable[[], Any], create: Callable[[], Any], merge: Callable[[Any], Any]
    ) -> Any:
        for attempt in (1, 2):
            with transaction.atomic():
                existing = find()
                if existing is not None:
                    self.merged = True
                    return merge(existing)
                try:
                    with transaction.atomic():
                        return create()
                except IntegrityError:
                    if attempt == 2:
                        raise
                    # made concurrently (by the ingest): merge into that one
        raise AssertionError("unreachable")


# --------------------------------------------------------------------------- namespaces and agents


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


# --------------------------------------------------------------------------- workflows


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
    agent = serializers.PrimaryKeyRelatedField(
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


# --------------------------------------------------------------------------- runs and files


class RunSerializer(MergingCreate, ModelSerializer[m.Run]):
    """A POSTed run number already known (from ``run_imminent``) is the same run: merged, not refused.

    Without an execution in the payload (the v28 data agent sends none), the
    run is linked to the one its run state names (``metadata.execution_id``
    of ``POST /run-states/``), when known; a later message or run state links it otherwise.
    """

    namespace = NamespaceField()

    class Meta:
        model = m.Run
        fields = [
            "run_id",
            "run_number",
            "namespace",
            "execution",
            "start_time",
            "end_time",
            "run_conditions",
            "total_stf_files",
        ]
        read_only_fields = ["run_id"]
        extra_kwargs = {
            "run_number": {"validators": []}
        }  # unique, but a repeat merges (see create)

    def create(self, validated_data: dict[str, Any]) -> m.Run:
        number = validated_data["run_number"]

        def create() -> m.Run:
            data = dict(validated_data)
            if data.get("execution") is None:
                data["execution"] = m.RunState.execution_named(number)
            run = m.Run(**data)
            run.adopt(run.execution)
            run.save()
            m.RunState.objects.filter(run_number=number, run__isnull=True).update(run=run)
            return run

        def merge(run: m.Run) -> m.Run:
            start = validated_data.get("start_time")
            if start is not None and start < run.start_time:
                run.start_time = start  # the earliest that either source knows
            for name in ("end_time", "total_stf_files", "execution", "namespace"):
                if validated_data.get(name) is not None:
                    setattr(run, name, validated_data[name])
            if validated_data.get("run_conditions"):
                run.run_conditions = {
                    **(run.run_conditions or {}),
                    **validated_data["run_conditions"],
                }
            run.adopt(run.execution or m.RunState.execution_named(number))
            run.save()
            return run

        return self.create_or_merge(
            lambda: m.Run.objects.select_for_update().filter(run_number=number).first(),
            create,
            merge,
        )


_FILE_PROGRESS = [
    m.FileStatus.GENERATED,
    m.FileStatus.REGISTERED,
    m.FileStatus.PROCESSING,
    m.FileStatus.PROCESSED,
    m.FileStatus.FAILED,
    m.FileStatus.DONE,
]


class StfFileSerializer(MergingCreate, ModelSerializer[m.StfFile]):
    """A POSTed file name already known (from ``stf_gen``) is the same file: the POST fills it in.

    Its status never moves back (a file the DAQ generated becomes registered;
    one already processed stays processed).
    """

    run_number = serializers.IntegerField(source="run.run_number", read_only=True)

    class Meta:
        model = m.StfFile
        fields = [
            "file_id",
            "run",
            "run_number",
            "stf_filename",
            "file_size_bytes",
            "checksum",
            "status",
            "machine_state",
            "daq_state",
            "daq_substate",
            "sequence",
            "tf_count",
            "url",
            "generated_at",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["file_id", "created_at", "updated_at"]
        extra_kwargs = {
            "stf_filename": {"validators": []}
        }  # unique, but a repeat merges (see create)

    def create(self, validated_data: dict[str, Any]) -> m.StfFile:
        name = validated_data["stf_filename"]

        def merge(stf: m.StfFile) -> m.StfFile:
            for field, value in validated_data.items():
                if field == "metadata":
                    stf.metadata = {**(stf.metadata or {}), **(value or {})}
                elif field == "status":
                    if _FILE_PROGRESS.index(value) >= _FILE_PROGRESS.index(stf.status):
                        stf.status = value
                elif field not in ("run", "stf_filename"):
                    setattr(stf, field, value)
            stf.save()
            return stf

        return self.create_or_merge(
            lambda: m.StfFile.objects.select_for_update().filter(stf_filename=name).first(),
            lambda: m.StfFile.objects.create(**validated_data),
            merge,
        )


class FastMonFileSerializer(ModelSerializer[m.FastMonFile]):
    class Meta:
        model = m.FastMonFile
        fields = [
            "tf_file_id",
            "stf_file",
            "tf_filename",
            "tf_first",
            "tf_last",
            "tf_count",
            "file_size_bytes",
            "checksum",
            "status",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["tf_file_id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        first, last = attrs.get("tf_first"), attrs.get("tf_last")
        if first is not None and last is not None and last < first:
            raise serializers.ValidationError({"tf_last": "must not be less than tf_first"})
        return attrs


class TFSliceSerializer(ModelSerializer[m.TFSlice]):
    class Meta:
        model = m.TFSlice
        fields = [
            "id",
            "sample",
            "slice_id",
            "tf_first",
            "tf_last",
            "tf_count",
            "tf_filename",
            "stf_filename",
            "run_number",
            "status",
            "retries",
            "assigned_worker",
            "assigned_at",
            "completed_at",
            "processing_time_s",
            "error",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        first = attrs.get("tf_first", getattr(self.instance, "tf_first", None))
        last = attrs.get("tf_last", getattr(self.instance, "tf_last", None))
        if first is not None and last is not None and last < first:
            raise serializers.ValidationError({"tf_last": "must not be less than tf_first"})
        if attrs.get("sample") is None and "tf_filename" in attrs and self.instance is None:
            attrs["sample"] = m.FastMonFile.objects.filter(tf_filename=attrs["tf_filename"]).first()
        return attrs


class WorkerSerializer(ModelSerializer[m.Worker]):
    namespace = NamespaceField()

    class Meta:
        model = m.Worker
        fields = [
            "worker_id",
            "namespace",
            "run_number",
            "panda_job",
            "location",
            "status",
            "current_slice_id",
            "tf_filename",
            "slices_completed",
            "slices_failed",
            "last_heartbeat",
            "started_at",
            "ended_at",
            "metadata",
        ]


class RunStateSerializer(MergingCreate, ModelSerializer[m.RunState]):
    """``POST /api/run-states/`` of a run whose state the ingest already keeps updates it (never back in time).

    ``metadata.execution_id`` links the run to its execution, whichever of the
    two (run, run state) arrives first.
    """

    class Meta:
        model = m.RunState
        fields = [
            "run_number",
            "run",
            "phase",
            "state",
            "substate",
            "target_worker_count",
            "active_worker_count",
            "stf_samples_received",
            "slices_created",
            "slices_queued",
            "slices_processing",
            "slices_completed",
            "slices_failed",
            "state_changed_at",
            "updated_at",
            "metadata",
        ]
        read_only_fields = ["run", "updated_at"]
        extra_kwargs = {
            "run_number": {"validators": []}
        }  # the key, but a repeat merges (see create)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (
            self.instance is not None
            and "run_number" in attrs
            and attrs["run_number"] != self.instance.run_number
        ):
            raise serializers.ValidationError({"run_number": "cannot be changed"})
        number = attrs.get("run_number")
        if number is not None and self.instance is None:
            attrs["run"] = m.Run.objects.filter(run_number=number).first()
        return attrs

    def create(self, validated_data: dict[str, Any]) -> m.RunState:
        number = validated_data["run_number"]

        def merge(state: m.RunState) -> m.RunState:
            changed_at = validated_data.get("state_changed_at")
            older = changed_at is not None and state.state and changed_at < state.state_changed_at
            for field, value in validated_data.items():
                if field == "metadata":
                    state.metadata = {**(state.metadata or {}), **(value or {})}
                elif field in ("phase", "state", "substate", "state_changed_at") and older:
                    continue  # the ingest has a newer state from the run's messages
                elif field == "run":
                    state.run = state.run or value
                elif field != "run_number":
                    setattr(state, field, value)
            state.save()
            return state

        state = self.create_or_merge(
            lambda: m.RunState.objects.select_for_update().filter(run_number=number).first(),
            lambda: m.RunState.objects.create(**validated_data),
            merge,
        )
        state.link_run()
        return state

    def update(self, instance: m.RunState, validated_data: dict[str, Any]) -> m.RunState:
        state = super().update(instance, validated_data)
        state.link_run()
        return state


class SystemStateEventSerializer(ModelSerializer[m.SystemStateEvent]):
    namespace = NamespaceField()

    class Meta:
        model = m.SystemStateEvent
        fields = [
            "event_id",
            "timestamp",
            "run_number",
            "namespace",
            "execution_id",
            "event_type",
            "state",
            "substate",
            "event_data",
            "msg_id",
        ]
        read_only_fields = ["event_id", "msg_id"]
        # v28 agents send "substate": null; stored as "" (no substate), like a missing one
        extra_kwargs = {"substate": {"allow_null": True}}

    def validate_substate(self, value: str | None) -> str:
        return value or ""


# --------------------------------------------------------------------------- messages and logs


class WorkflowMessageSerializer(ModelSerializer[m.WorkflowMessage]):
    body = serializers.SerializerMethodField(
        help_text="the body as JSON, or as text when it is not JSON"
    )
    # Names the existing ePIC monitor uses for the same values.
    message_type = serializers.CharField(source="msg_type", read_only=True)
    sender_agent = serializers.CharField(source="sender", read_only=True)
    message_content = serializers.SerializerMethodField()

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

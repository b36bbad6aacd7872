"""REST API views: the existing ePIC monitor's endpoints, validated, filtered and paged."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action, api_view
from rest_framework.request import Request
from rest_framework.response import Response

from swf_testbed.monitor.api import filters as f
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api import serializers as s
from swf_testbed.monitor.api.pagination import MessagePagination
from swf_testbed.monitor.api.throttling import AnonymousLogThrottle

if TYPE_CHECKING:  # what the mixins below are mixed into (a view set), for the type checker
    _ViewSet = viewsets.GenericViewSet[Any]
    _ModelViewSet = viewsets.ModelViewSet[Any]
else:
    _ViewSet = _ModelViewSet = object


class MonitorViewSetMixin(_ViewSet):
    """A list without paging parameters is a plain list, capped at ``SWF_API_MAX_UNPAGED`` rows."""

    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        queryset = self.filter_queryset(self.get_queryset())
        page = self.paginate_queryset(queryset)
        if page is not None:
            serializer = self.get_serializer(page, many=True)
            paged: Response = self.get_paginated_response(serializer.data)
            return paged
        cap = int(getattr(settings, "SWF_API_MAX_UNPAGED", 10_000))
        rows = list(queryset[: cap + 1])
        response = Response(self.get_serializer(rows[:cap], many=True).data)
        if len(rows) > cap:
            response["X-Truncated"] = f"true; at most {cap} rows without limit/offset"
        return response


class MonitorModelViewSet(MonitorViewSetMixin, viewsets.ModelViewSet[Any]):
    pass


class MergingCreateMixin(_ModelViewSet):
    # 201 when the POST made the row, 200 when it merged into one a message had made
    # (s.MergingCreate). (A comment, not a docstring: the schema would show it on every operation of
    # the view.)

    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        response = super().create(request, *args, **kwargs)
        if getattr(getattr(self, "_serializer", None), "merged", False):
            response.status_code = status.HTTP_200_OK
        return response

    def perform_create(self, serializer: Any) -> None:
        self._serializer = serializer
        serializer.save()


class NamespaceViewSet(MonitorModelViewSet):
    queryset = m.Namespace.objects.all()
    serializer_class = s.NamespaceSerializer
    filterset_class = f.NamespaceFilter
    lookup_field = "name"
    lookup_value_regex = r"[^/]+"
    ordering_fields = ["name", "created_at"]

    @extend_schema(
        request=s.EnsureNamespaceSerializer,
        responses={
            200: inline_serializer(
                "EnsuredNamespace",
                {
                    "name": serializers.CharField(),
                    "owner": serializers.CharField(),
                    "description": serializers.CharField(),
                    "created": serializers.BooleanField(),
                    "status": serializers.CharField(),
                },
            )
        },
    )
    @action(detail=False, methods=["post"])
    def ensure(self, request: Request) -> Response:
        """Create the namespace if it does not exist; ``created`` says whether it did."""
        payload = s.EnsureNamespaceSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        data = payload.validated_data
        defaults = {"owner": data.get("owner", "")}
        if "description" in data:
            defaults["description"] = data["description"]
        try:
            namespace, created = m.Namespace.objects.get_or_create(
                name=data["name"], defaults=defaults
            )
        except IntegrityError:
            namespace, created = m.Namespace.objects.get(name=data["name"]), False
        if not created and not namespace.owner and data.get("owner"):
            namespace.owner = data["owner"]
            namespace.save(update_fields=["owner", "updated_at"])
        return Response(
            {
                "name": namespace.name,
                "owner": namespace.owner,
                "description": namespace.description,
                "created": created,
                "status": "success",
            }
        )


class SystemAgentViewSet(MonitorModelViewSet):
    queryset = m.SystemAgent.objects.all()
    serializer_class = s.SystemAgentSerializer
    filterset_class = f.SystemAgentFilter
    ordering_fields = ["instance_name", "last_heartbeat", "agent_type", "status"]

    @extend_schema(
        request=s.HeartbeatSerializer,
        responses={200: s.SystemAgentSerializer, 201: s.SystemAgentSerializer},
    )
    @action(detail=False, methods=["post"])
    def heartbeat(self, request: Request) -> Response:
        """Register an agent or record its heartbeat: 201 when created, 200 when updated."""
        payload = s.HeartbeatSerializer(data=request.data)
        payload.is_valid(raise_exception=True)
        extra = {}
        if isinstance(request.data, dict):
            extra = {k: v for k, v in request.data.items() if k not in payload.fields}
        agent, created = payload.save_heartbeat(extra)
        return Response(
            self.get_serializer(agent).data,
            status=status.HTTP_201_CREATED if created else status.HTTP_200_OK,
        )


class SubscriberViewSet(MonitorModelViewSet):
    queryset = m.Subscriber.objects.all()
    serializer_class = s.SubscriberSerializer
    filterset_class = f.SubscriberFilter


class AppLogViewSet(
    MonitorViewSetMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[Any]
):
    anonymous_create_setting = (
        "SWF_API_ANONYMOUS_LOGS"  # see permissions.py: from allowed networks only
    )
    queryset = m.AppLog.objects.all()
    serializer_class = s.AppLogSerializer
    filterset_class = f.AppLogFilter
    ordering_fields = ["timestamp", "level", "app_name", "instance_name"]

    def get_throttles(self) -> list[Any]:
        # anonymous posts only (the throttle lets token holders through); reads are never limited
        return [AnonymousLogThrottle()] if self.action == "create" else []


class RunViewSet(MergingCreateMixin, MonitorModelViewSet):
    queryset = m.Run.objects.all()
    serializer_class = s.RunSerializer
    filterset_class = f.RunFilter
    ordering_fields = ["run_number", "start_time", "end_time"]


class StfFileViewSet(MergingCreateMixin, MonitorModelViewSet):
    queryset = m.StfFile.objects.select_related("run")
    serializer_class = s.StfFileSerializer
    filterset_class = f.StfFileFilter
    ordering_fields = ["created_at", "stf_filename", "sequence", "file_size_bytes"]


class FastMonFileViewSet(MonitorModelViewSet):
    # A sample written here counts in its run's counters through the model's signals (run_counters).
    queryset = m.FastMonFile.objects.all()
    serializer_class = s.FastMonFileSerializer
    filterset_class = f.FastMonFileFilter
    ordering_fields = ["created_at", "tf_filename"]


class TFSliceViewSet(MonitorModelViewSet):
    # A slice written here counts in its run's counters through the model's signals (run_counters).
    queryset = m.TFSlice.objects.all()
    serializer_class = s.TFSliceSerializer
    filterset_class = f.TFSliceFilter
    ordering_fields = ["created_at", "updated_at", "slice_id", "run_number", "status"]


class WorkerViewSet(MonitorModelViewSet):
    queryset = m.Worker.objects.all()
    serializer_class = s.WorkerSerializer
    filterset_class = f.WorkerFilter
    ordering_fields = ["worker_id", "started_at", "last_heartbeat", "slices_completed"]


class RunStateViewSet(MergingCreateMixin, MonitorModelViewSet):
    """Run state by run number; ``POST /api/run-states/{run_number}/`` creates or updates."""

    queryset = m.RunState.objects.all()
    serializer_class = s.RunStateSerializer
    filterset_class = f.RunStateFilter
    lookup_field = "run_number"
    lookup_value_regex = r"\d+"
    ordering_fields = ["run_number", "state_changed_at"]

    @extend_schema(
        operation_id="run_states_upsert",
        request=s.RunStateSerializer,
        responses={200: s.RunStateSerializer, 201: s.RunStateSerializer},
    )
    def upsert(self, request: Request, run_number: str) -> Response:
        data = dict(request.data) if isinstance(request.data, dict) else request.data
        if isinstance(data, dict):
            data["run_number"] = int(run_number)
        with transaction.atomic():
            instance = (
                m.RunState.objects.select_for_update().filter(run_number=int(run_number)).first()
            )
            serializer = self.get_serializer(instance, data=data, partial=instance is not None)
            serializer.is_valid(raise_exception=True)
            serializer.save()
        return Response(
            serializer.data, status=status.HTTP_200_OK if instance else status.HTTP_201_CREATED
        )


class SystemStateEventViewSet(
    MonitorViewSetMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[Any]
):
    """Append-only: create and read, never change."""

    queryset = m.SystemStateEvent.objects.all()
    serializer_class = s.SystemStateEventSerializer
    filterset_class = f.SystemStateEventFilter
    ordering_fields = ["timestamp", "run_number"]


class WorkflowDefinitionViewSet(
    MonitorViewSetMixin, mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet[Any]
):
    """Immutable once created: a change is a new version."""

    queryset = m.WorkflowDefinition.objects.all()
    serializer_class = s.WorkflowDefinitionSerializer
    filterset_class = f.WorkflowDefinitionFilter
    ordering_fields = ["workflow_name", "version", "created_at"]


class WorkflowExecutionViewSet(MonitorModelViewSet):
    serializer_class = s.WorkflowExecutionSerializer
    filterset_class = f.WorkflowExecutionFilter
    ordering_fields = ["start_time", "end_time", "status", "execution_id"]
    lookup_value_regex = r"[^/]+"

    def get_queryset(self) -> QuerySet[m.WorkflowExecution]:
        qs = m.WorkflowExecution.objects.select_related("workflow_definition")
        if self.action in ("list", "retrieve"):
            qs = qs.annotate(stf_count=Count("runs__stf_files"))
        return qs


class WorkflowStageViewSet(MonitorModelViewSet):
    """Agents' stages of work; POST to start one, PATCH to move it on."""

    queryset = m.WorkflowStage.objects.all()
    serializer_class = s.WorkflowStageSerializer
    filterset_class = f.WorkflowStageFilter
    ordering_fields = [
        "created_at",
        "updated_at",
        "started_at",
        "completed_at",
        "status",
        "agent_name",
        "run_number",
    ]


class WorkflowMessageViewSet(MonitorViewSetMixin, viewsets.ReadOnlyModelViewSet[Any]):
    """Every message recorded by the ingest. Read-only: messages come from the broker."""

    queryset = m.WorkflowMessage.objects.all()
    serializer_class = s.WorkflowMessageSerializer
    filterset_class = f.WorkflowMessageFilter
    pagination_class = MessagePagination
    ordering_fields = ["received_at", "sent_at", "msg_type", "sender", "id"]
    rollup_filters: dict[str, Any] | None = None

    def filter_queryset(self, queryset: QuerySet[Any, Any]) -> QuerySet[Any, Any]:
        filterset = f.WorkflowMessageFilter(
            self.request.query_params, queryset=queryset, request=self.request
        )
        self.rollup_filters = filterset.facet_values()
        return super().filter_queryset(queryset)


# --------------------------------------------------------------------------- counters


@extend_schema(
    request=None,
    responses={
        200: inline_serializer(
            "NextRunNumber",
            {"status": serializers.CharField(), "run_number": serializers.IntegerField()},
        )
    },
)
@api_view(["POST"])
def next_run_number(request: Request) -> Response:
    """The next run number, atomically (never handed out twice)."""
    return Response({"status": "success", "run_number": m.Counter.next("run_number")})


@extend_schema(
    request=None,
    responses={
        200: inline_serializer(
            "NextAgentId",
            {"status": serializers.CharField(), "agent_id": serializers.IntegerField()},
        )
    },
)
@api_view(["POST"])
def next_agent_id(request: Request) -> Response:
    """The next agent id, atomically."""
    return Response({"status": "success", "agent_id": m.Counter.next("agent_id")})


class NextExecutionIdSerializer(serializers.Serializer[Any]):
    workflow_name = serializers.CharField(max_length=200, required=False, allow_blank=True)


@extend_schema(
    request=NextExecutionIdSerializer,
    responses={
        200: inline_serializer(
            "NextExecutionSequence",
            {
                "status": serializers.CharField(),
                "sequence": serializers.IntegerField(),
                "workflow_name": serializers.CharField(),
            },
        ),
        400: OpenApiResponse(description="bad input"),
    },
)
@api_view(["POST"])
def next_workflow_execution_id(request: Request) -> Response:
    """The next workflow execution sequence number, atomically (one sequence for all workflows)."""
    payload = NextExecutionIdSerializer(data=request.data)
    payload.is_valid(raise_exception=True)
    return Response(
        {
            "status": "success",
            "sequence": m.Counter.next("workflow_execution"),
            "workflow_name": payload.validated_data.get("workflow_name", ""),
        }
    )


def run_state_detail() -> Any:
    """``/api/run-states/{run_number}/`` with POST as
    create-or-update, as existing agents use it.
    """
    return RunStateViewSet.as_view(
        {
            "get": "retrieve",
            "put": "update",
            "patch": "partial_update",
            "delete": "destroy",
            "post": "upsert",
        }
    )

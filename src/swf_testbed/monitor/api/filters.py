"""Filters of the API (and of the UI's lists, which use the same classes)."""

from __future__ import annotations

from typing import Any

import django_filters as df
from django import forms
from django.db.models import Exists, OuterRef, QuerySet
from rest_framework.exceptions import ValidationError
from rest_framework.filters import OrderingFilter
from rest_framework.request import Request

from swf_testbed.monitor.api import models as m


class IntegerFilter(df.Filter):
    field_class = forms.IntegerField


class TimeRangeFilterSet(df.FilterSet):
    """Adds ``<field>_after`` / ``<field>_before`` (ISO 8601) for the model's time field."""

    time_field: str = ""

    @classmethod
    def get_filters(cls) -> dict[str, Any]:
        filters: dict[str, Any] = super().get_filters()
        if cls.time_field:
            filters["after"] = df.IsoDateTimeFilter(
                field_name=cls.time_field, lookup_expr="gte", label=f"{cls.time_field} ≥ (ISO 8601)"
            )
            filters["before"] = df.IsoDateTimeFilter(
                field_name=cls.time_field, lookup_expr="lt", label=f"{cls.time_field} < (ISO 8601)"
            )
        return filters


class StrictOrderingFilter(OrderingFilter):
    """DRF's ``ordering=``, where an unknown field is a 400 naming the allowed ones (not silently
    ignored).
    """

    def get_ordering(self, request: Request, queryset: QuerySet[Any], view: Any) -> Any:
        text = request.query_params.get(self.ordering_param)
        if text:
            asked = [term.strip() for term in text.split(",") if term.strip()]
            allowed = [
                name for name, _label in self.get_valid_fields(queryset, view, {"request": request})
            ]
            unknown = [term for term in asked if term.lstrip("-") not in allowed]
            if unknown:
                raise ValidationError(
                    {
                        self.ordering_param: [
                            f"unknown field{'s' if len(unknown) > 1 else ''} "
                            f"{', '.join(map(repr, unknown))}; allowed (prefix - for descending): "
                            f"{', '.join(sorted(allowed))}"
                        ]
                    }
                )
        return super().get_ordering(request, queryset, view)


MESSAGE_FACETS = (
    "namespace",
    "execution_id",
    "run_id",
    "msg_type",
    "sender",
    "is_valid",
    "exclude_type",
)
"""Filters that the facet table can answer (see :mod:`swf_testbed.monitor.api.facets`)."""


class WorkflowMessageFilter(df.FilterSet):
    namespace = df.CharFilter(field_name="namespace_id")
    execution_id = df.CharFilter()
    run_id = IntegerFilter()
    msg_type = df.CharFilter()
    sender = df.CharFilter()
    is_valid = df.BooleanFilter()
    destination = df.CharFilter()
    msg_id = df.CharFilter()
    dialect = df.CharFilter(help_text="swf or epic-v28")
    received_after = df.IsoDateTimeFilter(field_name="received_at", lookup_expr="gte")
    received_before = df.IsoDateTimeFilter(field_name="received_at", lookup_expr="lt")
    sent_after = df.IsoDateTimeFilter(field_name="sent_at", lookup_expr="gte")
    sent_before = df.IsoDateTimeFilter(field_name="sent_at", lookup_expr="lt")
    since_id = IntegerFilter(
        field_name="id", lookup_expr="gt", label="only rows with id greater than this"
    )

    class Meta:
        model = m.WorkflowMessage
        fields: list[str] = []

    def facet_values(self) -> dict[str, Any] | None:
        """The active filters as facet values, or None when a filter
        the facet table lacks is set.
        """
        if not self.is_valid():
            return None
        data = {k: v for k, v in self.form.cleaned_data.items() if v not in (None, "")}
        if any(k not in MESSAGE_FACETS for k in data):
            return None
        return data


class MessagePageFilter(WorkflowMessageFilter):
    """The messages page's filters: those of the API, and a type to leave out (one click hides
    heartbeats).
    """

    exclude_type = df.CharFilter(
        field_name="msg_type",
        exclude=True,
        label="hide type",
        help_text="leave out messages of this type (e.g. heartbeat)",
    )

    class Meta(WorkflowMessageFilter.Meta):
        pass

    LABELS = {
        "namespace": "namespace",
        "execution_id": "execution",
        "run_id": "run",
        "msg_type": "type",
        "exclude_type": "hide type",
        "sender": "sender",
        "is_valid": "valid",
        "destination": "destination",
        "msg_id": "message id",
        "dialect": "dialect",
        "received_after": "received after",
        "received_before": "received before",
        "sent_after": "sent after",
        "sent_before": "sent before",
    }
    """What people read on the form (the API documents the parameters by their names)."""

    @property
    def form(self) -> forms.Form:
        form: forms.Form = super().form
        for name, label in self.LABELS.items():
            form.fields[name].label = label
        form.fields["is_valid"].widget = forms.Select(
            choices=[("", "any"), ("true", "valid"), ("false", "invalid")]
        )
        return form


class SystemAgentFilter(df.FilterSet):
    namespace = df.CharFilter(field_name="namespace_id")

    class Meta:
        model = m.SystemAgent
        fields = [
            "namespace",
            "instance_name",
            "agent_type",
            "status",
            "operational_state",
            "hostname",
        ]


class AppLogFilter(TimeRangeFilterSet):
    time_field = "timestamp"
    min_level = IntegerFilter(field_name="level", lookup_expr="gte")
    run_id = IntegerFilter()
    namespace = df.CharFilter(field_name="namespace_id")

    class Meta:
        model = m.AppLog
        fields = [
            "namespace",
            "app_name",
            "instance_name",
            "levelname",
            "level",
            "execution_id",
            "run_id",
        ]


class RunFilter(TimeRangeFilterSet):
    time_field = "start_time"
    namespace = df.CharFilter(field_name="namespace_id")
    execution_id = df.CharFilter(field_name="execution_id")

    class Meta:
        model = m.Run
        fields = ["run_number", "namespace", "execution_id"]


class StfFileFilter(TimeRangeFilterSet):
    time_field = "created_at"
    run_number = IntegerFilter(field_name="run__run_number")
    namespace = df.CharFilter(field_name="run__namespace_id")
    execution_id = df.CharFilter(field_name="run__execution_id")

    class Meta:
        model = m.StfFile
        fields = [
            "run",
            "run_number",
            "namespace",
            "execution_id",
            "status",
            "stf_filename",
            "daq_state",
            "daq_substate",
        ]


class FastMonFileFilter(TimeRangeFilterSet):
    time_field = "created_at"
    run_number = IntegerFilter(field_name="stf_file__run__run_number")
    stf_filename = df.CharFilter(field_name="stf_file__stf_filename")
    execution_id = df.CharFilter(field_name="stf_file__run__execution_id")
    has_slices = df.BooleanFilter(
        method="filter_has_slices", label="the sample has at least one TF slice"
    )

    class Meta:
        model = m.FastMonFile
        fields = ["stf_file", "stf_filename", "run_number", "execution_id", "status", "tf_filename"]

    def filter_has_slices(
        self, queryset: QuerySet[m.FastMonFile], name: str, value: bool
    ) -> QuerySet[m.FastMonFile]:
        sliced = Exists(m.TFSlice.objects.filter(sample=OuterRef("pk")))
        return queryset.filter(sliced) if value else queryset.exclude(sliced)


class TFSliceFilter(TimeRangeFilterSet):
    time_field = "created_at"
    run_number = IntegerFilter()

    class Meta:
        model = m.TFSlice
        fields = [
            "run_number",
            "status",
            "stf_filename",
            "tf_filename",
            "assigned_worker",
            "sample",
        ]


class WorkerFilter(df.FilterSet):
    namespace = df.CharFilter(field_name="namespace_id")
    run_number = IntegerFilter()

    class Meta:
        model = m.Worker
        fields = ["run_number", "status", "location", "namespace"]


class RunStateFilter(df.FilterSet):
    class Meta:
        model = m.RunState
        fields = ["phase", "state", "substate"]


class SystemStateEventFilter(TimeRangeFilterSet):
    time_field = "timestamp"
    namespace = df.CharFilter(field_name="namespace_id")
    run_number = IntegerFilter()

    class Meta:
        model = m.SystemStateEvent
        fields = ["run_number", "event_type", "state", "substate", "namespace", "execution_id"]


class WorkflowDefinitionFilter(df.FilterSet):
    class Meta:
        model = m.WorkflowDefinition
        fields = ["workflow_name", "version", "workflow_type", "created_by"]


class WorkflowStageFilter(TimeRangeFilterSet):
    time_field = "created_at"
    execution_id = df.CharFilter(field_name="execution_id")
    run_number = IntegerFilter()

    class Meta:
        model = m.WorkflowStage
        fields = [
            "execution_id",
            "agent_name",
            "agent_type",
            "status",
            "run_number",
            "stf_filename",
        ]


class WorkflowExecutionFilter(TimeRangeFilterSet):
    time_field = "start_time"
    namespace = df.CharFilter(field_name="namespace_id")
    workflow_name = df.CharFilter(field_name="workflow_definition__workflow_name")

    class Meta:
        model = m.WorkflowExecution
        fields = ["namespace", "status", "workflow_definition", "workflow_name", "executed_by"]


class SubscriberFilter(df.FilterSet):
    class Meta:
        model = m.Subscriber
        fields = ["subscriber_name", "is_active"]


class NamespaceFilter(df.FilterSet):
    class Meta:
        model = m.Namespace
        fields = ["name", "owner"]

"""Admin for every model. Recorded history (messages, state events) is read-only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from django.contrib import admin
from django.http import HttpRequest

from swf_testbed.monitor.api import models as m

if TYPE_CHECKING:  # the stubs make ModelAdmin generic; Django's class is not subscriptable
    ModelAdmin: TypeAlias = admin.ModelAdmin[Any]
else:
    ModelAdmin = admin.ModelAdmin


class ReadOnlyAdmin(ModelAdmin):
    """For recorded history: viewable, never edited by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(m.Namespace)
class NamespaceAdmin(ModelAdmin):
    list_display = ["name", "owner", "created_at"]
    search_fields = ["name", "owner", "description"]


@admin.register(m.SystemAgent)
class SystemAgentAdmin(ModelAdmin):
    list_display = [
        "instance_name",
        "namespace",
        "agent_type",
        "status",
        "operational_state",
        "hostname",
        "pid",
        "last_heartbeat",
    ]
    list_filter = ["status", "operational_state", "agent_type", "namespace"]
    search_fields = ["instance_name", "instance_id", "hostname"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(m.Subscriber)
class SubscriberAdmin(ModelAdmin):
    list_display = ["subscriber_name", "is_active", "fraction", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["subscriber_name", "description"]


@admin.register(m.WorkflowDefinition)
class WorkflowDefinitionAdmin(ModelAdmin):
    list_display = ["workflow_name", "version", "workflow_type", "created_by", "created_at"]
    list_filter = ["workflow_type"]
    search_fields = ["workflow_name", "version"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Immutable once created: the change page only shows it.
        return obj is None and super().has_change_permission(request, obj)


@admin.register(m.WorkflowExecution)
class WorkflowExecutionAdmin(ModelAdmin):
    list_display = [
        "execution_id",
        "workflow_definition",
        "namespace",
        "status",
        "executed_by",
        "start_time",
        "end_time",
    ]
    list_filter = ["status", "namespace"]
    search_fields = ["execution_id", "executed_by"]
    list_select_related = ["workflow_definition"]
    raw_id_fields = ["workflow_definition"]


@admin.register(m.WorkflowStage)
class WorkflowStageAdmin(ModelAdmin):
    list_display = [
        "stage_id",
        "agent_name",
        "agent_type",
        "status",
        "execution",
        "run_number",
        "stf_filename",
        "started_at",
        "completed_at",
    ]
    list_filter = ["status", "agent_type"]
    search_fields = ["agent_name", "stf_filename", "execution__execution_id"]
    raw_id_fields = ["execution", "agent"]
    readonly_fields = ["created_at", "updated_at"]


@admin.register(m.Run)
class RunAdmin(ModelAdmin):
    list_display = [
        "run_number",
        "namespace",
        "execution",
        "start_time",
        "end_time",
        "total_stf_files",
    ]
    list_filter = ["namespace"]
    search_fields = ["run_number", "execution__execution_id"]
    raw_id_fields = ["execution"]


@admin.register(m.StfFile)
class StfFileAdmin(ModelAdmin):
    list_display = [
        "stf_filename",
        "run",
        "status",
        "daq_state",
        "daq_substate",
        "file_size_bytes",
        "created_at",
    ]
    list_filter = ["status", "daq_state", "daq_substate"]
    search_fields = ["stf_filename", "checksum"]
    raw_id_fields = ["run"]
    list_select_related = ["run"]


@admin.register(m.FastMonFile)
class FastMonFileAdmin(ModelAdmin):
    list_display = [
        "tf_filename",
        "stf_file",
        "tf_first",
        "tf_last",
        "tf_count",
        "status",
        "created_at",
    ]
    list_filter = ["status"]
    search_fields = ["tf_filename", "stf_file__stf_filename"]
    raw_id_fields = ["stf_file"]
    list_select_related = ["stf_file"]


@admin.register(m.TFSlice)
class TFSliceAdmin(ModelAdmin):
    list_display = [
        "tf_filename",
        "slice_id",
        "run_number",
        "status",
        "retries",
        "assigned_worker",
        "completed_at",
    ]
    list_filter = ["status"]
    search_fields = ["tf_filename", "stf_filename", "assigned_worker", "run_number"]
    raw_id_fields = ["sample"]


@admin.register(m.Worker)
class WorkerAdmin(ModelAdmin):
    list_display = [
        "worker_id",
        "namespace",
        "run_number",
        "status",
        "slices_completed",
        "slices_failed",
        "last_heartbeat",
    ]
    list_filter = ["status", "namespace"]
    search_fields = ["worker_id", "location"]


@admin.register(m.RunState)
class RunStateAdmin(ModelAdmin):
    list_display = [
        "run_number",
        "phase",
        "state",
        "substate",
        "slices_completed",
        "slices_failed",
        "state_changed_at",
    ]
    list_filter = ["phase", "state", "substate"]
    search_fields = ["run_number"]
    raw_id_fields = ["run"]


@admin.register(m.SystemStateEvent)
class SystemStateEventAdmin(ReadOnlyAdmin):
    list_display = ["timestamp", "run_number", "namespace", "event_type", "state", "substate"]
    list_filter = ["event_type", "state", "substate"]
    search_fields = ["run_number", "execution_id"]
    date_hierarchy = "timestamp"


@admin.register(m.WorkflowMessage)
class WorkflowMessageAdmin(ReadOnlyAdmin):
    list_display = [
        "received_at",
        "msg_type",
        "namespace",
        "sender",
        "execution_id",
        "run_id",
        "is_valid",
    ]
    list_filter = ["is_valid", "msg_type"]
    search_fields = ["msg_id", "execution_id", "sender"]
    show_full_result_count = False  # millions of rows: no COUNT(*) per page


@admin.register(m.MessageCount)
class MessageCountAdmin(ReadOnlyAdmin):
    list_display = [
        "namespace",
        "execution_id",
        "run_id",
        "msg_type",
        "sender",
        "is_valid",
        "count",
    ]
    list_filter = ["is_valid", "msg_type"]
    search_fields = ["execution_id", "sender"]


@admin.register(m.AppLog)
class AppLogAdmin(ReadOnlyAdmin):
    list_display = ["timestamp", "app_name", "instance_name", "levelname", "message"]
    list_filter = ["levelname", "app_name"]
    search_fields = ["instance_name", "message", "execution_id"]
    show_full_result_count = False


@admin.register(m.Counter)
class CounterAdmin(ModelAdmin):
    list_display = ["name", "value", "updated_at"]

"""Serializers: field names and payloads of the existing ePIC testbed monitor, validated.

One module per concept; every serializer is importable from here.
"""

from swf_testbed.monitor.api.serializers.agents import (
    EnsureNamespaceSerializer,
    HeartbeatSerializer,
    NamespaceSerializer,
    SubscriberSerializer,
    SystemAgentSerializer,
)
from swf_testbed.monitor.api.serializers.fields import (
    DateTimeField,
    JSONObjectField,
    MergingCreate,
    ModelSerializer,
    NamespaceField,
    check_name,
)
from swf_testbed.monitor.api.serializers.messages import (
    AppLogSerializer,
    WorkflowMessageSerializer,
)
from swf_testbed.monitor.api.serializers.runs import (
    FastMonFileSerializer,
    RunSerializer,
    RunStateSerializer,
    StfFileSerializer,
    SystemStateEventSerializer,
    TFSliceSerializer,
    WorkerSerializer,
)
from swf_testbed.monitor.api.serializers.workflows import (
    WorkflowDefinitionSerializer,
    WorkflowExecutionSerializer,
    WorkflowStageSerializer,
)

__all__ = [
    "AppLogSerializer",
    "DateTimeField",
    "EnsureNamespaceSerializer",
    "FastMonFileSerializer",
    "HeartbeatSerializer",
    "JSONObjectField",
    "MergingCreate",
    "ModelSerializer",
    "NamespaceField",
    "NamespaceSerializer",
    "RunSerializer",
    "RunStateSerializer",
    "StfFileSerializer",
    "SubscriberSerializer",
    "SystemAgentSerializer",
    "SystemStateEventSerializer",
    "TFSliceSerializer",
    "WorkerSerializer",
    "WorkflowDefinitionSerializer",
    "WorkflowExecutionSerializer",
    "WorkflowMessageSerializer",
    "WorkflowStageSerializer",
    "check_name",
]

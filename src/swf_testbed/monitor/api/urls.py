"""``/api/``: the paths of the existing ePIC testbed monitor, plus the schema and its UI."""

from django.conf import settings
from django.urls import include, path
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from swf_testbed.monitor.api import stream, views

router = DefaultRouter()
router.register("namespaces", views.NamespaceViewSet, basename="namespace")
router.register("systemagents", views.SystemAgentViewSet, basename="systemagent")
router.register("subscribers", views.SubscriberViewSet, basename="subscriber")
router.register("logs", views.AppLogViewSet, basename="applog")
router.register("runs", views.RunViewSet, basename="run")
router.register("stf-files", views.StfFileViewSet, basename="stffile")
router.register("fastmon-files", views.FastMonFileViewSet, basename="fastmonfile")
router.register("tf-slices", views.TFSliceViewSet, basename="tfslice")
router.register("workers", views.WorkerViewSet, basename="worker")
router.register("run-states", views.RunStateViewSet, basename="runstate")
router.register("system-state-events", views.SystemStateEventViewSet, basename="systemstateevent")
router.register(
    "workflow-definitions", views.WorkflowDefinitionViewSet, basename="workflowdefinition"
)
router.register("workflow-executions", views.WorkflowExecutionViewSet, basename="workflowexecution")
router.register("workflow-messages", views.WorkflowMessageViewSet, basename="workflowmessage")
router.register("workflow-stages", views.WorkflowStageViewSet, basename="workflowstage")

urlpatterns = [
    path("state/next-run-number/", views.next_run_number, name="next-run-number"),
    path("state/next-agent-id/", views.next_agent_id, name="next-agent-id"),
    path(
        "state/next-workflow-execution-id/",
        views.next_workflow_execution_id,
        name="next-workflow-execution-id",
    ),
    path("run-states/<int:run_number>/", views.run_state_detail(), name="runstate-detail"),
    path("messages/stream/", stream.message_stream, name="message-stream"),
    path("messages/stream/status/", stream.stream_status, name="message-stream-status"),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("", include(router.urls)),
]

if getattr(settings, "HAS_SIDECAR", False):
    urlpatterns += [
        path("docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
        path("redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
    ]
else:  # no Swagger UI without a CDN: the browsable API is the UI
    urlpatterns += [path("docs/", RedirectView.as_view(url="/api/"), name="swagger-ui")]

"""Top-level URLs: the UI at /, the REST API at /api/, the admin
at /admin/, Prometheus at /metrics.
"""

from django.contrib import admin
from django.urls import include, path

from swf_testbed.monitor.metrics import metrics_view

urlpatterns = [
    path("api/", include("swf_testbed.monitor.api.urls")),
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path("", include("swf_testbed.monitor.front.urls")),
]

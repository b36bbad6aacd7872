"""Top-level URLs: the UI at /, the REST API at /api/, the admin at /admin/."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("api/", include("swf_testbed.monitor.api.urls")),
    path("admin/", admin.site.urls),
    path("", include("swf_testbed.monitor.front.urls")),
]

"""The UI's pages."""

from django.contrib.auth import views as auth_views
from django.urls import path, register_converter
from django.urls.converters import PathConverter

from swf_testbed.monitor.front import views

app_name = "front"


class TextConverter(PathConverter):
    """Any text, "/" included (ids from the data may hold one, and a link to them must still
    render), but NUL.

    No id holds a NUL, and PostgreSQL refuses one in a query: such a URL is a 404, not a 500.
    """

    regex = r"[^\x00]+"


register_converter(TextConverter, "text")

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("agents/", views.agent_list, name="agents"),
    path("agents/<int:pk>/", views.agent_detail, name="agent"),
    path("agents/named/", views.agent_named, name="agent_named"),
    path("namespaces/", views.namespace_list, name="namespaces"),
    path("namespaces/<text:name>/", views.namespace_detail, name="namespace"),
    path("workflows/", views.definition_list, name="definitions"),
    path("workflows/<int:pk>/", views.definition_detail, name="definition"),
    path("executions/", views.execution_list, name="executions"),
    path("executions/<text:execution_id>/", views.execution_detail, name="execution"),
    path("messages/", views.message_list, name="messages"),
    path("messages/<int:pk>/", views.message_detail, name="message"),
    path("runs/", views.run_list, name="runs"),
    path("runs/<int:run_number>/", views.run_detail, name="run"),
    path("stf-files/", views.stf_list, name="stf_files"),
    path("samples/", views.sample_list, name="samples"),
    path("slices/", views.slice_list, name="slices"),
    path("logs/", views.log_list, name="logs"),
    path("login/", auth_views.LoginView.as_view(template_name="front/login.html"), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),  # POST, with the CSRF token
]

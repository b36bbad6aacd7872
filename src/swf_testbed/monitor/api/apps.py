from django.apps import AppConfig


class ApiConfig(AppConfig):
    """Models, REST API, admin, ingest and management commands of the monitor."""

    name = "swf_testbed.monitor.api"
    label = "monitor"
    verbose_name = "Testbed monitor"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from swf_testbed.monitor.api import signals  # noqa: F401 - connects the receivers

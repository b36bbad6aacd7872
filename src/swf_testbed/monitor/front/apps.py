from django.apps import AppConfig


class FrontConfig(AppConfig):
    """The server-rendered UI of the monitor."""

    name = "swf_testbed.monitor.front"
    label = "front"
    verbose_name = "Monitor UI"

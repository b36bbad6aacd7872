"""ASGI entry point (``swf-testbed monitor serve`` runs it under uvicorn)."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "swf_testbed.monitor.settings")

application = get_asgi_application()

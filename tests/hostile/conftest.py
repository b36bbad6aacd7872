"""Django for the hostile-message tests: they read what the monitor ingest recorded through the ORM.

The same set-up as the monitor's tests (``tests/monitor/conftest.py``), done
once whichever of the two directories pytest loads first.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from django.apps import apps

    if apps.ready:  # the monitor's conftest did it already
        return
    from tests.monitor.conftest import pytest_configure as configure_django

    configure_django(config)

"""The orchestrator tests' fixtures (a testbed directory per test, supervisord shut down
after it), reused."""

from tests.orchestrator.conftest import home, make_bed  # noqa: F401 - fixtures, registered by import

"""Django for the monitor's tests only (the rest of the suite runs without it).

The database is chosen like the monitor's: ``DATABASE_URL`` (PostgreSQL in CI:
``postgres://postgres@127.0.0.1:5432/test``; Django creates its own test
database there), else SQLite in a temporary ``SWF_HOME``. The SQLite test
database is a file, because the ingest under test is another process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    saved = os.environ.get("SWF_HOME")
    os.environ["SWF_HOME"] = tempfile.mkdtemp(prefix="swf-monitor-test-")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "swf_testbed.monitor.settings")
    from swf_testbed.settings import get_settings

    get_settings.cache_clear()
    import django

    django.setup()
    # Django has read its settings: give the rest of the suite its environment back.
    if saved is None:
        os.environ.pop("SWF_HOME", None)
    else:
        os.environ["SWF_HOME"] = saved
    get_settings.cache_clear()
    try:  # database access only through the django_db mark / fixtures, as usual with pytest-django
        from pytest_django.plugin import _setup_django

        _setup_django(config)
    except ImportError:  # pragma: no cover
        pass


@pytest.fixture
def user(db: None) -> Any:
    from django.contrib.auth.models import User

    return User.objects.create_user("alice", password="secret-pass-123")


@pytest.fixture
def token(user: Any) -> str:
    from rest_framework.authtoken.models import Token

    return Token.objects.create(user=user).key


@pytest.fixture
def api(token: str) -> Any:
    """An API client authenticated with a token, the way agents call the monitor."""
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.fixture
def anon(db: None) -> Any:
    from rest_framework.test import APIClient

    return APIClient()


@pytest.fixture
def make_message() -> Callable[..., bytes]:
    """A valid message body of the given type (schema defaults filled in)."""
    from swf_testbed import messages

    def make(msg_type: str = "heartbeat", **fields: Any) -> bytes:
        defaults: dict[str, Any] = {"namespace": "ns1", "sender": "tester"}
        model = messages.MESSAGE_TYPES[msg_type]
        if issubclass(model, messages.RunMessage):
            defaults.update(execution_id="exec-1", run_id=1, state="run", substate="physics")
        if msg_type == "heartbeat":
            defaults.update(
                agent_name="tester",
                agent_type="test",
                instance_id="tester-1",
                pid=1,
                hostname="host",
                operational_state="READY",
                interval_s=30,
            )
        defaults.update(fields)
        return model(**defaults).to_bytes()

    return make


@pytest.fixture
def record(db: None) -> Iterator[Callable[..., Any]]:
    """Record bodies the way the ingest does."""
    from swf_testbed.monitor.api.recording import Incoming
    from swf_testbed.monitor.api.recording import record as record_batch

    def run(*bodies: bytes, destination: str = "/topic/epictopic") -> Any:
        return record_batch([Incoming(body=b, destination=destination) for b in bodies])

    yield run


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium, one per test module (the browser tests' pages come from it)."""
    from .browserlib import launch_browser

    yield from launch_browser()

"""``SWF_PROFILE=production``: unsafe settings are refused, each with its reason; secrets stay out
of logs.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import runpy
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from swf_testbed.settings import ProductionConfigError, Profile, Settings, get_settings
from swf_testbed.testing.brokers import BrokerProcess

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = "k" * 40
PASSWORD = "pw-" + "S3cretBrokerPass"
TOKEN = "tok-" + "S3cretApiToken0123456789"
SECRET_KEY = "key-" + "S3cretDjangoKey0123456789abcdefghij"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """A clean testbed environment (nothing inherited), fresh settings before and after."""
    for name in list(os.environ):
        if name.startswith(("SWF_", "ACTIVEMQ_")) or name == "DATABASE_URL":
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWF_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _production(env: pytest.MonkeyPatch, **values: str) -> None:
    good = {
        "SWF_PROFILE": "production",
        "ACTIVEMQ_USER": "swf",
        "ACTIVEMQ_PASSWORD": PASSWORD,
        "SWF_SECRET_KEY": GOOD_KEY,
        "SWF_ALLOWED_HOSTS": "monitor.example.org",
    }
    good.update(values)
    for name, value in good.items():
        env.setenv(name, value)
    get_settings.cache_clear()


def _monitor_settings() -> dict[str, object]:
    """Execute the monitor's Django settings module afresh (as the monitor does when it starts)."""
    get_settings.cache_clear()
    spec = importlib.util.find_spec("swf_testbed.monitor.settings")
    assert spec is not None and spec.origin is not None
    return runpy.run_path(spec.origin, run_name="monitor_settings_under_test")


def test_dev_is_the_default_and_refuses_nothing(env: pytest.MonkeyPatch) -> None:
    env.setenv("ACTIVEMQ_USER", "admin")
    env.setenv("ACTIVEMQ_PASSWORD", "admin")
    env.setenv("SWF_DEBUG", "1")
    settings = get_settings()
    assert settings.profile is Profile.DEV
    assert settings.production_problems(monitor=True) == []
    assert _monitor_settings()["DEBUG"] is True


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ACTIVEMQ_USER": "admin", "ACTIVEMQ_PASSWORD": "admin"}, "admin/admin"),
        ({"ACTIVEMQ_USER": ""}, "ACTIVEMQ_USER and ACTIVEMQ_PASSWORD must both be set"),
        ({"ACTIVEMQ_PASSWORD": ""}, "ACTIVEMQ_USER and ACTIVEMQ_PASSWORD must both be set"),
    ],
)
def test_every_program_refuses_unsafe_broker_credentials(
    env: pytest.MonkeyPatch, values: dict[str, str], message: str
) -> None:
    _production(env, **values)
    with pytest.raises(ProductionConfigError, match=message) as caught:
        get_settings()
    assert "SWF_PROFILE=production" in str(caught.value)
    assert caught.value.problems == [p for p in caught.value.problems if message in p]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"SWF_DEBUG": "true"}, "SWF_DEBUG is on"),
        ({"SWF_SECRET_KEY": ""}, "SWF_SECRET_KEY is not set"),
        ({"SWF_SECRET_KEY": "x" * 31}, "SWF_SECRET_KEY is shorter than 32 characters"),
        ({"SWF_ALLOWED_HOSTS": ""}, "SWF_ALLOWED_HOSTS is empty"),
        ({"SWF_ALLOWED_HOSTS": " , "}, "SWF_ALLOWED_HOSTS is empty"),
        ({"SWF_ALLOWED_HOSTS": "*"}, "SWF_ALLOWED_HOSTS contains '*'"),
        ({"SWF_ALLOWED_HOSTS": "monitor.example.org,*"}, "SWF_ALLOWED_HOSTS contains '*'"),
        ({"ACTIVEMQ_USER": "admin", "ACTIVEMQ_PASSWORD": "admin"}, "admin/admin"),
    ],
)
def test_the_monitor_refuses_to_start(
    env: pytest.MonkeyPatch, values: dict[str, str], message: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    _production(env, **values)
    with pytest.raises(ImproperlyConfigured, match=message) as caught:
        _monitor_settings()
    assert str(caught.value).count("\n  - ") == 1  # only this problem
    assert not (
        Path(os.environ["SWF_HOME"]) / "monitor-secret-key"
    ).exists()  # no dev key generated


def test_the_monitor_names_every_problem_at_once(env: pytest.MonkeyPatch) -> None:
    from django.core.exceptions import ImproperlyConfigured

    _production(
        env,
        SWF_DEBUG="1",
        SWF_SECRET_KEY="short",
        SWF_ALLOWED_HOSTS="*",
        ACTIVEMQ_USER="admin",
        ACTIVEMQ_PASSWORD="admin",
    )
    with pytest.raises(ImproperlyConfigured) as caught:
        _monitor_settings()
    text = str(caught.value)
    for message in ("admin/admin", "SWF_DEBUG is on", "shorter than 32", "contains '*'"):
        assert message in text
    assert "short" not in text.replace("shorter", "")  # the key's value is never shown


def test_a_correct_production_environment_passes(env: pytest.MonkeyPatch) -> None:
    _production(env)
    settings = get_settings()
    assert settings.profile is Profile.PRODUCTION
    assert settings.production_problems(monitor=True) == []
    django_settings = _monitor_settings()
    assert django_settings["DEBUG"] is False
    assert django_settings["SECRET_KEY"] == GOOD_KEY
    assert django_settings["ALLOWED_HOSTS"] == ["monitor.example.org"]


def test_cookies_are_secure_in_production_unless_said_otherwise(env: pytest.MonkeyPatch) -> None:
    assert (
        _monitor_settings()["SESSION_COOKIE_SECURE"] is False
    )  # dev: plain http://127.0.0.1 must work
    _production(env)
    django_settings = _monitor_settings()
    assert (
        django_settings["SESSION_COOKIE_SECURE"] is True
        and django_settings["CSRF_COOKIE_SECURE"] is True
    )
    _production(env, SWF_SECURE_COOKIES="false")
    django_settings = _monitor_settings()
    assert (
        django_settings["SESSION_COOKIE_SECURE"] is False
        and django_settings["CSRF_COOKIE_SECURE"] is False
    )


def test_anonymous_logs_come_only_from_listed_networks_in_production(
    env: pytest.MonkeyPatch,
) -> None:
    """Dev: loopback by default. Production: the explicit list only (a local proxy makes every
    client local).
    """
    assert _monitor_settings()["SWF_API_ANONYMOUS_LOGS_FROM"] == ["127.0.0.0/8", "::1/128"]
    _production(env)
    assert _monitor_settings()["SWF_API_ANONYMOUS_LOGS_FROM"] == []
    _production(env, SWF_API_ANONYMOUS_LOGS_FROM="10.1.0.0/16, 192.0.2.10")
    assert _monitor_settings()["SWF_API_ANONYMOUS_LOGS_FROM"] == ["10.1.0.0/16", "192.0.2.10/32"]
    _production(env, SWF_API_ANONYMOUS_LOGS_RATE="20/min")
    assert _monitor_settings()["SWF_API_ANONYMOUS_LOGS_RATE"] == "20/min"


def test_secrets_are_not_in_reprs(env: pytest.MonkeyPatch) -> None:
    _production(env, SWF_API_TOKEN=TOKEN, SWF_SECRET_KEY=SECRET_KEY)
    settings = Settings()
    for field, model in (
        ("password", settings.broker),
        ("api_token", settings.monitor),
        ("secret_key", settings.monitor),
    ):
        assert type(model).model_fields[field].repr is False
    for text in (repr(settings), str(settings), repr(settings.broker), repr(settings.monitor)):
        for secret in (PASSWORD, TOKEN, SECRET_KEY):
            assert secret not in text


def test_stomp_frames_are_not_logged_even_with_verbose() -> None:
    from swf_testbed.cli import setup_logging

    root = logging.getLogger()
    saved = root.level, list(root.handlers), logging.getLogger("stomp.py").level
    try:
        setup_logging(verbose=True)
        assert not logging.getLogger("stomp.py").isEnabledFor(
            logging.INFO
        )  # frames (CONNECT) log at DEBUG
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]
        logging.getLogger("stomp.py").setLevel(saved[2])


def _agent_env(extra: dict[str, str]) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SWF_", "ACTIVEMQ_")) and k != "DATABASE_URL"
    }
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


AGENT = [
    sys.executable,
    "-m",
    "swf_testbed.cli",
    "-v",
    "agent",
    "run",
    "tests.support.agents:EchoAgent",
]


def test_an_agent_refuses_admin_admin_in_production(tmp_path: Path) -> None:
    env = _agent_env(
        {
            "SWF_HOME": str(tmp_path),
            "SWF_PROFILE": "production",
            "ACTIVEMQ_USER": "admin",
            "ACTIVEMQ_PASSWORD": "admin",
            "ACTIVEMQ_PORT": "1",
        }
    )
    done = subprocess.run(
        [*AGENT, "--name", "x", "--namespace", "y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "admin/admin" in done.stdout + done.stderr


@pytest.mark.slow
def test_secrets_never_logged(embedded_broker: BrokerProcess, tmp_path: Path) -> None:
    """A real agent with -v debug logging, in a correct production environment, up to READY and
    stopped.
    """
    from swf_testbed.messages import OperationalState
    from swf_testbed.mq.destinations import HEARTBEAT_TOPIC
    from tests.support.collect import Collector

    broker = embedded_broker
    ns = f"secrets-{uuid.uuid4().hex[:8]}"
    env = _agent_env(
        {
            **broker.env,
            "SWF_HOME": str(tmp_path),
            "SWF_PROFILE": "production",
            "ACTIVEMQ_USER": "swf-agent",
            "ACTIVEMQ_PASSWORD": PASSWORD,
            "SWF_API_TOKEN": TOKEN,
            "SWF_SECRET_KEY": SECRET_KEY,
        }
    )
    watch = Collector(broker.settings(), HEARTBEAT_TOPIC)
    log = tmp_path / "agent.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*AGENT, "--name", "x", "--namespace", ns, "--heartbeat-interval", "0.5"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        watch.wait_for(
            lambda ms: any(
                m.msg_type == "heartbeat"
                and m.namespace == ns
                and m.operational_state is OperationalState.READY
                for m in ms
            ),
            timeout=60,
            what="READY heartbeat",
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        watch.close()
    output = log.read_text(errors="replace")
    assert " DEBUG " in output  # -v really logged at debug level
    for secret in (PASSWORD, TOKEN, SECRET_KEY):
        assert secret not in output

"""Helpers for tests that run the ingest as its own process against a real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.db import connection

from swf_testbed.messages import Heartbeat
from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC
from swf_testbed.testing.brokers import BrokerProcess


def database_url_of_tests() -> str:
    """The URL of the database Django's test runner created (the ingest process must use it)."""
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    user = s.get("USER") or ""
    password = f":{s['PASSWORD']}" if s.get("PASSWORD") else ""
    auth = f"{user}{password}@" if user else ""
    return f"postgres://{auth}{s.get('HOST') or '127.0.0.1'}:{s.get('PORT') or 5432}/{s['NAME']}"


class IngestProcess:
    """``python -m swf_testbed.monitor.manage ingest`` as a child process."""

    def __init__(
        self, broker: BrokerProcess, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.broker = broker
        self.args = list(args)
        self.extra_env = env or {}
        self.log_path = Path(tempfile.mkdtemp(prefix="swf-ingest-")) / "ingest.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> IngestProcess:
        env = {
            **os.environ,
            **self.broker.env,
            "DATABASE_URL": database_url_of_tests(),
            "DJANGO_SETTINGS_MODULE": "swf_testbed.monitor.settings",
            "SWF_HOME": str(self.log_path.parent),
            "ACTIVEMQ_HEARTBEAT_MS": "2000",
            "ACTIVEMQ_RECONNECT_INITIAL_S": "0.1",
            "ACTIVEMQ_RECONNECT_MAX_S": "1.0",
            **self.extra_env,
        }
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "swf_testbed.monitor.manage",
                    "ingest",
                    "--no-migrate",
                    *self.args,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def recorded_through_sentinel(
    send: Callable[[bytes], object], timeout: float = 90.0, what: str = "the sentinel"
) -> bytes:
    """Send a sentinel with ``send`` (the producer and destination of the messages before it)
    and wait until the ingest has recorded it; returns its body.

    The ingest writes a subscription's deliveries in order, and a redelivery
    comes before what was sent after it: once the sentinel is recorded, so
    is every earlier message, and any duplicate of one. Counts can then be
    asserted with no sleeping for what might still come. The body is not
    JSON, so it is recorded as invalid and projected nowhere.
    """
    from swf_testbed.monitor.api.models import WorkflowMessage

    body = f"sentinel {uuid.uuid4().hex}"
    send(body.encode())
    wait_for(
        lambda: WorkflowMessage.objects.filter(body=body).exists(),
        timeout,
        f"{what} to be recorded",
        interval=0.2,
    )
    return body.encode()


def probe(namespace: str = "probe") -> Heartbeat:
    return Heartbeat(
        namespace=namespace,
        sender="probe",
        agent_name="probe",
        agent_type="probe",
        instance_id=uuid.uuid4().hex,
        pid=1,
        hostname="h",
        operational_state="READY",
        interval_s=60,
    )


def wait_until_ingesting(
    client: BrokerClient,
    ingest: IngestProcess,
    timeout: float = 60.0,
    any_recorded: Callable[[list[str]], bool] | None = None,
) -> None:
    """Send probes until one is recorded: the ingest is then subscribed (and its durable
    subscriptions exist).

    ``any_recorded(msg_ids)`` looks in the database; by default through this test's Django ORM.
    """
    if any_recorded is None:
        from swf_testbed.monitor.api.models import WorkflowMessage

        def any_recorded(msg_ids: list[str]) -> bool:
            return WorkflowMessage.objects.filter(msg_id__in=msg_ids).exists()

    sent: list[str] = []

    def recorded() -> bool:
        assert ingest.alive, f"ingest exited:\n{ingest.log()[-3000:]}"
        msg = probe()
        sent.append(msg.msg_id)
        client.send(HEARTBEAT_TOPIC, msg, persistent=False)
        return any_recorded(sent)

    wait_for(recorded, timeout, "the ingest to record a probe", interval=0.3)

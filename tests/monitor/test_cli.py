"""``swf-testbed monitor …`` on the embedded defaults: nothing set up beforehand."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import pytest

from swf_testbed.messages import StartRun
from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import RUN_TOPIC
from swf_testbed.testing.brokers import BrokerProcess, free_port, wait_for_port

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from swf_testbed.cli import main; main()"]


def _env(home: Path, broker: BrokerProcess | None = None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE")
    }
    env["SWF_HOME"] = str(home)
    if broker is not None:
        env.update(broker.env)
    return env


def test_token_creates_the_user_and_prints_a_stable_token() -> None:
    home = Path(tempfile.mkdtemp(prefix="swf-cli-"))
    first = subprocess.run(
        [*CLI, "monitor", "token", "carol"],
        check=False,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert first.returncode == 0, first.stderr
    token = first.stdout.strip()
    assert len(token) == 40
    again = subprocess.run(
        [*CLI, "monitor", "token", "carol"],
        check=True,
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.stdout.strip() == token
    assert (home / "monitor.sqlite3").exists()


def test_serve_and_ingest_on_embedded_defaults(embedded_broker: BrokerProcess) -> None:
    home = Path(tempfile.mkdtemp(prefix="swf-cli-"))
    env = _env(home, embedded_broker)
    port = free_port()
    token = subprocess.run(
        [*CLI, "monitor", "token", "dave"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    with open(home / "serve.log", "wb") as serve_log, open(home / "ingest.log", "wb") as ingest_log:
        serve = subprocess.Popen(
            [*CLI, "monitor", "serve", "--port", str(port)],
            env=env,
            stdout=serve_log,
            stderr=subprocess.STDOUT,
        )
        ingest = subprocess.Popen(
            [*CLI, "monitor", "ingest", "--client-id", f"cli-{uuid.uuid4().hex[:6]}"],
            env=env,
            stdout=ingest_log,
            stderr=subprocess.STDOUT,
        )
    client = BrokerClient(embedded_broker.settings(), client_name="cli-test").start(wait=30)
    try:
        wait_for_port("127.0.0.1", port, 60, serve)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/").status_code == 200
        assert httpx.get(base + "/static/front/vendor/htmx.min.js").status_code == 200
        reply = httpx.post(
            base + "/api/state/next-run-number/", headers={"Authorization": f"Token {token}"}
        )
        assert reply.status_code == 200 and reply.json()["status"] == "success"
        assert httpx.post(base + "/api/state/next-run-number/").status_code == 401
        deadline = time.monotonic() + 60
        seen = []
        while time.monotonic() < deadline and not seen:
            msg = StartRun(
                namespace="cli",
                sender="daq",
                execution_id="cli-exec",
                run_id=1,
                state="run",
                substate="physics",
            )
            client.send(RUN_TOPIC, msg)
            time.sleep(0.5)
            seen = httpx.get(
                base + "/api/workflow-messages/", params={"execution_id": "cli-exec"}
            ).json()
        assert seen and seen[0]["msg_type"] == "start_run", (home / "ingest.log").read_text()[
            -2000:
        ]
    finally:
        client.close()
        for proc in (serve, ingest):
            proc.terminate()
        for proc in (serve, ingest):
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    assert ingest.returncode == 0, (home / "ingest.log").read_text()[-2000:]


def test_user_creates_a_login_from_a_password_file_and_refuses_weak_ones(tmp_path: Path) -> None:
    import sqlite3

    from django.contrib.auth.hashers import check_password

    home = tmp_path / "home"
    secret = tmp_path / "password"
    secret.write_text("streaming-testbed-42\n")

    def user(*args: str, password: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "monitor", "user", *args],
            env=_env(home),
            capture_output=True,
            text=True,
            timeout=120,
            input=password,
            check=False,
        )

    made = user("erin", "--password-file", str(secret))
    assert made.returncode == 0, made.stderr
    assert "created login erin; log in at http://127.0.0.1:8002/login/" in made.stdout
    again = user("erin", "--staff", "--password-file", str(secret))
    assert (
        again.returncode == 0
        and "password set for erin (staff: may also use the admin)" in again.stdout
    )
    weak = tmp_path / "weak"
    weak.write_text("erin\n")
    refused = user("frank", "--password-file", str(weak))
    assert refused.returncode == 2 and "error: password refused: " in refused.stderr, refused.stderr
    prompted = user(
        "gina", password="streaming-testbed-43\nstreaming-testbed-43\n"
    )  # the prompt, twice
    assert prompted.returncode == 0, prompted.stderr
    with sqlite3.connect(home / "monitor.sqlite3") as db:
        rows = {
            name: (encoded, staff)
            for name, encoded, staff in db.execute(
                "select username, password, is_staff from auth_user"
            )
        }
    assert set(rows) == {"erin", "gina"}  # frank was refused
    assert check_password("streaming-testbed-42", rows["erin"][0]) and rows["erin"][1] == 1
    assert check_password("streaming-testbed-43", rows["gina"][0]) and rows["gina"][1] == 0
    assert "streaming-testbed" not in made.stdout + made.stderr  # never echoed

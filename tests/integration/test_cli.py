"""The command line as a user runs it: real processes, real broker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import stomp

from swf_testbed.testing.brokers import BrokerProcess, free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SWF = shutil.which("swf-testbed", path=str(BIN)) or str(BIN / "swf-testbed")


def test_an_outside_stomp_client_publishes_and_subscribes_through_swf_testbed_broker(
    tmp_path: Path,
) -> None:
    port = free_port()
    log = open(tmp_path / "broker.log", "wb")
    proc = subprocess.Popen(
        [SWF, "broker", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for_port("127.0.0.1", port, 20, proc)
        received: list[bytes] = []
        done = threading.Event()

        class Listener(stomp.ConnectionListener):
            def on_message(self, frame: stomp.utils.Frame) -> None:
                received.append(frame.body)
                if len(received) == 3:
                    done.set()

        conn = stomp.Connection([("127.0.0.1", port)], auto_decode=False)
        conn.set_listener("l", Listener())
        conn.connect(wait=True)
        conn.subscribe("/queue/outside", id="1", ack="auto", headers={"receipt": "sub-1"})
        for i in range(3):
            conn.send("/queue/outside", f"hello {i} ünïcode".encode())
        assert done.wait(10), f"got only {received}"
        assert received == [f"hello {i} ünïcode".encode() for i in range(3)]
        conn.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        assert "listening on 127.0.0.1:" in (tmp_path / "broker.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


@pytest.mark.slow
def test_the_readme_main_command_runs_the_example_testbed(tmp_path: Path) -> None:
    """``./dev run`` is ``swf-testbed run examples/testbed.toml``: all embedded, one whole run."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACTIVEMQ_", "SWF_", "DATABASE_URL"))
    }
    env.update(
        {
            "SWF_HOME": str(tmp_path / "home"),
            "ACTIVEMQ_PORT": str(free_port()),
            "SWF_MONITOR_URL": f"http://127.0.0.1:{free_port()}",
        }
    )
    example = str(ROOT / "examples" / "testbed.toml")
    try:
        result = subprocess.run(
            [SWF, "run", example], env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, result.stdout + result.stderr
        assert "10 STFs produced, 10 processed" in result.stdout
        assert (
            f"monitor: {env['SWF_MONITOR_URL']}/executions/stf_datataking-example-" in result.stdout
        )
    finally:
        subprocess.run(
            [SWF, "stop", "--all", "-c", example], env=env, capture_output=True, timeout=120
        )


def test_broker_rejects_half_given_credentials() -> None:
    result = subprocess.run(
        [SWF, "broker", "--login", "alice"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--login and --passcode go together" in result.stderr


def test_agent_run_reports_a_bad_target_clearly(embedded_broker: BrokerProcess) -> None:
    result = subprocess.run(
        [SWF, "agent", "run", "no.such.module:Agent", "--name", "x", "--namespace", "ns"],
        env={**os.environ, **embedded_broker.env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "cannot import 'no.such.module'" in result.stderr

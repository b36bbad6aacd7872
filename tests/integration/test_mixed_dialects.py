"""Mixed dialects in one namespace: our data agent, a real process, handles an ePIC v28
runner's messages.

The v28 runner publishes on ``/topic/epictopic`` with stomp.py (no msg_id,
naive times, run number as a string). Our agent takes them through the
runtime's tolerant path: it opens the run, registers each STF, announces in
our strict schema the ones it can (a v28 ``stf_gen`` has no size or checksum,
which ``stf_ready`` needs: counted, not announced) and closes the run
without a count mismatch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

import pytest

from swf_testbed.messages import Heartbeat, StfReady
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC, data_topic
from swf_testbed.testing.brokers import BrokerProcess
from tests.support.collect import Collector
from tests.support.v28 import V28Publisher, V28Run

pytestmark = pytest.mark.slow


def test_our_data_agent_handles_a_v28_run(any_broker: BrokerProcess, tmp_path: object) -> None:
    tag = uuid.uuid4().hex[:8]
    namespace = f"mixed-{tag}"
    run = V28Run(
        namespace, f"stf_datataking-alice-{tag}", 300_000 + int(tag, 16) % 10**5, stf_count=3
    )
    watch = Collector(any_broker.settings(), HEARTBEAT_TOPIC, data_topic(namespace))
    env = {
        **os.environ,
        **any_broker.env,
        "ACTIVEMQ_HEARTBEAT_MS": "2000",
        "SWF_LEGACY_TIMEZONE": "Europe/Berlin",
    }
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swf_testbed.cli",
            "agent",
            "run",
            "swf_testbed.agents.data:DataAgent",
            "--name",
            "data",
            "--namespace",
            namespace,
            "--heartbeat-interval",
            "60",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:

        def beats(ms: list, state: str) -> list[Heartbeat]:
            return [
                m
                for m in ms
                if isinstance(m, Heartbeat)
                and m.namespace == namespace
                and m.operational_state == state
            ]

        watch.wait_for(lambda ms: beats(ms, "READY"), timeout=60, what="the data agent READY")
        publisher = V28Publisher(any_broker, "workflow_runner-agent-alice-1")
        try:
            for body in run.lifecycle()[:-1]:
                publisher.send("/topic/epictopic", body)
            # a v28 stf_gen that does carry what stf_ready needs is announced, in our schema
            publisher.send(
                "/topic/epictopic", {**run.stf_gen(4), "size_bytes": 4096, "checksum": "0a0b0c0d"}
            )
            publisher.send("/topic/epictopic", {**run.end_run(), "total_stf_files": 4})
        finally:
            publisher.close()
        announced = watch.wait_for(
            lambda ms: any(isinstance(m, StfReady) for m in ms),
            timeout=60,
            what="the stf_ready of the complete v28 stf_gen",
        )
        ready = [m for m in announced if isinstance(m, StfReady)]
        assert [
            (m.filename, m.size_bytes, m.checksum, m.run_id, m.execution_id) for m in ready
        ] == [(run.filename(4), 4096, "0a0b0c0d", run.run_number, run.execution_id)]
        assert (
            ready[0].dialect == "swf" and ready[0].schema_version == 1
        )  # the Collector parses strictly
        assert ready[0].sender == "data" and ready[0].namespace == namespace

        proc.send_signal(signal.SIGTERM)  # EXITED carries the final counters
        final = watch.wait_for(
            lambda ms: beats(ms, "EXITED"), timeout=60, what="the EXITED heartbeat"
        )
        exited = beats(final, "EXITED")[-1]
        counters = exited.counters
        assert counters.get("runs_registered") == 1 and counters.get("runs_closed") == 1
        assert counters.get("stf_not_announced") == 3 and counters.get("stf_registered") == 1
        assert "stf_count_mismatches" not in counters and counters.get("invalid", 0) == 0
        assert "DAQ reports" not in exited.description  # no STF count mismatch reported
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        watch.close()

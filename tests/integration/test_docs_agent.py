"""docs/writing-an-agent.md: its code is examples/my_agent.py, and that agent works as the doc says.

The example agent runs as a real process (``swf-testbed agent run my_agent:StfCounter`` with
``PYTHONPATH=examples``) on the embedded broker; the real DataAgent (in-process) turns the
``stf_gen`` messages of the real DaqSimulator into ``stf_ready`` on the data topic, as in a testbed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from swf_testbed.agents.data import DataAgent
from swf_testbed.daq.simulator import DaqConfig, DaqSimulator
from swf_testbed.messages import Heartbeat, Message, OperationalState
from swf_testbed.mq import BrokerClient
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC, RUN_TOPIC
from swf_testbed.testing.brokers import BrokerProcess
from tests.support.collect import Collector, eventually

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "writing-an-agent.md"
EXAMPLE = ROOT / "examples" / "my_agent.py"
BEGIN = "<!-- begin examples/my_agent.py -->"
END = "<!-- end examples/my_agent.py -->"
RUNS = {101: 3, 102: 5}  # run id: STFs


def doc_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    assert text.count(BEGIN) == 1 and text.count(END) == 1, (
        f"{DOC.name}: expected one {BEGIN} … {END} block"
    )
    block = text.split(BEGIN, 1)[1].split(END, 1)[0]
    m = re.fullmatch(r"\s*```python\n(.*?)```\s*", block, re.DOTALL)
    assert m, f"{DOC.name}: between the markers there must be exactly one ```python code block"
    return m.group(1)


def test_doc_shows_the_example_verbatim() -> None:
    assert doc_code() == EXAMPLE.read_text(encoding="utf-8")


def test_the_docs_dispatch_example_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The doc's test without a broker (``Agent.dispatch``) works as shown."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    [snippet] = [b for b in blocks if "counter.dispatch(" in b]
    monkeypatch.syspath_prepend(str(EXAMPLE.parent))
    monkeypatch.delitem(sys.modules, "my_agent", raising=False)
    exec(compile(snippet, f"{DOC.name} (dispatch example)", "exec"), {})


def _beats(ms: list[Message], ns: str) -> list[Heartbeat]:
    return [
        m
        for m in ms
        if isinstance(m, Heartbeat) and m.namespace == ns and m.agent_name == "counter"
    ]


def _counted(beat: Heartbeat) -> bool:
    c = beat.counters
    return (
        c.get("runs_ended") == len(RUNS)
        and c.get("stf_ready") == sum(RUNS.values())
        and all(c.get(f"run_{run}_stfs") == n for run, n in RUNS.items())
    )


def test_example_agent_counts_stfs_per_run(embedded_broker: BrokerProcess, tmp_path: Path) -> None:
    ns = f"doc{uuid.uuid4().hex[:6]}"
    settings = embedded_broker.settings()
    watch = Collector(settings, HEARTBEAT_TOPIC)
    log_path = tmp_path / "counter.log"
    env = {**os.environ, **embedded_broker.env, "PYTHONPATH": str(EXAMPLE.parent)}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "swf_testbed.cli",
                "agent",
                "run",
                "my_agent:StfCounter",
                "--name",
                "counter",
                "--namespace",
                ns,
                "--heartbeat-interval",
                "0.3",
                "--drain-timeout",
                "2",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    data = DataAgent("data", ns, broker=settings, heartbeat_interval=5).start()
    try:
        try:
            watch.wait_for(
                lambda ms: any(
                    b.operational_state is OperationalState.READY for b in _beats(ms, ns)
                ),
                timeout=30,
                what="the counter READY",
            )
        except AssertionError:
            raise AssertionError(
                f"the example agent did not get READY:\n{log_path.read_text()}"
            ) from None
        assert _beats(watch.messages, ns)[-1].agent_type == "stf-counter"

        with BrokerClient(settings, client_name="daq").start() as daq:
            for run_id, stfs in RUNS.items():
                sim = DaqSimulator(
                    DaqConfig(stf_count=stfs),
                    lambda m: daq.send(RUN_TOPIC, m),
                    namespace=ns,
                    sender="daqsim",
                    execution_id=f"doc-{ns}-{run_id}",
                    run_id=run_id,
                    seed=1,
                )
                assert sim.run(time_scale=0).stf_count == stfs

        beats = watch.wait_for(
            lambda ms: any(_counted(b) for b in _beats(ms, ns)),
            timeout=20,
            what=f"the counter's heartbeat counters for runs {RUNS}",
        )
        last = [b for b in _beats(beats, ns) if _counted(b)][-1]
        assert (
            last.counters["sent"] == 0
        )  # it publishes nothing (heartbeats are not counted as sent)
        assert last.counters.get("stf_duplicates", 0) == 0 and last.counters["failed"] == 0

        lines = {
            run: f"counter: run {run} ended: {n} STFs counted, DAQ reports {n}"
            for run, n in RUNS.items()
        }
        eventually(
            lambda: all(line in log_path.read_text() for line in lines.values()),
            timeout=10,
            what="one log line per run",
        )
        text = log_path.read_text()
        for line in lines.values():
            assert text.count(line) == 1, text
        assert len(re.findall(r"counter: run \d+ ended", text)) == len(RUNS), text
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait(5)
        data.shutdown()
        watch.close()
    assert code == 0, log_path.read_text()

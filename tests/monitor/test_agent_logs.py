"""Our agents' own logs reach the monitor: real broker, real ingest, real web, a real agent process.

A WARNING an agent logs while it handles a run's message is on the Logs page,
filtered by that execution, and on the execution page. With the ingest down
the agent goes on processing everything, in order, and its logs arrive once
the ingest is back; with its broker link cut it keeps at most its buffer's
bound and says how many it dropped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.messages import LogBatch, ProcessingComplete, StfReady, WorkflowStarted
from swf_testbed.monitor.api import models as m
from swf_testbed.mq import BrokerClient, Topic
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC, logs_topic, replies_topic
from swf_testbed.testing.brokers import BrokerProcess, start_embedded
from swf_testbed.testing.faultproxy import FaultProxy
from swf_testbed.testing.monitor import MonitorWebProcess
from tests.support.collect import Collector

from .ingestlib import IngestProcess, database_url_of_tests, wait_for, wait_until_ingesting

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120.0


class AgentProcess:
    """``swf-testbed agent run tests.support.agents:LoggingAgent`` as a child process, its output in
    a file.
    """

    def __init__(self, broker_env: dict[str, str], namespace: str, name: str, *args: str) -> None:
        self.log_path = Path(tempfile.mkdtemp(prefix="swf-agent-")) / "agent.log"
        env = {
            **os.environ,
            **broker_env,
            "PYTHONPATH": str(ROOT),
            "ACTIVEMQ_HEARTBEAT_MS": "2000",
            "ACTIVEMQ_RECONNECT_INITIAL_S": "0.1",
            "ACTIVEMQ_RECONNECT_MAX_S": "0.5",
        }
        env.pop("DJANGO_SETTINGS_MODULE", None)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "swf_testbed.cli",
                    "agent",
                    "run",
                    "tests.support.agents:LoggingAgent",
                    "--name",
                    name,
                    "--namespace",
                    namespace,
                    "--heartbeat-interval",
                    "0.5",
                    *args,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ticks(self) -> int:
        found = re.findall(r"tick (\d+):", self.output())
        return max(map(int, found)) if found else 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def broker() -> Iterator[BrokerProcess]:
    proc = start_embedded()
    yield proc
    proc.stop()


@pytest.fixture
def started() -> Iterator[list[Any]]:
    things: list[Any] = []
    yield things
    for thing in reversed(things):
        if isinstance(thing, IngestProcess):
            thing.kill()
        elif isinstance(thing, (AgentProcess, MonitorWebProcess)):
            thing.stop()
        else:  # clients, collectors, the proxy
            thing.close()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 - a local test server
        return response.read().decode()


def _stf(ns: str, filename: str, execution_id: str, run_id: int) -> StfReady:
    return StfReady(
        namespace=ns,
        sender="test",
        execution_id=execution_id,
        run_id=run_id,
        state="run",
        substate="physics",
        filename=filename,
        url=f"file:///buffer/{filename}",
        sequence=0,
        size_bytes=100,
        checksum="0000abcd",
    )


def _ready(watch: Collector, ns: str) -> None:
    watch.wait_for(
        lambda ms: any(
            x.msg_type == "heartbeat" and x.namespace == ns and x.operational_state.value == "READY"
            for x in ms
        ),
        timeout=TIMEOUT,
        what="the agent READY",
    )


def test_a_warning_during_a_run_is_on_the_logs_page_of_its_execution(
    broker: BrokerProcess, started: list[Any]
) -> None:
    tag = uuid.uuid4().hex[:8]
    ns, topic, out, execution_id = f"ns{tag}", f"in.{tag}", f"out.{tag}", f"exec-{tag}"
    client = BrokerClient(broker.settings(), client_name="test").start(wait=30)
    started.append(client)
    ingest = IngestProcess(broker, "--client-id", f"test-ingest-{tag}").start()
    started.append(ingest)
    web = MonitorWebProcess(database_url_of_tests()).start()
    started.append(web)
    wait_until_ingesting(client, ingest)
    watch = Collector(broker.settings(), HEARTBEAT_TOPIC)
    started.append(watch)
    agent = AgentProcess(
        broker.env, ns, "logger", "--set", f"topic={topic}", "--set", f"reply_topic={out}"
    )
    started.append(agent)
    _ready(watch, ns)
    client.send(
        replies_topic(ns),
        WorkflowStarted(
            namespace=ns, sender="runner", execution_id=execution_id, workflow_name="stf_datataking"
        ),
    )
    client.send(Topic(topic), _stf(ns, "swf.run.000001.stf", execution_id, 100001))
    client.send(Topic(topic), _stf(ns, "swf.other.000001.stf", f"exec-other-{tag}", 100002))

    def shown() -> str:
        page = _get(f"{web.url}/logs/?execution_id={execution_id}")
        return page if "handled swf.run.000001.stf" in page else ""

    page = wait_for(shown, TIMEOUT, "the WARNING on the Logs page of its execution", interval=0.5)
    rows = page.split('id="log-rows"', 1)[1].split("</table>", 1)[0]
    assert "swf.other" not in rows  # the other execution's record is filtered out
    assert "logger" in rows and "WARNING" in rows and "100001" in rows
    log = m.AppLog.objects.get(message="handled swf.run.000001.stf")
    assert (log.namespace_id, log.instance_name, log.app_name) == (ns, "logger", "test-logging")
    assert (log.execution_id, log.run_id, log.levelname) == (execution_id, 100001, "WARNING")
    wait_for(
        lambda: m.WorkflowExecution.objects.filter(execution_id=execution_id).exists(),
        TIMEOUT,
        "the execution recorded",
    )
    assert "handled swf.run.000001.stf" in _get(f"{web.url}/executions/{execution_id}/")


def test_ingest_down_agent_keeps_going_and_logs_arrive_later_up_to_the_bound(
    broker: BrokerProcess, started: list[Any]
) -> None:
    tag = uuid.uuid4().hex[:8]
    ns, topic, out = f"ns{tag}", f"in.{tag}", f"out.{tag}"
    bound, n = 20, 100
    client = BrokerClient(broker.settings(), client_name="test").start(wait=30)
    started.append(client)
    ingest_id = f"test-ingest-{tag}"
    ingest = IngestProcess(broker, "--client-id", ingest_id).start()
    started.append(ingest)
    web = MonitorWebProcess(database_url_of_tests()).start()
    started.append(web)
    wait_until_ingesting(client, ingest)
    watch = Collector(broker.settings(), HEARTBEAT_TOPIC, Topic(out), logs_topic(ns))
    started.append(watch)
    proxy = FaultProxy(broker.host, broker.port).start()
    started.append(proxy)
    proxied = {
        **broker.env,
        "ACTIVEMQ_HOST": proxy.address[0],
        "ACTIVEMQ_PORT": str(proxy.address[1]),
    }
    agent = AgentProcess(
        proxied,
        ns,
        "logger",
        "--log-buffer",
        str(bound),
        "--set",
        f"topic={topic}",
        "--set",
        f"reply_topic={out}",
    )
    started.append(agent)
    _ready(watch, ns)

    def replies(prefix: str) -> list[str]:
        return [
            x.filename
            for x in watch.of_type("processing_complete")
            if isinstance(x, ProcessingComplete)
            and x.namespace == ns
            and x.filename.startswith(prefix)
        ]

    def logged(ms: list[Any], prefix: str) -> list[str]:
        return [
            r.message
            for x in ms
            if isinstance(x, LogBatch) and x.namespace == ns
            for r in x.records
            if r.message.startswith(prefix)
        ]

    # with the ingest up, then with it down: the same work, all of it, in the same order
    for phase in ("up", "down"):
        if phase == "down":
            ingest.kill()
        names = [f"{phase}.{i:04d}.stf" for i in range(n)]
        chunk = bound // 2  # what fits the small buffer: the drops are for the cut below
        for start in range(0, n, chunk):
            for name in names[start : start + chunk]:
                client.send(Topic(topic), _stf(ns, name, f"exec-{tag}", 100003))
            done = start + chunk
            watch.wait_for(
                lambda ms, phase=phase, done=done: len(logged(ms, f"handled {phase}.")) >= done,
                timeout=TIMEOUT,
                what=f"{done} warnings ({phase}) sent",
            )
        watch.wait_for(
            lambda ms, phase=phase: len(replies(f"{phase}.")) == n,
            timeout=TIMEOUT,
            what=f"{n} replies ({phase})",
        )
        assert replies(f"{phase}.") == names
        assert logged(watch.messages, f"handled {phase}.") == [f"handled {name}" for name in names]
    batches = [x for x in watch.of_type("log_batch") if x.namespace == ns]
    assert not any(x.dropped for x in batches)  # type: ignore[attr-defined]  # LogBatches
    # the agent's link to the broker cut: it keeps at most `bound` records, and counts the rest
    proxy.cut()
    wait_for(
        lambda: agent.ticks() >= 3 * bound,
        TIMEOUT,
        f"{3 * bound} ticks logged by the agent",
        interval=0.2,
    )
    proxy.restore()
    batches = watch.wait_for(
        lambda ms: any(isinstance(x, LogBatch) and x.namespace == ns and x.dropped for x in ms),
        timeout=TIMEOUT,
        what="a batch reporting drops",
    )
    mine = [x for x in batches if isinstance(x, LogBatch) and x.namespace == ns]
    dropped = sum(x.dropped for x in mine)
    ticks_sent = logged(batches, "tick ")
    assert 0 < len(ticks_sent) <= bound
    # it logged at least 3 × bound records during the cut and kept at most bound of them
    assert dropped >= bound
    assert all(x.buffer_size == bound for x in mine)
    # the ingest back: everything the broker kept for it arrives, the drops are shown
    ingest = IngestProcess(broker, "--client-id", ingest_id).start()
    started.append(ingest)
    wait_for(
        lambda: (
            m.AppLog.objects.filter(namespace_id=ns, message__startswith="handled down.").count()
            == n
        ),
        TIMEOUT,
        f"the {n} warnings logged while the ingest was down",
        interval=0.5,
    )
    assert m.AppLog.objects.filter(namespace_id=ns, message__startswith="handled up.").count() == n
    wait_for(
        lambda: (
            m.AppLog.objects.filter(namespace_id=ns, message__startswith="tick ").count()
            == len(logged(watch.messages, "tick "))
        ),
        TIMEOUT,
        "the ticks that were sent",
        interval=0.5,
    )
    gaps = m.AppLog.objects.filter(namespace_id=ns, extra_data__logger=m.AppLog.DROPPED_LOGGER)
    wait_for(
        lambda: sum(g.extra_data["dropped"] for g in gaps) == dropped, TIMEOUT, "the drops recorded"
    )
    total = max(x.dropped_total for x in mine)

    def drop_shown() -> bool:
        page = _get(f"{web.url}/logs/?namespace={ns}")
        table = page.split('id="logs-dropped"', 1)[1].split("</table>", 1)[0]
        match = re.search(r'<td class="num">(\d+)</td>', table)
        return bool(match) and int(match.group(1)) >= total and ">logger</a>" in table

    wait_for(drop_shown, TIMEOUT, "the drop count on the Logs page", interval=0.5)
    agent_row = m.SystemAgent.objects.get(namespace_id=ns, instance_name="logger")
    assert f"{agent_row.counters['log_records_dropped']} dropped by its log buffer" in _get(
        f"{web.url}/agents/{agent_row.pk}/"
    )

"""Faults in the middle of a whole-chain run, and what the monitor holds afterwards.

Each test runs ``swf-testbed run`` with the whole chain (runner, data,
processing, fastmon, fast processing, two workers, the monitor's web and
ingest, under the testbed's supervisord), paced so that the run lasts about
half a minute; once the monitor shows the run under way, a fault is
injected; then the monitor is checked over HTTP: every STF, sample and slice
recorded exactly once, the run ended, the execution completed.

Measured figures (recovery times, what was lost) are printed on the terminal
and recorded as test properties (``--junitxml`` keeps them).
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from swf_testbed.messages import MessageError, parse_message
from swf_testbed.mq import BrokerClient, Delivery, Topic
from swf_testbed.mq.destinations import MONITOR_TOPIC, RUN_TOPIC, data_topic
from swf_testbed.orchestrator.supervisor import Supervisor, runtime_paths
from swf_testbed.testing.brokers import BrokerProcess, activemq_available, free_port, start_activemq
from tests.orchestrator.conftest import Bed
from tests.orchestrator.test_end_to_end import (
    SLICES_PER_SAMPLE,
    _start_chain_run,
    count,
    stack_services,
    wait_until,
)
from tests.support.agents import EchoAgent, stf_ready
from tests.support.collect import Collector

pytestmark = pytest.mark.slow

STFS = 24
SLICES = STFS * SLICES_PER_SAMPLE
WORKFLOW = "time_scale = 2"  # one STF a second: the run lasts about half a minute
PARAMETERS = f"stf_count = {STFS}\nslice_processing_time = 0.1"
FAULT_AFTER_STFS = 6
"""The fault is injected once the monitor holds this many STFs of the run (of ``STFS``)."""


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat()


def report(
    request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str], **figures: Any
) -> None:
    """Measured figures: on the terminal (even under capture) and as junit properties."""
    for key, value in figures.items():
        request.node.user_properties.append((key, value))
    with capsys.disabled():
        print(
            f"\n[faults] {request.node.name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
        )


@dataclass
class Chain:
    """A whole-chain run under way: the bed, the ``swf-testbed run`` process, the monitor's API."""

    bed: Bed
    run: Any
    execution_id: str
    api: httpx.Client
    home: Path
    namespace: str

    def supervisor(self) -> Supervisor:
        return Supervisor(runtime_paths(self.home, self.namespace))

    def pid(self, process: str) -> int:
        return int(self.bed.programs()[process]["pid"])

    def stfs_recorded(self) -> int:
        return count(self.api, "/stf-files/", execution_id=self.execution_id)

    def wait_mid_run(self) -> int:
        """Until the monitor holds ``FAULT_AFTER_STFS`` STFs of the run (and not all of them)."""
        wait_until(
            lambda: self.stfs_recorded() >= FAULT_AFTER_STFS or self.stfs_recorded(),
            "the run under way",
        )
        got = self.stfs_recorded()
        assert got < STFS, f"the run was over ({got} STFs) before the fault: pace it slower"
        return got

    def first_new_message(self, since: float, timeout: float = 120.0, **filters: Any) -> float:
        """Seconds from ``since`` until the monitor holds a message created after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if count(self.api, "/workflow-messages/", sent_after=iso(since), **filters) > 0:
                return time.time() - since
            time.sleep(0.2)
        raise AssertionError(
            f"no message sent after the fault reached the monitor within {timeout:g} s ({filters})"
        )

    def finish(self, timeout: float = 300) -> str:
        out, _ = self.run.communicate(timeout=timeout)
        return str(out)


@pytest.fixture
def chain(make_bed: Any, tmp_path: Path, home: Path) -> Iterator[Any]:
    """``chain(broker, database_url="", broker_section=...)``: start a paced whole-chain run."""
    clients: list[httpx.Client] = []

    def start(
        broker: BrokerProcess | None,
        *,
        database_url: str = "",
        broker_section: str = 'mode = "external"',
        label: str = "fault",
        durable: bool = False,
        run_args: tuple[str, ...] = (),
        workflow: str = WORKFLOW,
    ) -> Chain:
        bed, run, execution_id, port = _start_chain_run(
            make_bed,
            broker,
            tmp_path,
            label,
            workflow=workflow,
            parameters=PARAMETERS,
            database_url=database_url,
            broker_section=broker_section,
            agent_extra="options = { durable = true }\n" if durable else "",
            run_args=run_args,
        )
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10)
        clients.append(api)
        return Chain(bed, run, execution_id, api, home, f"{label}{port}")

    yield start
    for api in clients:
        api.close()


def check_recorded_exactly_once(chain: Chain, *, timeout: float = 120.0) -> dict[str, int]:
    """Every STF, sample and slice of the run in the monitor, once; the run ended, the execution completed.

    Returns the message counts by type (for the report).
    """
    api, eid = chain.api, chain.execution_id

    def complete() -> bool | dict[str, Any]:
        runs = api.get("/runs/", params={"execution_id": eid}).json()
        got: dict[str, Any] = {
            "stf_files": chain.stfs_recorded(),
            "samples": count(api, "/fastmon-files/", execution_id=eid),
            "run_ended": bool(runs) and runs[0]["end_time"] is not None,
            "execution": api.get(f"/workflow-executions/{eid}/").json().get("status"),
        }
        if runs:
            got["slices_completed"] = count(
                api, "/tf-slices/", run_number=runs[0]["run_number"], status="completed"
            )
        want = {
            "stf_files": STFS,
            "samples": STFS,
            "run_ended": True,
            "execution": "completed",
            "slices_completed": SLICES,
        }
        return got == want or got

    wait_until(complete, "every STF, sample and slice in the monitor", timeout=timeout)
    time.sleep(1.5)  # and no more than that, even a while later
    assert complete() is True
    runs = api.get("/runs/", params={"execution_id": eid}).json()
    assert len(runs) == 1
    run_number = runs[0]["run_number"]
    assert count(api, "/tf-slices/", run_number=run_number) == SLICES  # none twice
    state = api.get(f"/run-states/{run_number}/").json()
    assert state["phase"] == "ended", state
    assert state["slices_completed"] == SLICES and state["slices_failed"] == 0, state
    types = (
        "run_imminent",
        "start_run",
        "stf_gen",
        "stf_ready",
        "processing_complete",
        "tf_file_registered",
        "slice",
        "slice_result",
        "end_run",
        "workflow_started",
        "workflow_completed",
    )
    messages = {t: count(api, "/workflow-messages/", execution_id=eid, msg_type=t) for t in types}
    # what the DAQ announced, once each (the runner never sends a run message twice)
    assert (
        messages["stf_gen"] == STFS and messages["run_imminent"] == 1 and messages["start_run"] == 1
    ), messages
    assert messages["workflow_completed"] == 1, messages
    return messages


# --------------------------------------------------------------------------- 1. ActiveMQ killed and restarted


@pytest.fixture
def own_activemq(tmp_path: Path) -> Iterator[BrokerProcess]:
    """An ActiveMQ Classic of this test alone (it gets killed); its data directory outlives a restart."""
    if not activemq_available():
        if os.environ.get("SWF_REQUIRE_ACTIVEMQ", "") not in ("", "0", "false"):
            pytest.fail("SWF_REQUIRE_ACTIVEMQ is set but ActiveMQ Classic is not installed")
        pytest.skip("ActiveMQ Classic not installed (apt-get install -y activemq)")
    broker = start_activemq(workdir=tmp_path / "activemq")
    yield broker
    broker.stop()


def restart_activemq(broker: BrokerProcess) -> BrokerProcess:
    """The same instance again: same ports, same configuration, same KahaDB store."""
    assert broker.workdir is not None
    return start_activemq(port=broker.port, host=broker.host, workdir=broker.workdir)


@pytest.mark.activemq
def test_activemq_killed_mid_run_everything_recorded_once(
    chain: Any,
    own_activemq: BrokerProcess,
    fresh_postgres_database: str,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    c: Chain = chain(
        own_activemq, database_url=fresh_postgres_database, label="amqkill", durable=True
    )
    stfs_at_kill = c.wait_mid_run()
    killed_at = time.time()
    own_activemq.kill()
    time.sleep(2.0)  # down for a moment: every client notices and starts reconnecting
    restarted = restart_activemq(own_activemq)
    try:
        restarted_after = time.time() - killed_at
        recovery = c.first_new_message(killed_at, namespace=c.namespace)
        run_recovery = c.first_new_message(killed_at, execution_id=c.execution_id)
        out = c.finish()
        assert c.run.returncode == 0, out
        assert f"{STFS} STFs produced, {STFS} processed, {SLICES} of {SLICES} slices done" in out, (
            out
        )
        messages = check_recorded_exactly_once(c)
        report(
            request,
            capsys,
            stfs_at_kill=stfs_at_kill,
            broker_back_s=round(restarted_after, 1),
            recovery_s=round(recovery, 1),
            run_recovery_s=round(run_recovery, 1),
            messages=messages,
        )
    finally:
        restarted.stop()


def test_durable_agent_gets_what_was_published_while_it_was_away(any_broker: BrokerProcess) -> None:
    """The ``durable`` agent option (what makes the ActiveMQ case above lossless), on both brokers.

    An agent that drops off without a clean stop finds, when it is back, what
    its topics carried meanwhile; a clean stop removes its subscriptions, so
    nothing waits for an agent that was stopped on purpose.
    """
    settings = any_broker.settings()
    tag = uuid.uuid4().hex[:8]
    ns, topic, out = f"dur{tag}", f"in.{tag}", f"out.{tag}"

    def echo() -> EchoAgent:
        return EchoAgent(
            "echo", ns, topic=topic, reply_topic=out, broker=settings, durable=True
        ).start()

    watch = Collector(settings, Topic(out))
    first = echo()
    with BrokerClient(settings).start() as sender:
        sender.send(Topic(topic), stf_ready(ns, "before.stf"))
        watch.wait_for(lambda ms: len(ms) == 1, what="the reply before the drop")
        first._stop.set()
        first.client.close()  # gone without unsubscribing: as after a crash or a lost connection
        sender.send(Topic(topic), stf_ready(ns, "while-away.stf"))
        second = echo()
        watch.wait_for(
            lambda ms: any(getattr(m, "filename", "") == "while-away.stf" for m in ms),
            what="the message published while the agent was away",
        )
        second.shutdown()  # a clean stop: the durable subscription goes
        sender.send(Topic(topic), stf_ready(ns, "after-clean-stop.stf"))
        third = echo()
        sender.send(Topic(topic), stf_ready(ns, "last.stf"))
        watch.wait_for(
            lambda ms: any(getattr(m, "filename", "") == "last.stf" for m in ms),
            what="the last reply",
        )
        third.shutdown()
    assert sorted(getattr(m, "filename", "") for m in watch.messages) == [
        "before.stf",
        "last.stf",
        "while-away.stf",
    ]
    watch.close()


# --------------------------------------------------------------------------- 2. the embedded broker killed


def stf_sequences(chain: Chain) -> set[int]:
    """Sequence numbers of the run's STFs the monitor holds (``swf.<run>.<seq>.stf``)."""
    rows = chain.api.get(
        "/stf-files/", params={"execution_id": chain.execution_id, "limit": 1000}
    ).json()
    rows = rows["results"] if isinstance(rows, dict) else rows
    return {int(r["stf_filename"].split(".")[2]) for r in rows}


def test_embedded_broker_killed_mid_run_the_loss_is_bounded_and_reported(
    chain: Any, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded broker (under supervisord, as `./dev run` has it) keeps nothing across its restart.

    What it held at the kill (queued messages, the ingest's durable backlog) and
    what was published before each subscriber was back is gone. The test
    shows that the loss is confined to the fault (every STF recorded before
    it is there, the run is whole again after it), nothing is recorded twice,
    and the shortfall is reported: ``swf-testbed run`` exits 1 naming the
    missing STFs and the lost broker connection, and the monitor shows the
    DAQ's STF count next to the STFs it recorded.
    """
    port = free_port()
    # what is lost never comes: 30 s after the run's end are plenty to give up on it
    # at real time: the chain must be back (agents and ingest resubscribed) well before the run's last STF,
    # also on a loaded machine where a restarted broker and the reconnections take seconds
    c: Chain = chain(
        None,
        broker_section=f'mode = "embedded"\nport = {port}',
        label="embkill",
        run_args=("--drain-timeout", "30"),
        workflow="time_scale = 1",
    )
    c.wait_mid_run()
    before = stf_sequences(c)
    old_pid = c.pid("broker")
    killed_at = time.time()
    os.kill(old_pid, signal.SIGKILL)  # supervisord starts it again at once
    wait_until(
        lambda: c.bed.programs()["broker"]["pid"] not in (None, old_pid) or "not restarted",
        "supervisord to restart the broker",
    )
    recovery = c.first_new_message(killed_at, namespace=c.namespace)
    run_recovery = c.first_new_message(killed_at, execution_id=c.execution_id)
    out = c.finish()

    api, eid = c.api, c.execution_id
    wait_until(
        lambda: (
            api.get(f"/workflow-executions/{eid}/").json().get("status") == "completed" or "running"
        ),
        "the execution to complete in the monitor",
    )
    runs = api.get("/runs/", params={"execution_id": eid}).json()
    assert len(runs) == 1 and runs[0]["end_time"] is not None, runs
    # what the DAQ announced is in the monitor, next to what it recorded
    assert runs[0]["total_stf_files"] == STFS, runs[0]
    after = stf_sequences(c)
    missing = sorted(set(range(1, STFS + 1)) - after)
    assert before <= after  # nothing recorded before the fault went missing
    assert STFS in after, f"the run did not recover: its last STF is not recorded ({sorted(after)})"
    assert all(seq > max(before) for seq in missing), (
        sorted(before),
        missing,
    )  # lost only at the fault
    assert (
        count(api, "/workflow-messages/", execution_id=eid, msg_type="stf_gen") <= STFS
    )  # none twice
    run_number = runs[0]["run_number"]
    samples = count(api, "/fastmon-files/", execution_id=eid)
    slices = count(api, "/tf-slices/", run_number=run_number)
    # none twice (the database keeps a slice once per sample); a sample whose registration was lost at the
    # kill can still have its slices recorded, so they are bounded by the run, not by the samples recorded
    assert samples <= STFS and slices <= STFS * SLICES_PER_SAMPLE
    assert count(api, "/tf-slices/", run_number=run_number, status="failed") == 0

    if c.run.returncode == 0:  # nothing was lost this time: then all of it is there, once
        assert not missing, out
        assert f"{STFS} STFs produced, {STFS} processed" in out, out
        check_recorded_exactly_once(c, timeout=30)
    else:
        assert c.run.returncode == 1, out
        assert f"workflow completed: execution {eid}, {STFS} STFs produced" in out, out
        assert (
            "the agents did not catch up within 30 s" in out and f"of {STFS} STFs processed" in out
        ), out
        assert "the broker connection was lost during the run" in out, out
    report(
        request,
        capsys,
        stfs_at_kill=len(before),
        recovery_s=round(recovery, 1),
        run_recovery_s=round(run_recovery, 1),
        exit=c.run.returncode,
        stfs_missing_in_monitor=missing,
        samples=samples,
        slices=slices,
        summary=out.strip().splitlines()[-3:],
    )


# --------------------------------------------------------------------------- 3. the monitor's ingest down


class Tap:
    """A broker-side witness: counts the run's messages as they go by, whatever the monitor does."""

    def __init__(self, broker: Any, namespace: str) -> None:
        self.namespace = namespace
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.client = BrokerClient(broker, client_name="fault-tap")
        for dest in (RUN_TOPIC, data_topic(namespace), MONITOR_TOPIC):
            self.client.subscribe(dest, self._on, ack="auto")

    def _on(self, delivery: Delivery) -> None:
        try:
            msg = parse_message(delivery.body)
        except MessageError:
            return
        if msg.namespace == self.namespace:
            with self.lock:
                self.counts[msg.msg_type] += 1

    def get(self, msg_type: str) -> int:
        with self.lock:
            return self.counts[msg_type]

    def close(self) -> None:
        self.client.close(timeout=2.0)


INGEST = "monitor-ingest:monitor-ingest"


@pytest.mark.parametrize(
    "stack", ["embedded+sqlite", pytest.param("activemq+postgresql", marks=pytest.mark.activemq)]
)
def test_ingest_down_mid_run_the_chain_goes_on_and_the_monitor_catches_up(
    stack: str, chain: Any, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    broker, database_url = stack_services(stack, request, "")
    c: Chain = chain(broker, database_url=database_url, label="ingest")
    tap = Tap(broker.settings(), c.namespace)
    tap.client.start(wait=30)
    try:
        # mid-run as the broker sees it: on a loaded machine the monitor can lag the chain by many STFs
        wait_until(
            lambda: tap.get("processing_complete") >= FAULT_AFTER_STFS or tap.counts,
            "the run under way",
        )
        sup = c.supervisor()
        old_pid = c.pid("monitor-ingest")
        os.kill(old_pid, signal.SIGKILL)  # mid-batch, unacknowledged messages in hand
        down_at = time.monotonic()
        # supervisord restarts it at once; once it has, stop it and keep it down
        wait_until(
            lambda: sup.infos()[INGEST]["pid"] != old_pid or "not restarted yet",
            "supervisord to notice",
        )
        sup.stop_process(INGEST)
        assert sup.infos()[INGEST]["statename"] == "STOPPED"
        recorded_at_stop = count(c.api, "/workflow-messages/", execution_id=c.execution_id)
        processed_at_stop = tap.get("processing_complete")
        slices_at_stop = tap.get("slice_result")
        assert processed_at_stop < STFS, (
            f"the run was over ({processed_at_stop} STFs) before the fault: pace it slower"
        )
        # the agents do not need the monitor: STFs keep being processed while it is down
        more = min(5, STFS - processed_at_stop)
        wait_until(
            lambda: tap.get("processing_complete") >= processed_at_stop + more or tap.counts,
            "the chain to go on while the ingest is down",
        )
        processed_during = tap.get("processing_complete") - processed_at_stop
        slices_during = tap.get("slice_result") - slices_at_stop
        assert (
            count(c.api, "/workflow-messages/", execution_id=c.execution_id) == recorded_at_stop
        ), "the monitor recorded messages while its ingest was down"
        outage_s = time.monotonic() - down_at
        up_at = time.monotonic()
        sup.start_process(INGEST)
        backlog = tap.get("processing_complete")
        wait_until(
            lambda: (
                count(
                    c.api,
                    "/workflow-messages/",
                    execution_id=c.execution_id,
                    msg_type="processing_complete",
                )
                >= backlog
                or "catching up"
            ),
            "the ingest to catch up with what was sent while it was down",
        )
        catch_up_s = time.monotonic() - up_at
        out = c.finish()
        assert c.run.returncode == 0, out
        assert f"{STFS} STFs produced, {STFS} processed, {SLICES} of {SLICES} slices done" in out, (
            out
        )
        messages = check_recorded_exactly_once(c)
        # nothing twice: every STF processed once, so one processing_complete each (msg_id is the key)
        assert messages["processing_complete"] == STFS and messages["slice_result"] == SLICES, (
            messages
        )
        report(
            request,
            capsys,
            outage_s=round(outage_s, 1),
            stfs_processed_during_outage=processed_during,
            slices_done_during_outage=slices_during,
            catch_up_s=round(catch_up_s, 1),
            messages=messages,
        )
    finally:
        tap.close()

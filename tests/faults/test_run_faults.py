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

from swf_testbed.broker.admin import StatsError, request_stats
from swf_testbed.messages import MessageError, parse_message
from swf_testbed.mq import BrokerClient, Delivery, Topic
from swf_testbed.mq.destinations import MONITOR_TOPIC, RUN_TOPIC, data_topic
from swf_testbed.orchestrator.supervisor import Supervisor, runtime_paths
from swf_testbed.settings import BrokerSettings
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
        parameters: str = PARAMETERS,
    ) -> Chain:
        bed, run, execution_id, port = _start_chain_run(
            make_bed,
            broker,
            tmp_path,
            label,
            workflow=workflow,
            parameters=parameters,
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
    """Every STF, sample and slice of the run in the monitor, once; the run ended, the execution
    completed.

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


# ----------------------------------------------------------------- 1. ActiveMQ killed and restarted


@pytest.fixture
def own_activemq(tmp_path: Path) -> Iterator[BrokerProcess]:
    """An ActiveMQ Classic of this test alone (it gets killed); its data directory outlives a
    restart."""
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


# ------------------------------------------------------------------ 2. the embedded broker killed


KILL_PARAMETERS = f"stf_count = {STFS}\nslice_processing_time = 0.8"
"""Slices take 0.4 s at time scale 2: two workers do 5 a second, the run makes about 8: a slice
backlog builds."""


class DurableObserver:
    """A durable subscriber to the run topic that goes away before the kill and comes back after
    it: the backlog kept for it meanwhile is the durable backlog the journal must keep."""

    def __init__(self, port: int, namespace: str) -> None:
        self.settings = BrokerSettings(
            host="127.0.0.1", port=port, reconnect_initial_s=0.1, reconnect_max_s=1.0
        )
        self.namespace = namespace
        self.client_id = f"kill-observer-{uuid.uuid4().hex[:8]}"
        self.messages: list[Any] = []
        self.cond = threading.Condition()
        self.client: BrokerClient | None = None
        self.attach()

    def _on(self, delivery: Delivery) -> None:
        try:
            msg = parse_message(delivery.body)
        except MessageError:
            return
        if msg.namespace == self.namespace:
            with self.cond:
                self.messages.append(msg)
                self.cond.notify_all()

    def attach(self) -> None:
        self.client = BrokerClient(
            self.settings, client_name="kill-observer", client_id=self.client_id
        ).start()
        self.sub = self.client.subscribe(RUN_TOPIC, self._on, ack="auto", durable=True)

    def detach(self) -> None:
        """Gone without unsubscribing: the broker keeps what the topic carries for it."""
        assert self.client is not None
        self.client.close(timeout=2.0)

    def stf_sequences(self) -> list[int]:
        with self.cond:
            return [m.sequence for m in self.messages if m.msg_type == "stf_gen"]

    def wait_for_end_run(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(m.msg_type == "end_run" for m in self.messages):
                left = deadline - time.monotonic()
                assert left > 0, f"no end_run for the observer ({len(self.messages)} messages)"
                self.cond.wait(left)

    def close(self) -> None:
        if self.client is not None:
            self.client.unsubscribe(self.sub, forget=True)
            self.client.close(timeout=2.0)


def broker_figures(port: int) -> dict[str, Any]:
    """The embedded broker's statistics (``swf-testbed broker --stats``); {} while it does not
    answer."""
    try:
        return request_stats("127.0.0.1", port, timeout=2.0)
    except StatsError:
        return {}


def held_at(figures: dict[str, Any], namespace: str) -> dict[str, int]:
    """What the broker holds for the run: messages queued (by queue) and in durable backlogs."""
    queued = {
        name.rsplit(".", 1)[-1]: q["messages"]
        for name, q in figures.get("queues", {}).items()
        if f"swf.{namespace}." in name
    }
    durable = sum(d["messages"] for d in figures.get("durable_subscriptions", {}).values())
    return {
        "slices_queued": queued.get("slices", 0),
        "queued": sum(queued.values()),
        "durable_backlog": durable,
    }


def resent_after_reconnect(chain: Chain) -> int:
    """Sends the programs sent again after the reconnect (the client logs each batch at INFO)."""
    total = 0
    for path in runtime_paths(chain.home, chain.namespace).logs.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if "sends were not confirmed before the connection dropped" in line:
                total += int(line.split(": ")[-1].split(" ")[0])
    return total


def test_embedded_broker_killed_mid_run_nothing_is_lost(
    chain: Any, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    """The embedded broker (under supervisord, as `./dev run` has it) killed -9 mid-run: nothing
    lost.

    Its journal (``--data-dir`` in the namespace's directory) holds the queued
    slices and the durable subscriptions' backlogs (the ingest's, and the
    agents', which run with ``durable = true``); every send of a persistent
    message waits for the broker's receipt, given once it is journaled, and
    a send not confirmed when the broker died is sent again after the
    reconnect (its copy, if the broker had it, is dropped by ``msg_id``).
    Supervisord restarts the broker at once; the run completes and the monitor
    holds every STF, sample and slice exactly once.
    """
    port = free_port()
    c: Chain = chain(
        None,
        broker_section=f'mode = "embedded"\nport = {port}',
        label="embkill",
        durable=True,
        parameters=KILL_PARAMETERS,
    )
    observer = DurableObserver(port, c.namespace)
    try:
        _kill_the_broker_mid_run(c, port, observer, request, capsys)
    finally:
        observer.close()


def _kill_the_broker_mid_run(
    c: Chain,
    port: int,
    observer: DurableObserver,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stfs_at_kill = c.wait_mid_run()
    observer.detach()
    seen_before = observer.stf_sequences()
    assert seen_before, "the observer saw no stf_gen before it went away"
    journal = broker_figures(port).get("journal") or {}
    assert journal.get("directory") == str(
        runtime_paths(c.home, c.namespace).root / "broker" / "journal"
    ), journal
    # the kill comes while slices wait on their queue and a durable subscription has a backlog
    held: dict[str, int] = {}

    def backlog() -> bool | dict[str, int]:
        held.update(held_at(broker_figures(port), c.namespace))
        return (held["slices_queued"] > 0 and held["durable_backlog"] > 0) or dict(held)

    wait_until(backlog, "queued slices and a durable backlog on the broker")
    old_pid = c.pid("broker")
    killed_at = time.time()
    os.kill(old_pid, signal.SIGKILL)
    wait_until(
        lambda: c.bed.programs()["broker"]["pid"] not in (None, old_pid) or "not restarted",
        "supervisord to restart the broker",
    )
    wait_until(lambda: bool(broker_figures(port)) or "not answering", "the restarted broker")
    broker_back = time.time() - killed_at
    replayed = held_at(broker_figures(port), c.namespace)
    observer.attach()  # and what the topic carried for it meanwhile is delivered now
    recovery = c.first_new_message(killed_at, namespace=c.namespace)
    run_recovery = c.first_new_message(killed_at, execution_id=c.execution_id)
    out = c.finish()
    assert c.run.returncode == 0, out
    observer.wait_for_end_run()
    seen = observer.stf_sequences()
    # every STF announced from the observer's first one on, the backlog across the kill included
    assert sorted(set(seen)) == list(range(min(seen), STFS + 1)), sorted(seen)
    assert f"{STFS} STFs produced, {STFS} processed, {SLICES} of {SLICES} slices done" in out, out
    messages = check_recorded_exactly_once(c)
    # nothing handled twice: one processing_complete, one stf_ready, one sample per STF (an agent
    # does not handle again a message it has handled, by msg_id; the monitor records one once)
    assert messages["processing_complete"] == STFS and messages["stf_ready"] == STFS, messages
    assert messages["tf_file_registered"] == STFS, messages
    report(
        request,
        capsys,
        stfs_at_kill=stfs_at_kill,
        in_flight_at_kill=held["queued"] + held["durable_backlog"],
        slices_queued_at_kill=held["slices_queued"],
        durable_backlog_at_kill=held["durable_backlog"],
        held_after_restart=replayed["queued"] + replayed["durable_backlog"],
        observer_backlog_copies=len(seen) - len(seen_before),
        observer_duplicates=len(seen) - len(set(seen)),
        resent_after_reconnect=resent_after_reconnect(c),
        broker_back_s=round(broker_back, 1),
        recovery_s=round(recovery, 1),
        run_recovery_s=round(run_recovery, 1),
        lost=0,
        messages=messages,
    )


# ------------------------------------------------------------------ 3. the monitor's ingest down


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
        # mid-run as the broker sees it: on a loaded machine the monitor can lag the chain by many
        # STFs
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
        # nothing twice: every STF processed once, so one processing_complete each (msg_id is the
        # key)
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

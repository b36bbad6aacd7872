"""A misbehaving client on the testbed topics, against real processes on both brokers.

The bed: the monitor ingest as its own process, an echo agent process in
namespace A (on ``/topic/swf.<A>.data``) and one in namespace B. A raw
stomp.py connection — no testbed client, so nothing is validated on the way
out — sends garbage, wrong shapes, unknown types, an oversized body, deep
nesting, a message for the wrong namespace, a forged sender, and then a flood.

What must hold: every body is recorded by the ingest (bad ones with a clear
reason), agent A dead-letters the bad ones with the reason (recorded too, and
logged), ignores the other namespace's, handles the forged one but the
monitor shows which connection really sent it; no process dies, every agent
heartbeats READY afterwards; B keeps working during the flood; after the
flood A still handles a legitimate message; the flood is recorded in full
(or the broker's logged drops account for the difference).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import stomp
from django.test import Client as DjangoClient

from swf_testbed.messages import Heartbeat, OperationalState, ProcessingComplete
from swf_testbed.monitor.api import models as m
from swf_testbed.mq import BrokerClient, Topic
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC, RUN_TOPIC
from swf_testbed.testing.brokers import BrokerProcess
from tests.monitor.ingestlib import (
    IngestProcess,
    recorded_through_sentinel,
    wait_for,
    wait_until_ingesting,
)
from tests.support.agents import stf_ready
from tests.support.collect import Collector

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
FLOOD = 20_000
"""Messages in the flood: as fast as one stomp.py connection sends them."""


# --------------------------------------------------------------------------- the bed


@dataclass
class AgentProc:
    """An EchoAgent run by `swf-testbed agent run`, its output in a file."""

    name: str
    namespace: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class Bed:
    broker: BrokerProcess
    a: str
    b: str
    ingest: IngestProcess
    agents: dict[str, AgentProc]
    watch: Collector
    client: BrokerClient
    raw: stomp.Connection
    pids: dict[str, int] = field(default_factory=dict)

    def data(self, ns: str) -> str:
        return f"/topic/swf.{ns}.data"

    def out(self, ns: str) -> Topic:
        return Topic(f"swf.{ns}.out")

    def beats(self, agent: str) -> list[Heartbeat]:
        return [
            b
            for b in self.watch.of_type("heartbeat")  # type: ignore[misc]  # of_type is untyped
            if isinstance(b, Heartbeat)
            and b.agent_name == agent
            and b.namespace == self.agents[agent].namespace
        ]

    def replies(self, ns: str) -> set[str]:
        return {
            m.filename
            for m in self.watch.of_type("processing_complete")
            if isinstance(m, ProcessingComplete) and m.namespace == ns
        }

    def raw_send(self, destination: str, body: bytes, **headers: str) -> None:
        self.raw.send(destination, body, headers={"persistent": "true", **headers})

    def assert_alive(self) -> None:
        assert (
            self.ingest.alive
            and self.ingest.proc is not None
            and self.ingest.proc.pid == self.pids["ingest"]
        ), f"ingest died:\n{self.ingest.log()[-3000:]}"
        for name, agent in self.agents.items():
            assert agent.proc.poll() is None and agent.proc.pid == self.pids[name], (
                f"{name} died:\n{agent.log()[-3000:]}"
            )


def _start_agent(broker: BrokerProcess, name: str, ns: str, workdir: Path) -> AgentProc:
    log_path = workdir / f"{name}.log"
    env = {
        **os.environ,
        **broker.env,
        "PYTHONPATH": str(ROOT),
        "SWF_HOME": str(workdir),
        "ACTIVEMQ_HEARTBEAT_MS": "2000",
        "ACTIVEMQ_RECONNECT_INITIAL_S": "0.1",
        "ACTIVEMQ_RECONNECT_MAX_S": "1.0",
    }
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "swf_testbed.cli",
                "agent",
                "run",
                "tests.support.agents:EchoAgent",
                "--name",
                name,
                "--namespace",
                ns,
                "--heartbeat-interval",
                "0.5",
                "--drain-timeout",
                "2",
                "--set",
                f"topic=swf.{ns}.data",
                "--set",
                f"reply_topic=swf.{ns}.out",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    return AgentProc(name, ns, proc, log_path)


def _raw_connection(broker: BrokerProcess) -> stomp.Connection:
    """A plain stomp.py connection: what a careless or hostile tool would use."""
    settings = broker.settings()
    conn = stomp.Connection([(broker.host, broker.port)], heartbeats=(0, 0))
    conn.connect(settings.user or None, settings.password or None, wait=True)
    return conn


@pytest.fixture
def bed(any_broker: BrokerProcess) -> Iterator[Bed]:
    tag = uuid.uuid4().hex[:6]
    a, b = f"hostA{tag}", f"hostB{tag}"
    workdir = Path(tempfile.mkdtemp(prefix="swf-hostile-"))
    ingest = IngestProcess(
        any_broker, "--client-id", f"hostile-ingest-{tag}", "--flush-ms", "50"
    ).start()
    watch = Collector(
        any_broker.settings(), HEARTBEAT_TOPIC, Topic(f"swf.{a}.out"), Topic(f"swf.{b}.out")
    )
    client = BrokerClient(any_broker.settings(), client_name=f"legit-{tag}").start(wait=30)
    agents = {
        name: _start_agent(any_broker, name, ns, workdir)
        for name, ns in (("echo-a", a), ("echo-b", b))
    }
    raw = None
    try:
        wait_until_ingesting(client, ingest)
        for name, agent in agents.items():
            watch.wait_for(
                lambda ms, agent=agent: any(
                    isinstance(x, Heartbeat)
                    and x.agent_name == agent.name
                    and x.namespace == agent.namespace
                    and x.operational_state is OperationalState.READY
                    for x in ms
                ),
                timeout=60,
                what=f"{name} READY",
            )
        raw = _raw_connection(any_broker)
        pids = {
            "ingest": ingest.proc.pid if ingest.proc else -1,
            **{n: ag.proc.pid for n, ag in agents.items()},
        }
        yield Bed(any_broker, a, b, ingest, agents, watch, client, raw, pids)
    finally:
        if raw is not None and raw.is_connected():
            raw.disconnect()
        for agent in agents.values():
            if agent.proc.poll() is None:
                agent.proc.terminate()
                try:
                    agent.proc.wait(15)
                except subprocess.TimeoutExpired:
                    agent.proc.kill()
        client.close()
        watch.close()
        ingest.kill()


# --------------------------------------------------------------------------- helpers


def _counters(bed: Bed, agent: str, after: float = 0.0) -> dict[str, int]:
    beats = [b for b in bed.beats(agent) if b.timestamp.timestamp() >= after]
    return beats[-1].counters if beats else {}


def _wait_counter(bed: Bed, agent: str, counter: str, at_least: int, timeout: float = 60.0) -> None:
    wait_for(
        lambda: _counters(bed, agent).get(counter, 0) >= at_least,
        timeout,
        f"{agent} heartbeat counter {counter} >= {at_least} (now {_counters(bed, agent)})",
        interval=0.2,
    )


def _ready_again(bed: Bed, since: float) -> None:
    """Every agent, same pid, heartbeats READY after ``since`` (wall clock of the heartbeat)."""
    for name, agent in bed.agents.items():
        bed.watch.wait_for(
            lambda ms, name=name, agent=agent: any(
                isinstance(x, Heartbeat)
                and x.agent_name == name
                and x.namespace == agent.namespace
                and x.pid == bed.pids[name]
                and x.operational_state is OperationalState.READY
                and x.timestamp.timestamp() > since
                for x in ms
            ),
            timeout=180,
            what=f"{name} READY again",
        )


def _producer(message_id: str) -> str:
    """The sending connection named in a broker message-id (ActiveMQ:
    ID:<connection>:<session>:<producer>:<n>;
    embedded: <session>:<n>)."""
    if message_id.startswith("ID:") and message_id.count(":") >= 4:
        return message_id.rsplit(":", 3)[0]
    return message_id.rsplit(":", 1)[0]


# --------------------------------------------------------------------------- bad messages


def test_bad_messages_recorded_dead_lettered_and_survived(bed: Bed) -> None:
    a, b = bed.a, bed.b
    mark = f"hostile-{uuid.uuid4().hex[:10]}"

    def tagged(n: int) -> str:
        return f"{mark}-{n:02d}"

    huge_int = "9" * 5000
    cases: list[tuple[str, bytes, str]] = [  # (marker, body, the ingest's error_reason)
        (tagged(1), b"{not json " + tagged(1).encode(), "invalid_json"),
        (tagged(2), b"\xff\xfe" + tagged(2).encode() + b"\x00\x01 not utf-8", "invalid_json"),
        (tagged(3), b'["' + tagged(3).encode() + b'", ' + b"[" * 200_000, "invalid_json"),
        (tagged(4), json.dumps([tagged(4), 1, 2]).encode(), "invalid_fields"),
        (
            tagged(5),
            json.dumps(
                {"msg_type": "stf_ready", "msg_id": tagged(5), "namespace": a, "sender": "x"}
            ).encode(),
            "invalid_fields",
        ),
        (
            tagged(6),
            json.dumps({"msg_type": 5, "msg_id": tagged(6), "namespace": a}).encode(),
            "invalid_fields",
        ),
        (
            tagged(7),
            json.dumps(
                {"msg_type": "self_destruct", "msg_id": tagged(7), "namespace": a, "sender": "x"}
            ).encode(),
            "unknown_msg_type",
        ),
        (
            tagged(8),
            (
                f'{{"msg_id": "{tagged(8)}", "msg_type": "stf_ready", "run_id": {huge_int}}}'
            ).encode(),
            "invalid_json",
        ),
        (
            tagged(9),
            (
                f'{{"msg_id": "{tagged(9)}", "msg_type": "stf_ready", "namespace": "{a}", "pad": "'
                + "x" * (1536 * 1024)
                + '"}'
            ).encode(),
            "too_large",
        ),
    ]
    started = time.time()
    for _marker, body, _reason in cases:  # to namespace A's data topic: agent A must deal with each
        bed.raw_send(bed.data(a), body)
    epic = [
        (f"{marker}-epic", body.replace(marker.encode(), f"{marker}-epic".encode()), reason)
        for marker, body, reason in cases[:2] + cases[6:8]
    ]
    for _marker, body, _reason in epic:  # the run topic: only the ingest listens there
        bed.raw_send(str(RUN_TOPIC), body)

    # a valid message for namespace B on A's topic: ignored by A (counted), recorded as it is
    wrong_ns = stf_ready(b, f"{mark}-wrong-ns.stf")
    bed.raw_send(bed.data(a), wrong_ns.to_bytes())
    # a forged sender: claims to be agent A itself
    forged = stf_ready(a, f"{mark}-forged.stf", sender="echo-a")
    bed.raw_send(bed.data(a), forged.to_bytes())

    # --- the ingest recorded every bad body, with its reason
    def rows(marker: str) -> list[m.WorkflowMessage]:
        return [
            r
            for r in m.WorkflowMessage.objects.filter(body__contains=marker).exclude(
                msg_type="dead_letter"
            )
            if marker + "-epic" not in r.body or marker.endswith("-epic")
        ]

    for marker, _body, reason in cases + epic:
        found = wait_for(lambda marker=marker: rows(marker), 120, f"the ingest to record {marker}")
        assert len(found) == 1, [(r.msg_id, r.destination) for r in found]
        row = found[0]
        assert not row.is_valid and row.error_reason == reason, (
            marker,
            row.error_reason,
            row.validation_error,
        )
        assert row.validation_error.strip(), marker
    # ... and the monitor's API and UI show each of them (nothing in them breaks a page)
    web = DjangoClient()
    for marker, _body, reason in cases + epic:
        row = rows(marker)[0]
        api = web.get(f"/api/workflow-messages/{row.pk}/")
        assert api.status_code == 200, (marker, api.status_code)
        assert api.json()["error_reason"] == reason and api.json()["is_valid"] is False
        page = web.get(f"/messages/{row.pk}/")
        assert page.status_code == 200 and reason.encode() in page.content, (
            marker,
            page.status_code,
        )
    too_large = rows(tagged(9))[0]
    assert "exceeds the limit" in too_large.validation_error and len(too_large.body) <= 1024 * 1024
    deep = rows(tagged(3))[0]
    assert "nested too deeply" in deep.validation_error

    wrong_row = wait_for(
        lambda: m.WorkflowMessage.objects.filter(msg_id=wrong_ns.msg_id).first(), 60, "wrong-ns row"
    )
    assert (
        wrong_row.is_valid and wrong_row.namespace_id == b and wrong_row.destination == bed.data(a)
    )

    # --- agent A dead-lettered each bad body with the reason; the dead letters are recorded, valid
    def letters() -> dict[str, m.WorkflowMessage]:
        out = {}
        for row in m.WorkflowMessage.objects.filter(
            msg_type="dead_letter", namespace_id=a, body__contains=mark
        ):
            original = json.loads(row.body)["original_body"]
            for marker, _body, _reason in cases:
                if marker in original:
                    out[marker] = row
        return out

    wait_for(lambda: len(letters()) == len(cases), 120, f"{len(cases)} dead letters from echo-a")
    for marker, _body, reason in cases:
        row = letters()[marker]
        letter = json.loads(row.body)
        assert (
            row.is_valid and row.sender == "echo-a" and row.destination == "/queue/swf.dead_letter"
        )
        assert letter["error"].startswith(f"{reason}:"), (marker, letter["error"][:200])
        assert letter["original_destination"] == bed.data(a) and letter["attempts"] == 1
    oversized_letter = json.loads(letters()[tagged(9)].body)
    assert (
        "truncated" in oversized_letter["error"]
        and len(oversized_letter["original_body"]) < 1024 * 1024
    )

    # ... and said so in its log, and counted them (heartbeat counters)
    _wait_counter(bed, "echo-a", "dead_lettered", len(cases))
    _wait_counter(bed, "echo-a", "other_namespace", 1)
    counters = _counters(bed, "echo-a")
    assert counters["invalid"] == len(cases) and counters["dead_lettered"] == len(cases)
    assert counters["other_namespace"] == 1
    log = bed.agents["echo-a"].log()
    assert len(re.findall(r"echo-a: invalid message .* on /topic/swf\.\S+\.data: ", log)) == len(
        cases
    ), log[-3000:]
    assert "Traceback" not in log, log[-3000:]

    # --- the wrong-namespace message was not handled; the forged one was (it is a valid message)...
    wait_for(
        lambda: f"{mark}-forged.stf" in bed.replies(a), 60, "echo-a to handle the forged stf_ready"
    )
    assert f"{mark}-wrong-ns.stf" not in bed.replies(a) | bed.replies(b)
    assert (
        _counters(bed, "echo-b").get("invalid", 0) == 0
        and _counters(bed, "echo-b").get("handled", 0) == 0
    )

    # ... but the monitor shows it came from another connection than echo-a's own messages
    forged_row = wait_for(
        lambda: m.WorkflowMessage.objects.filter(msg_id=forged.msg_id).first(), 60, "forged row"
    )
    assert forged_row.sender == "echo-a" and forged_row.is_valid
    own = wait_for(
        lambda: list(
            m.WorkflowMessage.objects.filter(
                sender="echo-a", namespace_id=a, msg_type="processing_complete"
            )
        ),
        60,
        "echo-a's own replies recorded",
    )
    own_producers = {_producer(r.headers["message-id"]) for r in own}
    assert len(own_producers) == 1, own_producers  # one agent, one connection
    forged_producer = _producer(forged_row.headers["message-id"])
    assert forged_producer not in own_producers, (forged_row.headers, own_producers)
    bad_producer = _producer(rows(tagged(1))[0].headers["message-id"])
    assert bad_producer == forged_producer  # the same misbehaving connection sent both

    # --- nobody died; both agents still heartbeat READY, same pids; B was never bothered
    bed.assert_alive()
    _ready_again(bed, time.time())
    bed.assert_alive()
    bed.client.send(Topic(f"swf.{b}.data"), stf_ready(b, f"{mark}-b-after.stf"))
    bed.client.send(Topic(f"swf.{a}.data"), stf_ready(a, f"{mark}-a-after.stf"))
    wait_for(
        lambda: f"{mark}-b-after.stf" in bed.replies(b) and f"{mark}-a-after.stf" in bed.replies(a),
        60,
        "both agents to handle a legitimate message afterwards",
    )
    assert "Traceback" not in bed.ingest.log(), bed.ingest.log()[-3000:]
    print(
        f"\n[{bed.broker.name}] bad bodies recorded: {len(cases) + len(epic)}, dead-lettered by "
        f"echo-a: {len(cases)}, in {time.time() - started:.1f} s; forged message from connection "
        f"{forged_producer}, echo-a's own from {own_producers.pop()}"
    )


# --------------------------------------------------------------------------- the flood


def _logged_drops(broker: BrokerProcess, client_id: str) -> int:
    """Messages the embedded broker says it dropped from the ingest's durable backlogs (it logs
    them).
    """
    if broker.log_path is None or not broker.log_path.exists():
        return 0
    text = broker.log_path.read_text(errors="replace")
    return sum(
        int(n)
        for label, n in re.findall(r"durable subscription (\S+): dropped (\d+) messages", text)
        if client_id in label
    )


def test_flood_recorded_in_full_and_namespace_b_unaffected(bed: Bed) -> None:
    a, b = bed.a, bed.b
    prefix = f"flood-{uuid.uuid4().hex[:8]}-"
    template = ProcessingComplete(
        msg_id=f"{prefix}000000",
        namespace=a,
        sender="flooder",
        execution_id="flood",
        run_id=1,
        state="run",
        substate="physics",
        filename="f.stf",
        processing_time_s=0.0,
    ).to_json()
    bodies = [
        template.replace(f"{prefix}000000", f"{prefix}{i:06d}").encode() for i in range(FLOOD)
    ]
    destination = bed.data(a)
    quarter = threading.Event()
    sent = 0
    errors: list[BaseException] = []
    timing: dict[str, float] = {}

    def flood() -> None:
        nonlocal sent
        try:
            timing["start"] = time.monotonic()
            for body in bodies:
                bed.raw.send(destination, body, headers={"persistent": "true"})
                sent += 1
                if sent == FLOOD // 4:
                    quarter.set()
            timing["end"] = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
            quarter.set()

    b_beats_before = len(bed.beats("echo-b"))
    wall_start = time.time()
    thread = threading.Thread(target=flood, name="flooder", daemon=True)
    thread.start()
    assert quarter.wait(120), "the flood did not get going"
    # during the flood: B handles a legitimate message and keeps heartbeating
    b_sent_at = time.monotonic()
    bed.client.send(Topic(f"swf.{b}.data"), stf_ready(b, f"{prefix}b-during.stf"))
    wait_for(
        lambda: f"{prefix}b-during.stf" in bed.replies(b),
        120,
        "echo-b to handle a message during the flood",
    )
    b_latency = time.monotonic() - b_sent_at
    b_during_flood = thread.is_alive()
    wait_for(
        lambda: len(bed.beats("echo-b")) >= b_beats_before + 2,
        60,
        "echo-b heartbeats during the flood",
    )
    thread.join(600)
    assert not thread.is_alive() and not errors, errors
    assert sent == FLOOD
    rate = FLOOD / (timing["end"] - timing["start"])

    # every flood message recorded by the ingest (or dropped by the broker, and logged as such)
    def recorded() -> int:
        return m.WorkflowMessage.objects.filter(
            msg_id__startswith=prefix, msg_type="processing_complete"
        ).count()

    client_id = bed.ingest.args[1]
    wait_for(
        lambda: recorded() + _logged_drops(bed.broker, client_id) >= FLOOD,
        600,
        f"the ingest to record the flood ({recorded()} of {FLOOD} so far)",
        interval=1.0,
    )
    catch_up = time.monotonic() - timing["end"]
    recorded_through_sentinel(
        lambda body: bed.raw.send(destination, body, headers={"persistent": "true"}),
        600,
        "the sentinel sent after the flood",
    )
    count, dropped = recorded(), _logged_drops(bed.broker, client_id)
    assert count + dropped == FLOOD, (count, dropped)
    assert m.WorkflowMessage.objects.filter(msg_id__startswith=prefix, is_valid=False).count() == 0

    # after the flood: a legitimate message to A is handled (resent while A may still be
    # reconnecting or working through its backlog: on a topic, a message sent while it is away is
    # not for it)
    after = f"{prefix}a-after"
    attempt = 0

    def a_handled() -> bool:
        nonlocal attempt
        if any(name.startswith(after) for name in bed.replies(a)):
            return True
        attempt += 1
        bed.client.send(Topic(f"swf.{a}.data"), stf_ready(a, f"{after}-{attempt}.stf"))
        return False

    wait_for(a_handled, 300, "echo-a to handle a legitimate message after the flood", interval=5.0)
    bed.assert_alive()
    _ready_again(bed, time.time())
    bed.assert_alive()
    a_counters = _counters(bed, "echo-a")
    assert (
        "Traceback"
        not in bed.ingest.log() + bed.agents["echo-a"].log() + bed.agents["echo-b"].log()
    )
    print(
        f"\n[{bed.broker.name}] flood: {FLOOD} messages sent at {rate:,.0f} msg/s "
        f"({time.time() - wall_start:.1f} s in all); ingest recorded {count}, broker dropped "
        f"{dropped}; ingest caught up {catch_up:.1f} s after the last send; echo-b answered in "
        f"{b_latency:.2f} s (flood still running: {b_during_flood}); echo-a counters {a_counters}; "
        f"echo-a connection losses: "
        f"{bed.agents['echo-a'].log().count('lost the broker connection')}"
    )

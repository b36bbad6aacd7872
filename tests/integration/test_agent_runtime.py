"""The agent runtime against real brokers (embedded and ActiveMQ Classic)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.messages import (
    DeadLetter,
    Heartbeat,
    LogBatch,
    Message,
    OperationalState,
    parse_message,
)
from swf_testbed.mq import BrokerClient, Queue, Topic
from swf_testbed.mq.destinations import DEAD_LETTER_QUEUE, HEARTBEAT_TOPIC, logs_topic
from swf_testbed.testing.brokers import BrokerProcess, start_activemq, start_embedded
from tests.support.agents import EchoAgent, stf_ready
from tests.support.collect import Collector, eventually

ROOT = Path(__file__).resolve().parents[2]


def _names() -> tuple[str, str, str, str]:
    tag = uuid.uuid4().hex[:8]
    return f"ns{tag}", f"in.{tag}", f"q.{tag}", f"out.{tag}"


def _dead_letters_for(collector: Collector, namespace: str) -> list[DeadLetter]:
    return [
        m
        for m in collector.of_type("dead_letter")
        if isinstance(m, DeadLetter) and m.namespace == namespace
    ]


@pytest.mark.slow
def test_failing_handler_is_retried_then_dead_lettered_and_agent_carries_on(
    any_broker: BrokerProcess,
) -> None:
    ns, topic, _, out = _names()
    settings = any_broker.settings()
    watch = Collector(settings, Topic(out), DEAD_LETTER_QUEUE)
    agent = EchoAgent(
        "echo",
        ns,
        topic=topic,
        reply_topic=out,
        fail_always=["bad.stf"],
        fail_times=1,
        broker=settings,
        max_attempts=3,
        retry_delay=0.05,
    ).start()
    try:
        sender = BrokerClient(settings).start()
        sender.send(Topic(topic), stf_ready(ns, "bad.stf"))
        for i in range(5):
            sender.send(Topic(topic), stf_ready(ns, f"good{i}.stf"))
        watch.wait_for(
            lambda ms: len([m for m in ms if m.msg_type == "processing_complete"]) == 5,
            what="5 processing_complete",
        )
        watch.wait_for(
            lambda ms: any(m.msg_type == "dead_letter" and m.namespace == ns for m in ms),
            what="a dead letter",
        )
        letters = _dead_letters_for(watch, ns)
        assert len(letters) == 1
        assert letters[0].attempts == 3
        assert "simulated failure 3 for bad.stf" in letters[0].error
        original = parse_message(letters[0].original_body.encode())
        assert original.filename == "bad.stf"  # type: ignore[attr-defined]  # a StfReady
        # each good file failed once (fail_times=1) and then succeeded on its retry
        done = sorted(
            m.filename  # type: ignore[attr-defined]  # of_type returns them typed as Message
            for m in watch.of_type("processing_complete")
        )
        assert done == [f"good{i}.stf" for i in range(5)]
        assert agent.seen.count("bad.stf") == 3
        assert agent.client.connected
        # the agent counts just after it sends: wait for the counters rather than race them
        eventually(
            lambda: agent.counters["dead_lettered"] == 1 and agent.counters["handled"] == 5,
            what="the agent's counters",
        )
        # still serving after all that
        sender.send(Topic(topic), stf_ready(ns, "after.stf"))
        watch.wait_for(
            lambda ms: any(getattr(m, "filename", "") == "after.stf" for m in ms), what="after.stf"
        )
        sender.close()
    finally:
        agent.shutdown()
        watch.close()


def test_many_failing_messages_on_all_workers_are_each_dead_lettered_after_max_attempts(
    any_broker: BrokerProcess,
) -> None:
    """40 messages that always fail, on an unordered queue, 8 pool threads: the attempt count
    is changed by all of them at once. Each message is handled exactly max_attempts times and
    dead-lettered once, with that count."""
    ns, _, queue, _ = _names()
    settings = any_broker.settings()
    files = [f"bad{i:02d}.stf" for i in range(40)]
    watch = Collector(settings, DEAD_LETTER_QUEUE)
    agent = EchoAgent(
        "echo",
        ns,
        queue=queue,
        fail_always=[*files, "sentinel.stf"],
        broker=settings,
        workers=8,
        max_attempts=3,
        retry_delay=0.01,
    ).start()
    try:
        sender = BrokerClient(settings).start()
        for name in files:
            sender.send(Queue(queue), stf_ready(ns, name))
        watch.wait_for(
            lambda ms: len([m for m in ms if m.namespace == ns]) >= len(files),
            what=f"{len(files)} dead letters",
            timeout=60,
        )
        # the sentinel: dead-lettered after the others, so a stray extra attempt or letter
        # of theirs would be in by the time its letter is
        sender.send(Queue(queue), stf_ready(ns, "sentinel.stf"))
        watch.wait_for(
            lambda ms: any(
                isinstance(m, DeadLetter)
                and m.namespace == ns
                and b"sentinel.stf" in m.original_body.encode()
                for m in ms
            ),
            what="the sentinel's dead letter",
        )
        letters = _dead_letters_for(watch, ns)
        originals = [parse_message(m.original_body.encode()) for m in letters]
        names = sorted(m.filename for m in originals)  # type: ignore[attr-defined]  # StfReady
        assert names == sorted([*files, "sentinel.stf"])
        assert {m.attempts for m in letters} == {3}
        assert all(agent.seen.count(name) == 3 for name in files), agent.seen
        eventually(
            lambda: agent.counters["dead_lettered"] == 41 and agent.counters["failed"] == 123,
            what="the agent's counters",
        )
        assert agent.counters["retried"] == 82
        sender.close()
    finally:
        agent.shutdown()
        watch.close()


def test_invalid_bodies_are_reported_and_agent_keeps_running(any_broker: BrokerProcess) -> None:
    ns, topic, _, out = _names()
    settings = any_broker.settings()
    watch = Collector(settings, Topic(out), DEAD_LETTER_QUEUE)
    agent = EchoAgent("echo", ns, topic=topic, reply_topic=out, broker=settings).start()
    try:
        sender = BrokerClient(settings).start()
        sender.send(Topic(topic), b"{this is not json")
        sender.send(
            Topic(topic), b'{"msg_type": "no_such_type", "namespace": "' + ns.encode() + b'"}'
        )
        sender.send(
            Topic(topic),
            b'{"msg_type": "stf_ready", "namespace": "' + ns.encode() + b'", "sender": "x"}',
        )
        sender.send(Topic(topic), stf_ready(ns, "fine.stf"))
        watch.wait_for(
            lambda ms: any(m.msg_type == "processing_complete" for m in ms),
            what="processing_complete",
        )
        watch.wait_for(
            lambda ms: (
                len(
                    [
                        m
                        for m in ms
                        if isinstance(m, DeadLetter) and m.original_destination.endswith(topic)
                    ]
                )
                == 3
            ),
            what="3 dead letters",
        )
        letters = [
            m
            for m in watch.of_type("dead_letter")
            if isinstance(m, DeadLetter) and m.original_destination.endswith(topic)
        ]
        errors = sorted(m.error.split(":")[0] for m in letters)
        assert errors == ["invalid_fields", "invalid_json", "unknown_msg_type"]
        eventually(lambda: agent.counters["invalid"] == 3, what="3 invalid counted")
        assert agent.client.connected
        sender.close()
    finally:
        agent.shutdown()
        watch.close()


def test_other_namespaces_are_ignored(any_broker: BrokerProcess) -> None:
    ns, topic, _, out = _names()
    settings = any_broker.settings()
    watch = Collector(settings, Topic(out))
    agent = EchoAgent("echo", ns, topic=topic, reply_topic=out, broker=settings).start()
    try:
        sender = BrokerClient(settings).start()
        sender.send(Topic(topic), stf_ready("someone-else", "theirs.stf"))
        # the sentinel: one topic is one lane, handled in order, so a reply to theirs.stf
        # would come before the reply to ours.stf
        sender.send(Topic(topic), stf_ready(ns, "ours.stf"))
        watch.wait_for(lambda ms: len(ms) >= 1, what="a reply")
        names = [m.filename for m in watch.messages]  # type: ignore[attr-defined]  # StfReady
        assert names == ["ours.stf"]
        eventually(
            lambda: agent.counters["other_namespace"] == 1, what="1 other-namespace message counted"
        )
        sender.close()
    finally:
        agent.shutdown()
        watch.close()


def test_heartbeats_follow_operational_state(any_broker: BrokerProcess) -> None:
    ns, topic, _, out = _names()
    settings = any_broker.settings()
    watch = Collector(settings, HEARTBEAT_TOPIC)
    agent = EchoAgent(
        "echo",
        ns,
        topic=topic,
        reply_topic=out,
        sleep_s=0.5,
        broker=settings,
        heartbeat_interval=0.5,
    ).start()
    try:
        sender = BrokerClient(settings).start()
        sender.send(Topic(topic), stf_ready(ns, "slow.stf"))

        def states(ms: list) -> list[OperationalState]:
            return [
                m.operational_state for m in ms if m.msg_type == "heartbeat" and m.namespace == ns
            ]

        watch.wait_for(lambda ms: OperationalState.PROCESSING in states(ms), what="PROCESSING")
        watch.wait_for(
            lambda ms: (
                states(ms)[-1] is OperationalState.READY
                and OperationalState.PROCESSING in states(ms)
            ),
            what="READY after PROCESSING",
        )
        agent.shutdown()
        beats = [
            m
            for m in watch.wait_for(
                lambda ms: states(ms)[-1] is OperationalState.EXITED, what="EXITED"
            )
            if isinstance(m, Heartbeat) and m.namespace == ns
        ]
        seq = [b.operational_state for b in beats]
        assert seq[0] is OperationalState.STARTING
        assert seq.index(OperationalState.READY) < seq.index(OperationalState.PROCESSING)
        last = beats[-1]
        assert last.agent_name == "echo" and last.agent_type == "test-echo"
        assert last.pid == os.getpid() and last.interval_s == 0.5
        assert last.counters["handled"] == 1
        assert last.instance_id.startswith("echo-")
        sender.close()
    finally:
        agent.shutdown()
        watch.close()


def _agent_process(broker: BrokerProcess, ns: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, **broker.env, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "swf_testbed.cli",
            "agent",
            "run",
            "tests.support.agents:EchoAgent",
            "--name",
            "echo-proc",
            "--namespace",
            ns,
            "--heartbeat-interval",
            "0.5",
            *args,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT])
@pytest.mark.slow
def test_stop_signal_during_long_handler_exits_within_bound(
    embedded_broker: BrokerProcess, sig: int
) -> None:
    ns, topic, _, _ = _names()
    watch = Collector(embedded_broker.settings(), HEARTBEAT_TOPIC)
    proc = _agent_process(
        embedded_broker,
        ns,
        "--drain-timeout",
        "1",
        "--set",
        f"topic={topic}",
        "--set",
        "sleep_s=600",
    )
    try:

        def mine(ms: list) -> list[Heartbeat]:
            return [m for m in ms if m.msg_type == "heartbeat" and m.namespace == ns]

        watch.wait_for(
            lambda ms: any(b.operational_state is OperationalState.READY for b in mine(ms)),
            what="READY",
        )
        with BrokerClient(embedded_broker.settings()).start() as sender:
            sender.send(Topic(topic), stf_ready(ns, "long.stf"))
        watch.wait_for(
            lambda ms: any(b.operational_state is OperationalState.PROCESSING for b in mine(ms)),
            what="PROCESSING",
        )
        proc.send_signal(sig)
        # the handler would run for 10 minutes; the drain bound is 1 s
        assert proc.wait(timeout=60) == 0
        beats = watch.wait_for(
            lambda ms: mine(ms)[-1].operational_state is OperationalState.EXITED, what="EXITED"
        )
        assert mine(beats)[-1].pid == proc.pid
    finally:
        if proc.poll() is None:
            proc.kill()
        watch.close()


def _restart(broker: BrokerProcess) -> BrokerProcess:
    broker.stop()
    if broker.name == "embedded":
        return start_embedded(port=broker.port, log_dir=broker.workdir)
    return start_activemq(port=broker.port, workdir=broker.workdir)


@pytest.mark.parametrize("kind", ["embedded", "activemq"])
@pytest.mark.slow
def test_agent_reconnects_and_resubscribes_everything_after_broker_restart(
    kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "activemq":
        request.getfixturevalue("activemq_broker")  # skip/fail consistently when ActiveMQ is absent
        broker = start_activemq()
    else:
        broker = start_embedded()
    ns, topic, queue, out = _names()
    try:
        settings = broker.settings()
        agent = EchoAgent(
            "echo", ns, topic=topic, queue=queue, reply_topic=out, broker=settings
        ).start()
        watch = Collector(settings, Topic(out))
        with BrokerClient(settings).start() as sender:
            sender.send(Topic(topic), stf_ready(ns, "before-topic.stf"))
            sender.send(Queue(queue), stf_ready(ns, "before-queue.stf"))
            watch.wait_for(lambda ms: len(ms) == 2, what="2 replies before restart")
        broker = _restart(broker)
        # wait until both clients are back (no polling on sleeps: the client says when)
        deadline = time.monotonic() + 60
        while not (
            agent.client.connected and watch.client.connected and agent.client.reconnects >= 1
        ):
            assert time.monotonic() < deadline, "agent did not reconnect"
            time.sleep(0.05)
        with BrokerClient(settings).start() as sender:
            sender.send(Topic(topic), stf_ready(ns, "after-topic.stf"))
            sender.send(Queue(queue), stf_ready(ns, "after-queue.stf"))

            def names(ms: list[Message]) -> set[str]:
                return {getattr(m, "filename", "") for m in ms}

            watch.wait_for(
                lambda ms: {"after-topic.stf", "after-queue.stf"} <= names(ms),
                what="replies on both subscriptions after restart",
            )
        assert agent.client.reconnects >= 1
        agent.shutdown()
        watch.close()
    finally:
        broker.stop()


def test_records_logged_by_a_handler_go_out_in_log_batches_with_their_execution(
    any_broker: BrokerProcess,
) -> None:
    ns, topic, _, out = _names()
    settings = any_broker.settings()
    watch = Collector(settings, logs_topic(ns), Topic(out))
    # a handler that fails once logs a WARNING (will retry) inside the message's context
    agent = EchoAgent(
        "echo",
        ns,
        topic=topic,
        reply_topic=out,
        fail_times=1,
        broker=settings,
        retry_delay=0.05,
        log_flush_interval=0.1,
    ).start()
    try:
        with BrokerClient(settings).start() as sender:
            sender.send(Topic(topic), stf_ready(ns, "once.stf", run_id=4711))
            watch.wait_for(
                lambda ms: any(m.msg_type == "processing_complete" for m in ms), what="the reply"
            )

        def retries(ms: list) -> list[Any]:
            return [
                r
                for m in ms
                if isinstance(m, LogBatch)
                for r in m.records
                if "will retry" in r.message
            ]

        batches = watch.wait_for(
            lambda ms: bool(retries(ms)), what="the retry warning in a log_batch"
        )
        (record,) = retries(batches)
        assert (record.levelname, record.execution_id, record.run_id) == ("WARNING", "exec-1", 4711)
        batch = next(m for m in batches if isinstance(m, LogBatch))
        assert (batch.agent_name, batch.agent_type, batch.namespace, batch.pid) == (
            "echo",
            "test-echo",
            ns,
            os.getpid(),
        )
        assert batch.buffer_size == agent.log_buffer.capacity and batch.dropped == 0
    finally:
        agent.shutdown()
        watch.close()

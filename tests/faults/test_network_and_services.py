"""Network and service faults: half-open connections, the database gone or frozen,
the monitor web down, a slow consumer under a producer going as fast as it can.

Faults are injected with :class:`swf_testbed.testing.faultproxy.FaultProxy`
between a real program and a real service (broker, PostgreSQL). Each test
checks what is lost (nothing) and measures how long detection and recovery
take; the figures are printed and recorded as test properties
(``--junitxml`` keeps them). Durations are reported, never asserted.

Related tests elsewhere (not repeated here): a locked SQLite database and
PostgreSQL connections terminated server-side under the ingest
(tests/monitor/test_ingest.py), a broker restart under agents and the ingest
(tests/integration/test_agent_runtime.py, tests/monitor/test_ingest.py), a
consumer that never reads and a stuck topic consumer (tests/broker/
test_robustness.py), a worker SIGKILLed holding an unacknowledged slice
(tests/integration/test_pipeline.py on both brokers,
tests/orchestrator/test_end_to_end.py with the monitor's counts).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.messages import StfReady
from swf_testbed.mq import BrokerClient, Queue, Topic
from swf_testbed.mq.destinations import data_topic
from swf_testbed.testing.brokers import BrokerProcess, start_embedded
from swf_testbed.testing.faultproxy import FaultProxy
from tests.monitor import ingestlib
from tests.monitor.ingestlib import IngestProcess, wait_for
from tests.support.agents import EchoAgent, stf_ready
from tests.support.collect import Collector, eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def report(record_property: Callable[[str, Any], None], name: str, value: Any) -> None:
    """A measured figure: on the terminal (-s) and in the junit XML."""
    record_property(name, value)
    print(f"[faults] {name} = {value}")


class StateLog:
    """Times at which a BrokerClient went down and up (its on_state_change, chained)."""

    def __init__(self, client: BrokerClient) -> None:
        self.events: list[tuple[float, bool]] = []
        self._chained = client.on_state_change
        client.on_state_change = self._on_change

    def _on_change(self, connected: bool) -> None:
        self.events.append((time.monotonic(), connected))
        if self._chained is not None:
            self._chained(connected)

    def first(self, connected: bool, after: float) -> float | None:
        return next((t for t, c in self.events if c is connected and t >= after), None)


# =========================================================================== the proxy itself


def test_fault_proxy_forwards_stalls_cuts_and_restores() -> None:
    """The proxy's four modes, against a plain TCP echo server."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return

            def echo(c: socket.socket = conn) -> None:
                with c:
                    while data := c.recv(65536):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    with FaultProxy("127.0.0.1", server.getsockname()[1]) as proxy:
        a = socket.create_connection(proxy.address, timeout=5)
        a.sendall(b"one")
        assert a.recv(10) == b"one"

        proxy.stall()  # a is black-holed: no error, no answer
        a.sendall(b"two")
        a.settimeout(0.5)
        with pytest.raises(TimeoutError):
            a.recv(10)
        b = socket.create_connection(proxy.address, timeout=5)  # a new connection goes through
        b.sendall(b"new")
        assert b.recv(10) == b"new"

        proxy.restore()  # what was held moves on
        a.settimeout(5)
        assert a.recv(10) == b"two"

        proxy.cut()
        assert a.recv(10) == b"" and b.recv(10) == b""  # closed
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(proxy.address, timeout=2)

        proxy.restore()
        c = socket.create_connection(proxy.address, timeout=5)
        proxy.stall(new_connections=True)
        d = socket.create_connection(proxy.address, timeout=5)  # accepted, but black-holed
        d.sendall(b"held")
        d.settimeout(0.5)
        with pytest.raises(TimeoutError):
            d.recv(10)
        proxy.restore()
        d.settimeout(5)
        assert d.recv(10) == b"held"
        c.sendall(b"c")
        assert c.recv(10) == b"c"
        assert proxy.accepted == 4
        for s in (a, b, c, d):
            s.close()
    server.close()


# ================================================================== 1. half-open broker connections


def _stomp_connect(host: str, port: int, client_id: str, timeout: float = 5.0) -> str:
    """One raw STOMP CONNECT with ``client_id``: the command the broker answers (CONNECTED or
    ERROR) and why."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(
            f"CONNECT\naccept-version:1.2\nhost:{host}\nclient-id:{client_id}\nheart-beat:0,0\n\n\0".encode()
        )
        data = b""
        while b"\0" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        text = data.decode(errors="replace").lstrip("\r\n")
        if text.startswith("CONNECTED"):
            sock.sendall(b"DISCONNECT\n\n\0")
        return text.split("\0")[0]


def test_broker_drops_a_client_that_went_silent(
    any_broker: BrokerProcess, record_property: Callable[[str, Any], None]
) -> None:
    """A client behind a black hole: the broker notices by heart-beat and frees its client id.

    The client id of a connection is unique on both brokers, so the moment a
    new CONNECT with the same id is accepted is the moment the broker dropped
    the silent connection (the ingest's durable subscriptions depend on it).
    """
    client_id = f"silent-{uuid.uuid4().hex[:8]}"
    with FaultProxy(any_broker.host, any_broker.port) as proxy:
        victim = BrokerClient(
            any_broker.settings(host=proxy.host, port=proxy.port, heartbeat_ms=2000),
            client_name="victim",
            client_id=client_id,
        ).start()
        try:
            time.sleep(3)  # heart-beats flowing both ways
            assert "already connected" in _stomp_connect(
                any_broker.host, any_broker.port, client_id
            )
            stalled_at = time.monotonic()
            proxy.stall(new_connections=True)  # and the victim's reconnects are black-holed too
            answers = []
            while time.monotonic() - stalled_at < 60:
                answer = _stomp_connect(any_broker.host, any_broker.port, client_id)
                if (
                    not answer
                ):  # ActiveMQ now and then closes a refused CONNECT before its ERROR frame went out
                    time.sleep(0.1)
                    continue
                answers.append(answer.splitlines()[0])
                if answer.startswith("CONNECTED"):
                    break
                time.sleep(0.1)
            dropped_after = time.monotonic() - stalled_at
            assert answers[-1] == "CONNECTED", (
                f"the broker never dropped the silent client: {answers[-3:]}"
            )
            assert answers[0] == "ERROR", "the client id was free at once: the test proves nothing"
        finally:
            proxy.restore()
            victim.close()
    report(
        record_property, f"broker_drops_silent_client_s[{any_broker.name}]", round(dropped_after, 2)
    )
    if any_broker.name == "embedded":
        eventually(
            lambda: (
                "heart-beat timeout"
                in (any_broker.log_path.read_text() if any_broker.log_path else "")
            ),
            5,
            "the broker's log line",
        )


def test_half_open_agent_connection_is_replaced_and_no_work_lost(
    any_broker: BrokerProcess, record_property: Callable[[str, Any], None]
) -> None:
    """An agent's broker connection goes half-open: heart-beats detect it, a new one replaces it,
    and every work item sent during and after the stall is done exactly once."""
    tag = uuid.uuid4().hex[:8]
    ns, topic_in, work, out = (
        f"ns{tag}",
        Topic(f"fault.in.{tag}"),
        Queue(f"fault.q.{tag}"),
        Topic(f"fault.out.{tag}"),
    )
    direct = any_broker.settings()
    with FaultProxy(any_broker.host, any_broker.port) as proxy:
        watch = Collector(direct, out)
        sender = BrokerClient(direct, client_name="sender").start()
        agent = EchoAgent(
            "echo",
            ns,
            topic=topic_in.name,
            queue=work.name,
            reply_topic=out.name,
            broker=any_broker.settings(host=proxy.host, port=proxy.port, heartbeat_ms=2000),
            heartbeat_interval=1.0,
        )
        states = StateLog(agent.client)
        agent.start()
        try:
            sender.send(topic_in, stf_ready(ns, "before.stf"))
            watch.wait_for(
                lambda ms: any(getattr(m, "filename", "") == "before.stf" for m in ms),
                30,
                "the agent's answer through the proxy",
            )
            assert proxy.accepted == 1
            time.sleep(5)  # steady state: heart-beats have flowed for a while
            stalled_at = time.monotonic()
            proxy.stall()  # the agent's connection is black-holed; a new one would go through
            during = [f"during{i}.stf" for i in range(30)]
            for name in during:
                sender.send(work, stf_ready(ns, name))
            eventually(
                lambda: states.first(True, stalled_at) is not None, 60, "the agent to reconnect"
            )
            down_at = states.first(False, stalled_at)
            up_at = states.first(True, stalled_at)
            assert down_at is not None and up_at is not None
            after = [f"after{i}.stf" for i in range(30)]
            for name in after:
                sender.send(work, stf_ready(ns, name))
            expected = set(during + after)
            watch.wait_for(
                lambda ms: expected <= {getattr(m, "filename", "") for m in ms},
                60,
                "every work item answered",
            )
            assert agent.client.connected
            # Its handlers drained, what the agent has handled is final: a message handled
            # twice would be in `seen` twice, whether or not its second answer has arrived.
            agent.shutdown()
            handled = Counter(agent.seen)
            assert {f: handled[f] for f in expected} == {f: 1 for f in expected}
            answered = Counter(
                getattr(m, "filename", "") for m in watch.of_type("processing_complete")
            )
            assert {f: answered[f] for f in expected} == {f: 1 for f in expected}
            assert agent.client.reconnects >= 1 and proxy.accepted >= 2
        finally:
            proxy.restore()
            agent.stop()
            agent.shutdown()
            sender.close()
            watch.close()
    report(
        record_property,
        f"agent_half_open_detected_s[{any_broker.name}]",
        round(down_at - stalled_at, 2),
    )
    report(
        record_property,
        f"agent_half_open_reconnected_s[{any_broker.name}]",
        round(up_at - stalled_at, 2),
    )


# -------------------------------------------------------------------- the ingest, through the proxy


def _migrate(database_url: str, home: Path) -> None:
    """The monitor's schema in a database of our own (the ingest runs with --no-migrate)."""
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "SWF_HOME": str(home),
        "DJANGO_SETTINGS_MODULE": "swf_testbed.monitor.settings",
    }
    result = subprocess.run(
        [sys.executable, "-m", "swf_testbed.monitor.manage", "migrate", "-v", "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def _stored(database_url: str, namespace: str) -> tuple[int, int]:
    """Rows of the namespace's messages (msg_id ``NS-…``) in the monitor's table, and distinct
    msg_ids."""
    query = (
        "SELECT count(*), count(DISTINCT msg_id) FROM monitor_workflowmessage WHERE msg_id LIKE {}"
    )
    pattern = f"{namespace}-%"
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as conn:
            row = conn.execute(query.format("?"), (pattern,)).fetchone()
    else:
        import psycopg

        with psycopg.connect(database_url, connect_timeout=5) as conn:
            row = conn.execute(query.format("%s"), (pattern,)).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def _probe_recorded(database_url: str, msg_id: str) -> bool:
    query = "SELECT 1 FROM monitor_workflowmessage WHERE msg_id = {}"
    if database_url.startswith("sqlite:///"):
        with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as conn:
            return conn.execute(query.format("?"), (msg_id,)).fetchone() is not None
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5) as conn:
        return conn.execute(query.format("%s"), (msg_id,)).fetchone() is not None


def _recorded_through_sentinel(client: BrokerClient, database_url: str, ns: str) -> None:
    """Send a sentinel after the publisher's messages (same connection, same topic) and wait
    until it is recorded.

    The ingest writes its deliveries in order, and a redelivery comes before
    what was sent after it, so once the sentinel is recorded every earlier
    message is recorded, and so is any duplicate of one: the counts can then
    be asserted, with no waiting for what might still come.
    """
    sentinel = _stf(ns, f"{ns}-sentinel-", 0)
    client.send(data_topic(ns), sentinel)
    wait_for(
        lambda: _probe_recorded(database_url, sentinel.msg_id),
        90,
        "the sentinel sent after every message to be recorded",
        interval=0.1,
    )


def _wait_ingesting(
    client: BrokerClient, ingest: IngestProcess, database_url: str, timeout: float = 90
) -> None:
    """Probes until one is recorded, looked up in the database directly (this test runs no
    Django)."""
    ingestlib.wait_until_ingesting(
        client,
        ingest,
        timeout,
        any_recorded=lambda ids: any(_probe_recorded(database_url, m) for m in ids[-5:]),
    )


def _stf(ns: str, prefix: str, i: int) -> StfReady:
    return StfReady(
        msg_id=f"{prefix}{i:06d}",
        namespace=ns,
        sender="faults",
        execution_id=f"{ns}-exec",
        run_id=1,
        state="run",
        substate="physics",
        filename=f"{prefix}{i:06d}.stf",
        url="file:///x",
        sequence=i,
        size_bytes=1,
        checksum="00000001",
    )


class Publisher:
    """Sends numbered messages to the namespace's data topic at a steady pace, in a thread, until
    stopped."""

    def __init__(self, client: BrokerClient, ns: str, interval: float = 0.02) -> None:
        self.client = client
        self.ns = ns
        self.prefix = f"{ns}-"
        self.interval = interval
        self.sent = 0
        self.sent_at: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def start(self) -> Publisher:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.client.send(data_topic(self.ns), _stf(self.ns, self.prefix, self.sent))
                self.sent_at.append(time.monotonic())
                self.sent += 1
                self._stop.wait(self.interval)
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        assert self.error is None, f"publishing failed: {self.error!r}"
        return self.sent

    def index_after(self, t: float) -> int:
        """The number of the first message sent at or after ``t``."""
        return next((i for i, at in enumerate(list(self.sent_at)) if at >= t), len(self.sent_at))


@pytest.fixture
def ingests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[IngestProcess]]:
    """Ingest processes of the test, killed at its end.

    :class:`IngestProcess` asks Django for the test database's URL; these
    tests pass their own ``DATABASE_URL`` and need no Django here.
    """
    monkeypatch.setattr(ingestlib, "database_url_of_tests", lambda: "unused://")
    started: list[IngestProcess] = []
    yield started
    for proc in started:
        proc.kill()
        # pytest shows this only when the test failed: the ingest's own account of it
        print(
            f"--- the last lines of ingest log {proc.log_path}:\n"
            + "\n".join(proc.log().splitlines()[-60:])
        )


def _ingest(
    ingests: list[IngestProcess],
    broker: BrokerProcess,
    database_url: str,
    client_id: str,
    *,
    via: FaultProxy | None = None,
    env: dict[str, str] | None = None,
) -> IngestProcess:
    extra = {"DATABASE_URL": database_url, **(env or {})}
    if via is not None:
        extra.update({"ACTIVEMQ_HOST": via.host, "ACTIVEMQ_PORT": str(via.port)})
    proc = IngestProcess(broker, "--client-id", client_id, "--flush-ms", "50", env=extra).start()
    ingests.append(proc)
    return proc


def test_half_open_ingest_connection_is_replaced_and_every_message_recorded_once(
    any_broker: BrokerProcess,
    ingests: list[IngestProcess],
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    """The ingest's broker connection goes half-open while messages keep coming: it reconnects
    (once the broker has freed its client id) and records every message exactly once."""
    database_url = f"sqlite:///{tmp_path / 'monitor.sqlite3'}"
    _migrate(database_url, tmp_path)
    ns = f"ho{uuid.uuid4().hex[:8]}"
    with FaultProxy(any_broker.host, any_broker.port) as proxy:
        ingest = _ingest(
            ingests, any_broker, database_url, f"fault-ingest-{uuid.uuid4().hex[:8]}", via=proxy
        )
        client = BrokerClient(any_broker.settings(), client_name="publisher").start()
        try:
            _wait_ingesting(client, ingest, database_url)
            publisher = Publisher(client, ns).start()
            wait_for(lambda: _stored(database_url, ns)[0] >= 50, 60, "messages flowing")
            time.sleep(3)  # heart-beats in steady state
            accepted = proxy.accepted
            stalled_at = time.monotonic()
            proxy.stall()
            new_link = proxy.wait_accepted(
                accepted + 1, 60
            )  # the ingest gave up the old connection
            first_after = publisher.index_after(stalled_at)

            def recovered() -> bool:
                return _probe_recorded(database_url, f"{ns}-{first_after:06d}")

            wait_for(recovered, 90, "a message sent during the stall to be recorded", interval=0.1)
            recovered_at = time.monotonic()
            time.sleep(3)  # and a while of normal flow after it
            total = publisher.stop()
            _recorded_through_sentinel(client, database_url, ns)
            assert _stored(database_url, ns) == (total + 1, total + 1)
            assert ingest.alive
        finally:
            proxy.restore()
            client.close()
    report(
        record_property,
        f"ingest_half_open_new_connection_s[{any_broker.name}]",
        round(new_link.accepted_at - stalled_at, 2),
    )
    report(
        record_property,
        f"ingest_half_open_recovered_s[{any_broker.name}]",
        round(recovered_at - stalled_at, 2),
    )
    report(record_property, f"ingest_half_open_messages[{any_broker.name}]", total)


# ====================================================================== 2. the database unavailable


def _via(database_url: str, proxy: FaultProxy) -> str:
    """``database_url`` with its host and port replaced by the proxy's."""
    scheme, rest = database_url.split("://", 1)
    auth, _, hostpath = rest.rpartition("@")
    path = hostpath.split("/", 1)[1]
    return f"{scheme}://{auth + '@' if auth else ''}{proxy.host}:{proxy.port}/{path}"


def _pg_target(database_url: str) -> tuple[str, int]:
    hostport = database_url.split("://", 1)[1].rpartition("@")[2].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    return host or "127.0.0.1", int(port or 5432)


DB_TIMEOUT_S = 3
"""SWF_DB_TIMEOUT_S of the ingests under test (the default is 30 s)."""


def test_database_cut_for_10_s_ingest_retries_acks_nothing_uncommitted_catches_up(
    embedded_broker: BrokerProcess,
    fresh_postgres_database: str,
    ingests: list[IngestProcess],
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    """PostgreSQL unreachable (connections closed, new ones refused) for 10 s while messages keep
    coming.

    First outage: the ingest retries, never dies, and catches up. Second
    outage: the ingest is SIGKILLed while it holds deliveries it could not
    write; a new one (same client id) must still record them all. Had the
    first acknowledged anything it had not committed, it would be missing.
    """
    direct = fresh_postgres_database
    _migrate(direct, tmp_path)
    ns = f"db{uuid.uuid4().hex[:8]}"
    client_id = f"fault-ingest-{uuid.uuid4().hex[:8]}"
    with FaultProxy(*_pg_target(direct)) as proxy:
        via = _via(direct, proxy)
        env = {"SWF_DB_TIMEOUT_S": str(DB_TIMEOUT_S)}
        ingest = _ingest(ingests, embedded_broker, via, client_id, env=env)
        client = BrokerClient(embedded_broker.settings(), client_name="publisher").start()
        try:
            _wait_ingesting(client, ingest, direct)
            publisher = Publisher(client, ns).start()
            wait_for(lambda: _stored(direct, ns)[0] >= 50, 60, "messages flowing")

            proxy.cut()
            time.sleep(10)  # the outage; messages keep coming
            frozen = _stored(direct, ns)[0]
            assert ingest.alive
            restored_at = time.monotonic()
            proxy.restore()
            sent_by_restore = publisher.sent
            wait_for(
                lambda: _stored(direct, ns)[0] >= sent_by_restore, 90, "the backlog of the outage"
            )
            caught_up_s = time.monotonic() - restored_at
            assert frozen < sent_by_restore, (
                "nothing was sent during the outage: the test proves nothing"
            )
            assert "database unavailable" in ingest.log()

            proxy.cut()
            time.sleep(3)  # deliveries arrive; the ingest holds them, retrying
            ingest.kill()
            held = publisher.sent - _stored(direct, ns)[0]
            proxy.restore()
            total = publisher.stop()
            _ingest(ingests, embedded_broker, via, client_id, env=env)
            _recorded_through_sentinel(client, direct, ns)
            assert _stored(direct, ns) == (total + 1, total + 1)
            assert held > 0
        finally:
            proxy.restore()
            client.close()
    report(record_property, "db_cut_10s_catch_up_after_restore_s", round(caught_up_s, 2))
    report(record_property, "db_cut_messages_sent_during_outage", sent_by_restore - frozen)
    report(record_property, "db_cut_killed_holding_unwritten", held)
    report(record_property, "db_cut_messages_total", total)


@pytest.mark.parametrize("stall", ["this-connection", "mid-transaction", "whole-partition"])
def test_database_stalled_ingest_recovers(
    stall: str,
    embedded_broker: BrokerProcess,
    fresh_postgres_database: str,
    ingests: list[IngestProcess],
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    """PostgreSQL black-holed under the ingest (no error, no answer) while messages keep coming.

    ``this-connection``: the ingest's open connection freezes, new ones work;
    the ingest must give up the frozen one by itself and go on.
    ``mid-transaction``: the same, frozen in the middle of the ingest's
    transaction, after its INSERT, while it waits on a lock we hold on the
    counts table. That session is active, not idle: no server timeout ends
    it, and it keeps the locks of the rows it inserted, which would block the
    retry of the same batch on a new connection for ever. We hold our lock
    until the ingest has ended that session itself (with its watchdog's
    record of the connections it dropped), then release it.
    ``whole-partition``: new connections freeze too, for 10 s; once restored
    the ingest must go on. Every message is recorded exactly once.
    """
    import psycopg

    direct = fresh_postgres_database
    _migrate(direct, tmp_path)
    ns = f"st{uuid.uuid4().hex[:8]}"
    with FaultProxy(*_pg_target(direct)) as proxy:
        ingest = _ingest(
            ingests,
            embedded_broker,
            _via(direct, proxy),
            f"fault-ingest-{uuid.uuid4().hex[:8]}",
            env={"SWF_DB_TIMEOUT_S": str(DB_TIMEOUT_S)},
        )
        client = BrokerClient(embedded_broker.settings(), client_name="publisher").start()
        try:
            _wait_ingesting(client, ingest, direct)
            publisher = Publisher(client, ns).start()
            wait_for(lambda: _stored(direct, ns)[0] >= 50, 60, "messages flowing")
            if stall == "mid-transaction":
                with psycopg.connect(direct) as locker:
                    # the message counts are updated after the messages are inserted, in the same
                    # transaction
                    locker.execute("LOCK TABLE monitor_messagecount IN ACCESS EXCLUSIVE MODE")

                    def waiting_sessions() -> list[int]:
                        return [
                            row[0]
                            for row in locker.execute(
                                "SELECT pid FROM pg_stat_activity "
                                "WHERE datname = current_database() "
                                "AND wait_event_type = 'Lock'"
                            ).fetchall()
                        ]

                    frozen = wait_for(
                        waiting_sessions,
                        30,
                        "the ingest's transaction to wait for our lock",
                        interval=0.05,
                    )
                    stalled_at = time.monotonic()
                    proxy.stall()
                    with psycopg.connect(
                        direct, autocommit=True
                    ) as watcher:  # a fresh view of the sessions each time
                        wait_for(
                            lambda: (
                                not set(frozen)
                                & {
                                    row[0]
                                    for row in watcher.execute(
                                        "SELECT pid FROM pg_stat_activity"
                                    ).fetchall()
                                }
                            ),
                            90,
                            f"the ingest to end its frozen session(s) {frozen}",
                            interval=0.2,
                        )
                # committed: the ingest's retries go on
            else:
                stalled_at = time.monotonic()
                proxy.stall(new_connections=stall == "whole-partition")
            first_after = publisher.index_after(stalled_at)
            if stall == "whole-partition":
                time.sleep(10)
                assert ingest.alive
                proxy.restore()
            wait_for(
                lambda: _probe_recorded(direct, f"{ns}-{first_after:06d}"),
                120,
                "a message sent during the stall to be recorded",
                interval=0.1,
            )
            recovered_s = time.monotonic() - stalled_at
            time.sleep(2)
            total = publisher.stop()
            _recorded_through_sentinel(client, direct, ns)
            assert _stored(direct, ns) == (total + 1, total + 1)
            assert ingest.alive
            assert "the database has not answered" in ingest.log(), "the watchdog never fired"
            if stall == "mid-transaction":
                assert "database session(s) of dropped connections" in ingest.log()
        finally:
            proxy.restore()
            client.close()
    report(record_property, f"db_stall_{stall}_recovered_s", round(recovered_s, 2))
    report(record_property, f"db_stall_{stall}_messages", total)
    report(
        record_property,
        f"db_stall_{stall}_watchdog_fired",
        ingest.log().count("the database has not answered"),
    )


# ========================================================================== 3. the monitor web down


def _monitor_bed_toml(namespace: str, monitor_port: int, database_url: str) -> str:
    from tests.orchestrator.conftest import agent_toml

    agents = agent_toml("runner", "TinyRunner") + agent_toml("idle")
    return (
        f'[testbed]\nnamespace = "{namespace}"\nstart_timeout = 120\n\n'
        f"[workflow]\ntime_scale = 0\n\n"
        f"[parameters]\nstf_count = 3\n\n{agents}\n"
        f'[broker]\nmode = "external"\n\n'
        f'[monitor]\nmode = "embedded"\nport = {monitor_port}\n\n'
        f'[database]\nurl = "{database_url}"\n'
    )


def _rows(database_url: str, where: str, *params: Any) -> int:
    with sqlite3.connect(database_url.removeprefix("sqlite:///"), timeout=30) as conn:
        row = conn.execute(
            f"SELECT count(*) FROM monitor_workflowmessage WHERE {where}", params
        ).fetchone()
    return int(row[0])


def test_monitor_web_down_agents_and_ingest_go_on_and_the_orchestrator_says_so(
    make_bed: Any,
    home: Path,
    embedded_broker: BrokerProcess,
    tmp_path: Path,
    record_property: Callable[[str, Any], None],
) -> None:
    """The monitor web stopped (supervisorctl) and then hung (SIGSTOP), under a running testbed.

    Agents and the ingest carry on (messages still recorded, checked in the
    database directly); ``status`` names the web as down with its URL;
    ``run`` restarts a stopped web by itself, and refuses to start with a
    hung one, saying which program and which URL.
    """
    from swf_testbed.orchestrator.supervisor import Supervisor, runtime_paths
    from swf_testbed.testing.brokers import free_port
    from tests.orchestrator.conftest import Bed, ok

    bed: Bed = make_bed()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    ns = f"webdown{port}"
    database_url = f"sqlite:///{tmp_path / 'monitor.sqlite3'}"
    bed.write(_monitor_bed_toml(ns, port, database_url))
    ok(bed.cli("up", timeout=300))
    before = bed.programs()
    web = before["monitor-web"]
    assert web["healthy"] is True
    supervisor = Supervisor(runtime_paths(home, ns))

    supervisor.stop_process(f"{web['program']}:{web['process']}")
    client = BrokerClient(embedded_broker.settings(), client_name="faults").start()
    try:
        # the ingest goes on: messages sent now, and the agents' heartbeats, are recorded
        beats_at_stop = _rows(database_url, "msg_type = 'heartbeat' AND sender = 'idle'")
        sent = [_stf(ns, f"{ns}-", i) for i in range(20)]
        for msg in sent:
            client.send(data_topic(ns), msg)
        wait_for(
            lambda: _rows(database_url, "msg_id LIKE ?", f"{ns}-%") == len(sent),
            60,
            "the messages sent while the web is down, in the database",
        )
        wait_for(
            lambda: (
                _rows(database_url, "msg_type = 'heartbeat' AND sender = 'idle'")
                >= beats_at_stop + 3
            ),
            30,
            "the idle agent's heartbeats, recorded while the web is down",
        )

        result = bed.cli("status")
        assert result.returncode == 1, result.stdout  # not healthy
        lines = result.stdout.splitlines()
        web_line = next(
            line for line in lines if line.lstrip().startswith("monitor-web ")
        )  # its row of the table
        assert "STOPPED" in web_line.split() and "down" in web_line.split(), result.stdout
        details = [
            line.strip() for line in lines
        ]  # each program's detail is printed under the table
        assert f"monitor-web: stopped: {url} is down" in details, result.stdout
        assert f"monitor not reachable at {url}" in result.stdout, result.stdout
        after = bed.programs()
        for name in ("runner", "idle", "monitor-ingest"):
            assert after[name]["pid"] == before[name]["pid"] and after[name]["healthy"] is True, (
                after[name]
            )

        # `run` starts the stopped web again, and the workflow runs
        out = ok(bed.cli("run", timeout=300))
        assert "workflow completed" in out
        restarted = bed.programs()["monitor-web"]
        assert restarted["healthy"] is True and restarted["pid"] != web["pid"]
        import httpx

        listed = httpx.get(
            f"{url}/api/workflow-messages/",
            params={"msg_type": "stf_ready", "limit": 1},
            timeout=10,
        ).json()
        assert listed["count"] >= len(sent)

        # a hung web (accepts connections, never answers): run's preflight names it and its URL
        os.kill(restarted["pid"], signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            result = bed.cli("run", "--timeout", "8", timeout=120)
            refused_s = time.monotonic() - t0
        finally:
            os.kill(restarted["pid"], signal.SIGCONT)
        said = result.stdout + result.stderr
        assert result.returncode != 0, said
        assert "monitor-web" in said and f"{url} not answering" in said, said
        assert "workflow completed" not in said
        status = bed.cli("status")
        assert status.returncode in (0, 1)
    finally:
        client.close()
    report(record_property, "hung_web_run_refused_after_s", round(refused_s, 1))
    report(
        record_property,
        "hung_web_run_said",
        " | ".join(line.strip() for line in said.splitlines() if "monitor-web" in line),
    )
    report(record_property, "stopped_web_status_line", " ".join(web_line.split()))


# ================================================================= 4. a slow consumer at full speed


SLOW_MESSAGES = 40_000
SLOW_SIZE = 2048


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["topic", "queue"])
@pytest.mark.parametrize(
    "broker_kind", ["embedded", pytest.param("activemq", marks=pytest.mark.activemq)]
)
def test_slow_consumer_under_a_full_speed_producer(
    kind: str,
    broker_kind: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    record_property: Callable[[str, Any], None],
) -> None:
    """One producer sends 40 000 messages of 2 KiB (80 MiB) as fast as it can; one consumer
    (its own process) sleeps 0.2 ms per message. Every message arrives exactly once, on both
    brokers.

    Embedded broker, topic (non-durable, auto ack, as the monitor-style
    listeners): producer flow control paces the producer to the consumer, and
    the broker's memory grows by far less than what was sent (it would grow by
    at least that much if it buffered the difference). Queue (client-
    individual, prefetch 10, sent persistent as the chain's queues are): the
    broker runs with a 16 MiB queue memory limit, so most of the 80 MiB backlog
    waits in its journal only and is paged in as the consumer catches up; its
    memory grows by the limit plus a margin, far less than what was sent. (A
    non-persistent send past the limit is refused with an ERROR, as documented:
    tests/broker/test_persistence.py.) ActiveMQ (a JVM with a fixed heap: its
    RSS says nothing): no loss, no duplicates, no consumer dropped.
    """
    from tests.faults.slow_consumer import vm_kib

    own = broker_kind == "embedded"
    # the embedded broker in its own process: its peak memory is this test's
    limit_mib = 16
    broker = (
        start_embedded(args=["--queue-memory-limit", str(limit_mib * 2**20)])
        if own
        else request.getfixturevalue("activemq_broker")
    )
    own_pid = 0
    if own:
        assert broker.proc is not None, "start_embedded runs the broker in its own process"
        own_pid = broker.proc.pid
    tag = uuid.uuid4().hex[:8]
    destination = f"/{kind}/slow.{tag}"
    out = tmp_path / "consumer.json"
    args = ["--expect", str(SLOW_MESSAGES), "--sleep-ms", "0.2"]
    if kind == "queue":
        args += ["--ack", "client-individual", "--prefetch", "10"]
    consumer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.faults.slow_consumer",
            broker.host,
            str(broker.port),
            destination,
            str(out),
            *args,
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert consumer.stdout is not None and consumer.stdout.readline().strip() == "subscribed"
        broker_base = vm_kib(own_pid, "VmRSS") if own else 0
        producer = BrokerClient(broker.settings(), client_name="producer").start()
        pad = b"x" * (SLOW_SIZE - 8)
        dest = (
            Topic(destination.split("/", 2)[2])
            if kind == "topic"
            else Queue(destination.split("/", 2)[2])
        )
        t0 = time.monotonic()
        for i in range(SLOW_MESSAGES):
            producer.send(dest, b"%08d" % i + pad, persistent=kind == "queue", wait=False)
        assert producer.flush(timeout=300), "receipts still outstanding after 300 s"
        producer_s = time.monotonic() - t0
        consumer.wait(timeout=500)
        consumer_s = time.monotonic() - t0
        broker_peak = vm_kib(own_pid, "VmHWM") if own else 0
        producer.close()
        result = json.loads(out.read_text())
    finally:
        if consumer.poll() is None:
            consumer.kill()
            consumer.wait(10)
        if own:
            broker.stop()
    sent_kib = SLOW_MESSAGES * SLOW_SIZE // 1024
    broker_growth = broker_peak - broker_base
    consumer_growth = result["peak_rss_kib"] - result["rss_at_subscribe_kib"]
    figures: list[tuple[str, Any]] = [
        ("producer_s", round(producer_s, 1)),
        ("consumer_s", round(consumer_s, 1)),
        ("consumer_rss_growth_mib", round(consumer_growth / 1024, 1)),
        ("consumer_peak_rss_mib", round(result["peak_rss_kib"] / 1024, 1)),
    ]
    if own:
        figures += [
            ("broker_rss_growth_mib", round(broker_growth / 1024, 1)),
            ("broker_peak_rss_mib", round(broker_peak / 1024, 1)),
        ]
    for name, value in figures:
        report(record_property, f"slow_{kind}_{name}[{broker_kind}]", value)
    assert result["distinct"] == SLOW_MESSAGES, result
    assert result["duplicates"] == 0 and result["out_of_range"] == 0, result
    assert result["broker_errors"] == [] and result["downs"] == 0, result
    # the consumer reads no faster than it handles: it never holds the backlog either
    assert consumer_growth < sent_kib // 4, result
    if own and kind == "topic":
        assert broker_growth < sent_kib // 4, (
            f"broker grew {broker_growth} KiB for {sent_kib} KiB sent"
        )
    elif own:
        assert broker_growth < (limit_mib + 32) * 1024 < sent_kib, (
            f"broker grew {broker_growth} KiB for {sent_kib} KiB sent"
        )

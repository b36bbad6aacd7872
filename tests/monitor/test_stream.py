"""``/api/messages/stream/`` against the real thing: broker → ingest process → database → monitor
web (uvicorn).

Messages are sent to the broker the way the DAQ sends a run; a real HTTP client
(httpx, streaming) reads the Server-Sent Events.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from swf_testbed.messages import EndRun, Message, RunImminent, StartRun, StfGen
from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import RUN_TOPIC
from swf_testbed.testing.brokers import BrokerProcess
from swf_testbed.testing.monitor import MonitorWebProcess

from .ingestlib import IngestProcess, database_url_of_tests, wait_until_ingesting
from .streamlib import StreamReader

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

STREAM = "/api/messages/stream/"


@pytest.fixture
def stack(embedded_broker: BrokerProcess) -> Iterator[dict[str, Any]]:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=User.objects.create_user("streamer", password="x" * 12)).key
    ingest = IngestProcess(embedded_broker, "--client-id", f"stream-{uuid.uuid4().hex[:8]}").start()
    from django.conf import settings

    web = MonitorWebProcess(
        database_url_of_tests(),
        env={  # the same secret key: sessions made here are valid there
            "SWF_STREAM_HEARTBEAT_S": "1",
            "SWF_STREAM_POLL_S": "0.2",
            "SWF_SECRET_KEY": settings.SECRET_KEY,
        },
    ).start()
    client = BrokerClient(embedded_broker.settings(), client_name="stream-test").start(wait=30)
    try:
        wait_until_ingesting(client, ingest)
        yield {"web": web, "client": client, "auth": {"Authorization": f"Token {token}"}}
    finally:
        client.close()
        web.stop()
        ingest.stop()


def run_messages(namespace: str, execution_id: str, run_id: int, stf_count: int) -> list[Message]:
    common: dict[str, Any] = {
        "namespace": namespace,
        "sender": "daq",
        "execution_id": execution_id,
        "run_id": run_id,
    }
    now = datetime.now(UTC)
    msgs: list[Message] = [
        RunImminent(**common, state="beam", substate="not_ready"),
        StartRun(**common, state="run", substate="physics"),
    ]
    msgs += [
        StfGen(
            **common,
            state="run",
            substate="physics",
            filename=f"swf.{run_id}.{i:06d}.stf",
            sequence=i,
            size_bytes=1000 + i,
            checksum="0000abcd",
            tf_count=10,
            start=now,
            end=now,
        )
        for i in range(1, stf_count + 1)
    ]
    msgs.append(EndRun(**common, state="run", substate="physics", total_stf_files=stf_count))
    return msgs


def test_stream_needs_a_login_and_answers_401_json(stack: dict[str, Any]) -> None:
    base = stack["web"].url
    for headers in ({}, {"Authorization": "Token not-a-token"}, {"Authorization": "Bearer x"}):
        reply = httpx.get(base + STREAM, headers=headers, timeout=30)
        assert reply.status_code == 401, (headers, reply.text)
        assert "detail" in reply.json()
    assert httpx.get(base + STREAM + "status/", timeout=30).status_code == 401
    bad = httpx.get(base + STREAM, headers=stack["auth"], params={"run_ids": "abc"}, timeout=30)
    assert bad.status_code == 400 and "run_ids" in bad.json()["detail"]


def test_a_session_login_opens_the_stream_too(stack: dict[str, Any]) -> None:
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.auth.models import User
    from django.contrib.sessions.backends.db import SessionStore

    user = User.objects.get(username="streamer")
    session = SessionStore()
    session.update(
        {
            SESSION_KEY: str(user.pk),
            BACKEND_SESSION_KEY: settings.AUTHENTICATION_BACKENDS[0],
            HASH_SESSION_KEY: user.get_session_auth_hash(),
        }
    )
    session.save()
    cookie = {"Cookie": f"{settings.SESSION_COOKIE_NAME}={session.session_key}"}
    reader = StreamReader(stack["web"].url + STREAM, headers=cookie)
    try:
        assert reader.status_code == 200 and reader.next().event == "connected"
    finally:
        reader.close()
    status = httpx.get(stack["web"].url + STREAM + "status/", headers=cookie, timeout=30)
    assert status.status_code == 200 and "connected_clients" in status.json()
    stale = {"Cookie": f"{settings.SESSION_COOKIE_NAME}=not-a-session"}
    assert httpx.get(stack["web"].url + STREAM, headers=stale, timeout=30).status_code == 401


def test_a_run_streams_live_in_order_with_filters(stack: dict[str, Any]) -> None:
    base, auth = stack["web"].url, stack["auth"]
    ns, other_ns = f"ns-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"
    everything = StreamReader(base + STREAM, headers=auth, params={"namespace": ns})
    only_stf = StreamReader(
        base + STREAM,
        headers=auth,
        params={"msg_types": "stf_gen", "execution_id": "exec-A", "agents": "daq"},
    )
    by_run = StreamReader(base + STREAM, headers=auth, params={"run_ids": "7002", "namespace": ns})
    try:
        for reader in (everything, only_stf, by_run):
            assert reader.status_code == 200 and reader.content_type.startswith("text/event-stream")
            hello = reader.next()
            assert hello.event == "connected" and hello.json()["status"] == "connected"
        status = httpx.get(base + STREAM + "status/", headers=auth, timeout=30).json()
        assert status["connected_clients"] >= 3
        ids = {hello_id for hello_id in status["client_ids"]}
        assert len(ids) == status["connected_clients"]
        assert {"exec-A"} <= {f["execution_id"] for f in status["client_filters"].values()}

        run_a = run_messages(ns, "exec-A", 7001, 5)
        run_b = run_messages(ns, "exec-B", 7002, 2)
        noise = run_messages(
            other_ns, "exec-A", 7003, 2
        )  # same execution id, other namespace and run
        for msg in [*run_a, *noise, *run_b]:
            stack["client"].send(RUN_TOPIC, msg)

        got = everything.take(len(run_a) + len(run_b))
        assert [e.json()["msg_id"] for e in got] == [m.msg_id for m in [*run_a, *run_b]]
        assert [e.event for e in got] == [m.msg_type for m in [*run_a, *run_b]]
        assert [int(e.id or 0) for e in got] == sorted(int(e.id or 0) for e in got)

        stf = only_stf.take(5 + 2)  # exec-A's stf_gen in both namespaces, in the order sent
        expected = [m for m in [*run_a, *noise] if m.msg_type == "stf_gen"]
        assert [e.json()["msg_id"] for e in stf] == [m.msg_id for m in expected]
        assert all(e.event == "stf_gen" for e in stf)

        run_events = by_run.take(len(run_b))
        assert [e.json()["msg_id"] for e in run_events] == [m.msg_id for m in run_b]
        # nothing more on the filtered streams than what they asked for: a marker shows the stream
        # is current
        marker = run_messages(ns, "exec-B", 7002, 0)[-1]
        stack["client"].send(RUN_TOPIC, marker)
        assert by_run.next().json()["msg_id"] == marker.msg_id
    finally:
        for reader in (everything, only_stf, by_run):
            reader.close()


def test_an_idle_stream_gets_heartbeats(stack: dict[str, Any]) -> None:
    reader = StreamReader(
        stack["web"].url + STREAM,
        headers=stack["auth"],
        params={"namespace": f"idle-{uuid.uuid4().hex[:6]}"},
    )
    try:
        assert reader.next().event == "connected"
        beat = reader.next(skip=())
        assert beat.event == "heartbeat" and datetime.fromisoformat(beat.json()["timestamp"])
    finally:
        reader.close()


def test_a_reconnect_with_last_event_id_loses_nothing(stack: dict[str, Any]) -> None:
    base, auth = stack["web"].url, stack["auth"]
    ns = f"re-{uuid.uuid4().hex[:6]}"
    run = run_messages(ns, "exec-R", 7101, 20)
    first = StreamReader(base + STREAM, headers=auth, params={"namespace": ns})
    assert first.next().event == "connected"
    for msg in run[:8]:
        stack["client"].send(RUN_TOPIC, msg)
    seen = first.take(5)
    # gone after 5 events; the other 3 of the first part and everything after are "missed"
    first.close()
    for msg in run[8:]:
        stack["client"].send(RUN_TOPIC, msg)
    last_id = seen[-1].id
    assert last_id is not None
    from swf_testbed.monitor.api.models import WorkflowMessage

    from .ingestlib import wait_for

    wait_for(
        lambda: WorkflowMessage.objects.filter(namespace_id=ns).count() == len(run),
        60,
        "the whole run to be recorded",
    )
    again = StreamReader(
        base + STREAM, headers={**auth, "Last-Event-ID": last_id}, params={"namespace": ns}
    )
    try:
        assert again.next().event == "connected"
        rest = again.take(len(run) - 5)
        received = [e.json()["msg_id"] for e in [*seen, *rest]]
        assert received == [m.msg_id for m in run]  # every message once, in order
        bad = httpx.get(base + STREAM, headers={**auth, "Last-Event-ID": "x1"}, timeout=30)
        assert bad.status_code == 400
    finally:
        again.close()


def test_a_slow_client_loses_its_oldest_events_and_is_told(record: Any, make_message: Any) -> None:
    """The hub never waits for a client: a full queue drops its oldest events and the client gets
    ``dropped``.
    """
    import asyncio
    import json

    from swf_testbed.monitor.api.models import WorkflowMessage
    from swf_testbed.monitor.api.stream import StreamClient, StreamFilter, StreamHub

    async def scenario() -> tuple[StreamClient, StreamClient, list[int]]:
        hub = StreamHub(
            poll_s=3600, gap_grace_s=0
        )  # ids after a flushed table need not start at cursor + 1
        slow = StreamClient(filter=StreamFilter(), buffer=3)
        roomy = StreamClient(filter=StreamFilter(msg_types=frozenset({"start_run"})), buffer=100)
        await hub.add(slow)
        await hub.add(roomy)
        await hub.db(
            record,
            *[
                make_message(
                    "stf_gen",
                    filename=f"f{i}",
                    sequence=i,
                    size_bytes=1,
                    checksum="0000abcd",
                    tf_count=1,
                    start="2026-01-01T00:00:00Z",
                    end="2026-01-01T00:00:01Z",
                )
                for i in range(10)
            ],
            make_message("start_run"),
        )
        ids = await hub.db(
            lambda: list(WorkflowMessage.objects.order_by("id").values_list("id", flat=True))
        )
        await (
            hub.tick()
        )  # (its own poller may have ticked meanwhile: one tick at a time, from the cursor)
        hub.remove(slow)
        hub.remove(roomy)
        hub.close()
        return slow, roomy, ids

    slow, roomy, ids = asyncio.run(scenario())
    assert len(ids) == 11
    assert [event_id for event_id, _ in slow.queue] == ids[-3:]
    notice = slow.take_dropped()
    assert notice is not None and notice.startswith(b"event: dropped\n")
    data = json.loads(notice.decode().split("data: ", 1)[1])
    assert data["dropped"] == 8 and data["first_dropped_id"] == ids[0]
    assert slow.take_dropped() is None  # told once
    assert [event_id for event_id, _ in roomy.queue] == ids[-1:] and roomy.dropped == 0


def test_the_hub_waits_briefly_at_a_hole_in_the_ids() -> None:
    from swf_testbed.monitor.api.stream import StreamHub

    hub = StreamHub(poll_s=1, gap_grace_s=3600)
    hub.cursor = 10
    rows = [{"id": 11}, {"id": 13}]
    assert hub._up_to_first_gap(rows) == [{"id": 11}]  # 12 may still be committing
    hub.gap_grace_s = 0
    assert hub._up_to_first_gap(rows) == rows  # a hole that stays is a rolled-back row: passed over


def test_the_web_stops_on_sigterm_with_a_stream_open(stack: dict[str, Any]) -> None:
    """An open stream never ends by itself: the server cuts it after its short grace instead of
    being killed.
    """
    import signal

    reader = StreamReader(stack["web"].url + STREAM, headers=stack["auth"])
    try:
        assert reader.next().event == "connected"
        stack["web"].stop()  # SIGTERM, then SIGKILL after 20 s
        assert stack["web"].proc.returncode in (0, -signal.SIGTERM), stack["web"].log()[-2000:]
    finally:
        reader.close()

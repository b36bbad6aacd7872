"""``GET /api/messages/stream/``: every recorded message, live, as Server-Sent Events (the v28
protocol).

How it is fed: one :class:`StreamHub` per web process polls the database with a
cursor on ``WorkflowMessage.id`` (one query per tick, however many clients) and
fans the new rows out to each client's bounded queue. Being fed from the
database, any number of web processes can serve streams of the same monitor.
The hub runs in the ASGI server's event loop (uvicorn); its queries run on one
thread of their own. It polls only while clients are connected.

A slow client never slows anyone else: its queue keeps the newest
``SWF_STREAM_CLIENT_BUFFER`` events, drops the oldest, and the client is told
with a ``dropped`` event how many it lost (and from which id on).

Protocol: the first event is ``connected`` ``{client_id, status}``; each
message is an event named after its ``msg_type`` (``message`` when the type is
not a plain name), ``id:`` its row id, ``data:`` its body as received; an idle
stream gets ``heartbeat`` ``{timestamp}`` every ``SWF_STREAM_HEARTBEAT_S``. A
client reconnecting with ``Last-Event-ID`` first gets what it missed from the
database, at most ``SWF_STREAM_REPLAY_MAX`` events (beyond that, a ``dropped``
event says so).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import os
import re
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from django.db import close_old_connections
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.http import require_GET

from swf_testbed.monitor.api.models import WorkflowMessage
from swf_testbed.settings import get_settings

log = logging.getLogger(__name__)

_EVENT_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_ROW_FIELDS = ("id", "msg_type", "sender", "run_id", "namespace_id", "execution_id", "body")


class FilterError(ValueError):
    """A stream filter parameter that cannot be understood."""


def _csv(value: str | None) -> frozenset[str]:
    return frozenset(part.strip() for part in (value or "").split(",") if part.strip())


@dataclass(frozen=True, slots=True)
class StreamFilter:
    """Which messages a client wants; an empty field matches everything."""

    msg_types: frozenset[str] = frozenset()
    agents: frozenset[str] = frozenset()
    run_ids: frozenset[int] = frozenset()
    namespace: str = ""
    execution_id: str = ""

    @classmethod
    def from_query(cls, query: Any) -> StreamFilter:
        run_ids: set[int] = set()
        for text in _csv(query.get("run_ids")):
            try:
                run_ids.add(int(text))
            except ValueError:
                raise FilterError(f"run_ids: {text[:40]!r} is not an integer") from None
        return cls(
            msg_types=_csv(query.get("msg_types")),
            agents=_csv(query.get("agents")),
            run_ids=frozenset(run_ids),
            namespace=(query.get("namespace") or "").strip(),
            execution_id=(query.get("execution_id") or "").strip(),
        )

    def matches(self, row: dict[str, Any]) -> bool:
        return (
            (not self.msg_types or row["msg_type"] in self.msg_types)
            and (not self.agents or row["sender"] in self.agents)
            and (not self.run_ids or row["run_id"] in self.run_ids)
            and (not self.namespace or row["namespace_id"] == self.namespace)
            and (not self.execution_id or row["execution_id"] == self.execution_id)
        )

    def queryset(self) -> Any:
        """The same filter in SQL (for the replay of what a reconnecting client missed)."""
        qs = WorkflowMessage.objects.all()
        if self.msg_types:
            qs = qs.filter(msg_type__in=self.msg_types)
        if self.agents:
            qs = qs.filter(sender__in=self.agents)
        if self.run_ids:
            qs = qs.filter(run_id__in=self.run_ids)
        if self.namespace:
            qs = qs.filter(namespace_id=self.namespace)
        if self.execution_id:
            qs = qs.filter(execution_id=self.execution_id)
        return qs

    def as_dict(self) -> dict[str, Any]:
        return {
            "msg_types": sorted(self.msg_types),
            "agents": sorted(self.agents),
            "run_ids": sorted(self.run_ids),
            "namespace": self.namespace,
            "execution_id": self.execution_id,
        }


def sse(event: str, data: str, event_id: int | None = None) -> bytes:
    """One SSE event; a multi-line ``data`` becomes several
    ``data:`` lines, as the format requires.
    """
    lines = [f"event: {event}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines += [
        f"data: {line}" for line in data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    ]
    return ("\n".join(lines) + "\n\n").encode()


def message_event(row: dict[str, Any]) -> bytes:
    name = row["msg_type"] if _EVENT_NAME.match(row["msg_type"] or "") else "message"
    return sse(name, row["body"], row["id"])


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(eq=False)
class StreamClient:
    """One connected client: its filter and the bounded queue the hub fills."""

    filter: StreamFilter
    buffer: int
    user: str = ""
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    connected_at: str = field(default_factory=_now)
    queue: collections.deque[tuple[int, bytes]] = field(init=False)
    dropped: int = 0
    dropped_from: int | None = None
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.queue = collections.deque()

    def push(self, event_id: int, payload: bytes) -> None:
        """Never blocks: a full queue loses its oldest event (and remembers it)."""
        if len(self.queue) >= self.buffer:
            lost_id, _ = self.queue.popleft()
            self.dropped += 1
            if self.dropped_from is None:
                self.dropped_from = lost_id
        self.queue.append((event_id, payload))
        self.wakeup.set()

    def take_dropped(self) -> bytes | None:
        if not self.dropped:
            return None
        event = sse(
            "dropped",
            json.dumps(
                {
                    "dropped": self.dropped,
                    "first_dropped_id": self.dropped_from,
                    "reason": "client too slow: oldest events dropped",
                }
            ),
        )
        self.dropped, self.dropped_from = 0, None
        return event


class StreamHub:
    """The one poller of this process: new rows by id, fanned out to the clients that want them."""

    def __init__(self, poll_s: float, batch: int = 1000, gap_grace_s: float = 1.0) -> None:
        self.poll_s = poll_s
        self.batch = batch
        self.gap_grace_s = gap_grace_s
        self.clients: dict[str, StreamClient] = {}
        self.cursor: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="swf-stream-db"
        )
        self._gap_since: float | None = None
        self._ticking = asyncio.Lock()

    async def db(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` on the hub's own database thread (its connection is reused, never shared)."""
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, _with_connection, fn, *args
        )

    async def add(self, client: StreamClient) -> None:
        if self.cursor is None:
            self.cursor = await self.db(_max_id)
        self.clients[client.client_id] = client
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="swf-stream-hub")

    def remove(self, client: StreamClient) -> None:
        self.clients.pop(client.client_id, None)

    def close(self) -> None:
        """Close the hub's database connection and its thread (a hub of a test; a web process keeps
        its own).
        """
        from django.db import connections

        self._executor.submit(connections.close_all).result()
        self._executor.shutdown()

    async def _run(self) -> None:
        try:
            while self.clients:
                try:
                    await self.tick()
                except Exception:  # a database hiccup: keep the streams, try again next tick
                    log.exception("stream poll failed")
                await asyncio.sleep(self.poll_s)
        finally:
            self._task = None
            if not self.clients:
                self.cursor = (
                    None  # re-read when a client comes back: no backlog to replay for nobody
                )

    async def tick(self) -> None:
        """One poll: the rows after the cursor, to every client that wants them (one tick at a
        time).
        """
        async with self._ticking:
            await self._tick()

    async def _tick(self) -> None:
        assert self.cursor is not None
        rows: list[dict[str, Any]] = await self.db(_rows_after, self.cursor, self.batch)
        rows = self._up_to_first_gap(rows)
        for row in rows:
            payload: bytes | None = None
            for client in list(self.clients.values()):
                if client.filter.matches(row):
                    payload = payload or message_event(row)
                    client.push(row["id"], payload)
        if rows:
            self.cursor = rows[-1]["id"]

    def _up_to_first_gap(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Hold back rows after a hole in the ids for a moment: a lower id may still be committing.

        PostgreSQL hands out ids before commit, so two writers can commit out of order; a hole
        that stays longer than the grace is a rolled-back or deleted row, and is passed over.
        """
        expected = self.cursor
        for index, row in enumerate(rows):
            assert expected is not None
            if row["id"] != expected + 1:
                now = time.monotonic()
                if self._gap_since is None:
                    self._gap_since = now
                if now - self._gap_since < self.gap_grace_s:
                    return rows[:index]
            expected = row["id"]
        self._gap_since = None
        return rows

    def status(self) -> dict[str, Any]:
        return {
            "connected_clients": len(self.clients),
            "client_ids": list(self.clients),
            "client_filters": {
                cid: {
                    **c.filter.as_dict(),
                    "user": c.user,
                    "connected_at": c.connected_at,
                    "queued": len(c.queue),
                }
                for cid, c in self.clients.items()
            },
            "scope": {
                "process": os.getpid(),
                "host": socket.gethostname(),
                "note": "clients of this web process only; each process serves and counts its own",
            },
        }


def _with_connection(fn: Any, *args: Any) -> Any:
    close_old_connections()  # drop a connection the database closed or that outlived CONN_MAX_AGE
    return fn(*args)


def _max_id() -> int:
    last = WorkflowMessage.objects.order_by("-id").values_list("id", flat=True).first()
    return int(last or 0)


def _rows_after(cursor: int, limit: int) -> list[dict[str, Any]]:
    return list(
        WorkflowMessage.objects.filter(id__gt=cursor).order_by("id").values(*_ROW_FIELDS)[:limit]
    )


def _replay(
    stream_filter: StreamFilter, after: int, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    rows = list(
        stream_filter.queryset()
        .filter(id__gt=after)
        .order_by("id")
        .values(*_ROW_FIELDS)[: limit + 1]
    )
    return rows[:limit], len(rows) > limit


_hub: StreamHub | None = None


def hub() -> StreamHub:
    """This process's hub (made on first use, in the event loop that serves the streams)."""
    global _hub
    if _hub is None:
        _hub = StreamHub(poll_s=get_settings().monitor.stream_poll_s)
    return _hub


def current_hub() -> StreamHub | None:
    """This process's hub if a stream was ever opened here (for the metrics), without making one."""
    return _hub


async def _authenticated_user(request: HttpRequest) -> str | None:
    """The user name of a valid token (``Authorization: Token <key>``) or session; None otherwise.

    The lookup runs on the hub's database thread: its connection is kept and reused. (A query made
    in the request's own context would open a connection there that, with persistent connections, is
    not closed at the end of the request.)
    """
    name: str = await hub().db(_user_name, request)
    return name


def _user_name(request: HttpRequest) -> str | None:
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "token" or not key.strip():
            return None
        from rest_framework.authtoken.models import Token

        token = Token.objects.select_related("user").filter(key=key.strip()).first()
        return token.user.get_username() if token and token.user.is_active else None
    user = request.user
    return user.get_username() if user.is_authenticated else None


def _unauthorized() -> JsonResponse:
    response = JsonResponse(
        {
            "detail": "Authentication credentials were not provided or are not valid: "
            "send 'Authorization: Token <key>' or log in."
        },
        status=401,
    )
    response["WWW-Authenticate"] = "Token"
    return response


@require_GET
async def message_stream(request: HttpRequest) -> HttpResponseBase:
    """Server-Sent Events of every recorded message matching the filters (see the module)."""
    user = await _authenticated_user(request)
    if user is None:
        return _unauthorized()
    try:
        stream_filter = StreamFilter.from_query(request.GET)
    except FilterError as exc:
        return JsonResponse({"detail": str(exc)}, status=400)
    last_event_id = request.headers.get("Last-Event-ID", "").strip()
    after: int | None = None
    if last_event_id:
        if not last_event_id.isdigit() or len(last_event_id) > 18:
            return JsonResponse(
                {"detail": f"Last-Event-ID: {last_event_id[:40]!r} is not an event id"}, status=400
            )
        after = int(last_event_id)
    config = get_settings().monitor
    client = StreamClient(filter=stream_filter, buffer=config.stream_client_buffer, user=user)
    response = StreamingHttpResponse(
        _events(client, after, config.stream_heartbeat_s, config.stream_replay_max),
        content_type="text/event-stream",
    )
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the events back
    return response


async def _events(
    client: StreamClient, after: int | None, heartbeat_s: float, replay_max: int
) -> AsyncIterator[bytes]:
    the_hub = hub()
    await the_hub.add(
        client
    )  # live events queue up from here on; the replay below covers what came before
    try:
        yield sse(
            "connected",
            json.dumps(
                {
                    "client_id": client.client_id,
                    "status": "connected",
                    "filters": client.filter.as_dict(),
                }
            ),
        )
        sent = -1
        if after is not None:
            rows, truncated = await the_hub.db(_replay, client.filter, after, replay_max)
            for row in rows:
                yield message_event(row)
                sent = row["id"]
            if truncated:
                yield sse(
                    "dropped",
                    json.dumps(
                        {
                            "dropped": None,
                            "first_dropped_id": sent + 1,
                            "reason": f"more than {replay_max} events missed since Last-Event-ID "
                            f"{after}: the rest is in /api/workflow-messages/",
                        }
                    ),
                )
        last_write = time.monotonic()
        while True:
            notice = client.take_dropped()
            if notice:
                yield notice
            while client.queue:
                event_id, payload = client.queue.popleft()
                if event_id > sent:
                    yield payload
                    sent = event_id
                    last_write = time.monotonic()
            client.wakeup.clear()
            if client.queue or client.dropped:
                continue
            remaining = heartbeat_s - (time.monotonic() - last_write)
            if remaining <= 0:
                yield sse("heartbeat", json.dumps({"timestamp": _now()}))
                last_write = time.monotonic()
                continue
            try:
                await asyncio.wait_for(client.wakeup.wait(), remaining)
            except TimeoutError:
                pass
    finally:
        the_hub.remove(client)


@require_GET
async def stream_status(request: HttpRequest) -> HttpResponse:
    """``{connected_clients, client_ids, client_filters}`` of this web process (``scope`` says
    which).
    """
    if await _authenticated_user(request) is None:
        return _unauthorized()
    return JsonResponse(hub().status())

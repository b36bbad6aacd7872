"""A TCP proxy that injects network faults between a client and a service, for tests.

The client connects to the proxy's port instead of the service's; the proxy
forwards bytes both ways, until told otherwise:

``stall()``
    The connections open now are black-holed: the proxy keeps both sockets
    open but stops forwarding in both directions (it stops reading, so
    nothing it holds is lost and nothing arrives either). Neither end sees
    an error: this is a half-open connection, as when a peer freezes or a
    stateful middlebox forgets the connection. New connections still go
    through (the network is fine, that connection is not), unless
    ``new_connections=True``: then they are accepted and black-holed too (a
    whole partition).
``cut()``
    Every current connection is closed, and new ones are refused (nothing
    listens on the port), as when the service goes away.
``restore()``
    Back to forwarding: new connections are accepted again, black-holed
    ones resume (whatever was held moves on; an end that gave up meanwhile
    sees its peer's close).

The proxy runs an asyncio loop in a background thread; its methods may be
called from any thread and return once the change is in effect.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

__all__ = ["FaultProxy", "LinkInfo"]

T = TypeVar("T")
Mode = Literal["pass", "stall", "cut"]


@dataclass
class LinkInfo:
    """One proxied connection, for tests: when it came and went, and the upstream socket's local
    port.
    """

    id: int
    accepted_at: float  # time.monotonic()
    client_port: int = 0  # the client's port (its end of the connection to the proxy)
    upstream_port: int = (
        0  # the proxy's local port towards the service (the service sees this peer)
    )
    closed_at: float | None = None
    stalled: bool = False
    bytes_up: int = 0  # client -> service
    bytes_down: int = 0  # service -> client


class _Side(asyncio.Protocol):
    """One end of a link: the client's connection to the proxy, or the proxy's to the service."""

    def __init__(self, link: _Link, upstream: bool) -> None:
        self.link = link
        self.upstream = upstream
        self.transport: asyncio.Transport | None = None
        self.flow_paused = False  # the other side's write buffer is full: do not read more
        self.reading_paused = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.link.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.link.forward(self, data)

    def eof_received(self) -> bool:
        self.link.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()

    def pause_writing(self) -> None:
        other = self.link.other(self)
        if other is not None:
            other.flow_paused = True
            other.update_reading()

    def resume_writing(self) -> None:
        other = self.link.other(self)
        if other is not None:
            other.flow_paused = False
            other.update_reading()

    # reading follows flow control and the link's stall

    def update_reading(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        paused = self.flow_paused or self.link.stalled
        if paused and not self.reading_paused:
            transport.pause_reading()
        elif not paused and self.reading_paused:
            transport.resume_reading()
        self.reading_paused = paused


class _Link:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy, info: LinkInfo, stalled: bool) -> None:
        self.proxy = proxy
        self.info = info
        self.stalled = stalled
        self.client = _Side(self, upstream=False)
        self.up: _Side | None = None
        self.connecting = False
        self.closed = False
        self.early: list[bytes] = []  # from the client before the upstream connection is made
        self.held: dict[bool, list[bytes]] = {True: [], False: []}  # read just as a stall began

    def other(self, side: _Side) -> _Side | None:
        return self.up if side is self.client else self.client

    def side_made(self, side: _Side) -> None:
        if self.closed:
            assert side.transport is not None
            side.transport.abort()
            return
        if side is self.client:
            peer = side.transport.get_extra_info("peername") if side.transport else None
            if isinstance(peer, tuple):
                self.info.client_port = int(peer[1])
            side.update_reading()
            if not self.stalled:
                self.connect_upstream()
        else:
            local = side.transport.get_extra_info("sockname") if side.transport else None
            if isinstance(local, tuple):
                self.info.upstream_port = int(local[1])
            assert side.transport is not None
            for data in self.early:
                side.transport.write(data)
            self.early.clear()
            side.update_reading()

    def connect_upstream(self) -> None:
        if self.connecting or self.up is not None or self.closed:
            return
        self.connecting = True
        self.proxy._spawn(self._connect())

    async def _connect(self) -> None:
        proxy = self.proxy
        try:
            await proxy._loop.create_connection(
                lambda: self._make_up(), proxy.target_host, proxy.target_port
            )
        except OSError:
            self.close()  # the service does not answer: the client sees its connection closed

    def _make_up(self) -> _Side:
        self.up = _Side(self, upstream=True)
        return self.up

    def forward(self, src: _Side, data: bytes) -> None:
        if self.closed:
            return
        to_up = src is self.client
        if to_up:
            self.info.bytes_up += len(data)
        else:
            self.info.bytes_down += len(data)
        if self.stalled:
            self.held[to_up].append(data)
            return
        dst = self.other(src)
        if dst is None or dst.transport is None:
            self.early.append(data)
            return
        dst.transport.write(data)

    def set_stalled(self, stalled: bool) -> None:
        if self.closed or stalled == self.stalled:
            return
        self.stalled = stalled
        self.info.stalled = stalled
        if not stalled:
            for to_up, chunks in self.held.items():
                dst = self.up if to_up else self.client
                if dst is not None and dst.transport is not None:
                    for data in chunks:
                        dst.transport.write(data)
                elif to_up:
                    self.early.extend(chunks)
                chunks.clear()
            self.connect_upstream()
        for side in (self.client, self.up):
            if side is not None:
                side.update_reading()

    def close(self, *, abort: bool = False) -> None:
        """Close both ends (``abort``: at once, dropping whatever is unsent)."""
        if self.closed:
            return
        self.closed = True
        self.info.closed_at = time.monotonic()
        for side in (self.client, self.up):
            if side is not None and side.transport is not None:
                if abort:
                    side.transport.abort()
                else:
                    side.transport.close()
        self.proxy._links.discard(self)


class FaultProxy:
    """Forwards ``listen_host:listen_port`` (default a free port) to ``target_host:target_port``.

    Use as a context manager, or :meth:`start` and :meth:`close`.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.host = listen_host
        self._requested_port = listen_port
        self.port = listen_port
        self.mode: Mode = "pass"
        self._stall_new = False
        self._links: set[_Link] = set()
        self._ids = itertools.count(1)
        self.links: list[LinkInfo] = []  # every connection ever accepted, in order
        self._server: asyncio.base_events.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="fault-proxy", daemon=True
        )
        self._thread.start()
        self._call(self._listen())
        return self

    def close(self) -> None:
        if self._thread is None:
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    # ------------------------------------------------------------------ faults

    def stall(self, *, new_connections: bool = False) -> None:
        """Black-hole every open connection (and with ``new_connections``, the ones to come)."""
        self._call(self._stall(new_connections))

    def cut(self) -> None:
        """Close every open connection and refuse new ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Forward again: listen, and resume black-holed connections."""
        self._call(self._restore())

    # ------------------------------------------------------------------ introspection

    @property
    def accepted(self) -> int:
        """How many connections were accepted so far."""
        with self._lock:
            return len(self.links)

    @property
    def open_links(self) -> list[LinkInfo]:
        with self._lock:
            return [info for info in self.links if info.closed_at is None]

    def wait_accepted(self, count: int, timeout: float) -> LinkInfo:
        """Wait until ``count`` connections have been accepted; the last one."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.links) >= count:
                    return self.links[count - 1]
            time.sleep(0.02)
        raise TimeoutError(
            f"{self.accepted} connections accepted, not {count}, within {timeout:g} s"
        )

    # ------------------------------------------------------------------ internals (loop thread)

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self) -> None:
        if self._server is not None:
            return
        self._server = await self._loop.create_server(
            self._accept, self.host, self.port or self._requested_port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _accept(self) -> _Side:
        info = LinkInfo(next(self._ids), time.monotonic())
        stalled = self.mode == "stall" and self._stall_new
        info.stalled = stalled
        link = _Link(self, info, stalled)
        self._links.add(link)
        with self._lock:
            self.links.append(info)
        return link.client

    async def _stall(self, new_connections: bool) -> None:
        self.mode = "stall"
        self._stall_new = new_connections
        for link in list(self._links):
            link.set_stalled(True)

    async def _cut(self) -> None:
        self.mode = "cut"
        if self._server is not None:
            self._server.close()  # the listening socket closes now: connections are refused
            self._server = None
        for link in list(self._links):
            link.close(abort=True)

    async def _restore(self) -> None:
        self.mode = "pass"
        self._stall_new = False
        await self._listen()
        for link in list(self._links):
            link.set_stalled(False)

    async def _shutdown(self) -> None:
        await self._cut()
        for task in list(self._tasks):
            task.cancel()
        for _ in range(3):  # let the aborted transports close their sockets before the loop stops
            await asyncio.sleep(0)

"""The embedded STOMP broker: pure asyncio, standard library only.

The default broker for one machine (production uses ActiveMQ). What it does,
and where and why it follows ActiveMQ Classic, is in docs/broker.md. The
modules, one concept each:

* :mod:`.frames`: the wire format (parsing, encoding, limits, errors);
* :mod:`.selectors`: SUBSCRIBE selectors (ActiveMQ parity);
* :mod:`.destinations`: messages, subscriptions, topics, queues;
* :mod:`.durable`: durable subscriptions;
* :mod:`.routing`: which destinations a message goes to, acks;
* :mod:`.protocol`: what each client frame does;
* :mod:`.connection`: one connection's transport, flow control and heart-beats;
* :mod:`.store`: the journal; :mod:`.admin`: asking a broker for its statistics;
* this module: the :class:`Broker` (a router listening on a socket) and :func:`run`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import ssl
from pathlib import Path
from typing import Any

from swf_testbed.broker.connection import Connection
from swf_testbed.broker.destinations import (
    TOPIC,
    Queue,
    topic_matches,
    wildcard_pattern,
)
from swf_testbed.broker.frames import Limits, ProtocolError
from swf_testbed.broker.routing import Router
from swf_testbed.broker.selectors import SelectorError, compile_selector
from swf_testbed.broker.store import Journal, JournalError

__all__ = [
    "Broker",
    "Limits",
    "ProtocolError",
    "SelectorError",
    "compile_selector",
    "run",
    "topic_matches",
]

log = logging.getLogger("swf_testbed.broker")


class Broker(Router):
    """The STOMP broker. ``await start()``, then ``await stop()``.

    ``port=0`` binds a free port; :attr:`port` tells which. ``limits`` bounds
    frames (:class:`Limits`); the keyword options tune flow control:

    * ``max_pending_bytes``: most bytes that may wait for one connection
      before it is closed as a slow consumer;
    * ``slow_consumer_timeout``: seconds producers wait for a backed-up topic
      subscriber before it is closed as a slow consumer (0: wait forever, as
      ActiveMQ does);
    * ``write_buffer_high`` / ``write_buffer_low``: per-connection write
      buffer marks (flow control starts above high, stops below low);
    * ``queue_prefetch`` / ``topic_prefetch`` / ``durable_prefetch``: default
      ``activemq.prefetchSize`` (queues, topics, durable topic subscriptions);
    * ``durable_max_messages`` / ``durable_max_bytes``: bound of the backlog
      of each durable subscription (past it the oldest messages are dropped);
    * ``connect_timeout``: seconds to wait for CONNECT (0: forever);
    * ``close_grace``: seconds a closing connection gets to take its last
      frames before it is aborted;
    * ``data_dir``: keep ``persistent:true`` messages of queues and durable
      subscriptions in a journal there (written and synced before the
      RECEIPT of their SEND, replayed on start, marked ``redelivered:true``),
      and the durable subscriptions themselves; None: memory only;
    * ``queue_memory_limit``: bytes of messages one queue holds in memory;
      past it persistent messages wait in the journal only, others are
      refused (ERROR);
    * ``mirror_queues``: publish a copy of every queue message on the topic
      ``VirtualTopic.Mirror.<queue>`` (ActiveMQ's ``useMirroredQueues``).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 61613,
        login: str | None = None,
        passcode: str | None = None,
        limits: Limits | None = None,
        *,
        max_pending_bytes: int = 64 * 1024 * 1024,
        slow_consumer_timeout: float = 10.0,
        write_buffer_high: int = 1024 * 1024,
        write_buffer_low: int = 256 * 1024,
        queue_prefetch: int = 1000,
        topic_prefetch: int = 32766,
        durable_prefetch: int = 100,
        durable_max_messages: int = 1_000_000,
        durable_max_bytes: int = 512 * 1024 * 1024,
        connect_timeout: float = 30.0,
        close_grace: float = 2.0,
        ssl_context: ssl.SSLContext | None = None,
        mirror_queues: bool = True,
        data_dir: Path | None = None,
        queue_memory_limit: int = 64 * 1024 * 1024,
    ) -> None:
        super().__init__(mirror_queues=mirror_queues)
        self.data_dir = Path(data_dir) if data_dir is not None else None
        self.queue_memory_limit = queue_memory_limit
        self._page_waiting: set[Queue] = set()  # queues to page in once the group is committed
        self.journal_durables = True  # keep data_dir/durables.json up to date
        self._commit_scheduled = False
        self._awaiting_commit: list[tuple[Connection, str]] = []  # receipts held until the fsync
        self.host = host
        self.ssl_context = ssl_context
        self._requested_port = port
        self.login = login
        self.passcode = passcode
        self.limits = limits or Limits()
        self.max_pending_bytes = max_pending_bytes
        self.slow_consumer_timeout = slow_consumer_timeout
        self.current: Connection | None = None  # whose frame is being handled (for flow control)
        self.write_buffer_high = write_buffer_high
        self.write_buffer_low = write_buffer_low
        self.queue_prefetch = queue_prefetch
        self.topic_prefetch = topic_prefetch
        self.durable_prefetch = durable_prefetch
        self.durable_max_messages = durable_max_messages
        self.durable_max_bytes = durable_max_bytes
        self.connect_timeout = connect_timeout
        self.close_grace = close_grace
        self.token = "ID-swf-" + secrets.token_hex(4)
        self.conn_serial = 0
        self.clients: dict[str, Connection] = {}  # client-id -> its connection
        self.conns: set[Connection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._dirty: list[Connection] = []
        self._flush_scheduled = False
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by start()

    @property
    def port(self) -> int:
        """The port actually bound (after :meth:`start`), else the one asked for."""
        if self._server is not None and self._server.sockets:
            return int(self._server.sockets[0].getsockname()[1])
        return self._requested_port

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        if self.data_dir is not None and self.journal is None:
            self._restore_durables()
            self._replay(Journal(self.data_dir / "journal"))
        self._server = await self.loop.create_server(
            lambda: Connection(self),
            self.host,
            self._requested_port,
            reuse_address=True,
            backlog=1024,
            ssl=self.ssl_context,
        )

    async def stop(self) -> None:
        """Stop accepting, close every connection, wait (briefly) for them to go."""
        self.stopping = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.conns):
            conn.shutdown()
        deadline = self.loop.time() + self.close_grace
        while self.conns and self.loop.time() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.abort()
        await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self.clear()
        self.clients.clear()
        if self.journal is not None:
            self.journal.close()
            self.journal = None

    def _replay(self, journal: Journal) -> None:
        """Open the journal; unacknowledged messages go back where they were, in order, redelivered.

        Messages past a queue's memory limit or a durable backlog's bound stay in the
        journal (paged); messages of a durable subscription that no longer exists are dropped.
        """
        stored = journal.open(load_bodies=False)
        self.journal = journal  # the messages below are acknowledged in it if need be
        durables = {d.journal_key: d for d in self.durables.values()}
        orphans = 0
        for m in stored:
            if m.kind == TOPIC:
                durable = durables.get(m.destination.rpartition("\x00")[0])
                if durable is None:
                    journal.ack(m.seq)
                    orphans += 1
                    continue
                durable.restore(m, journal)
                continue
            queue = self.queues.get(m.destination)
            if queue is None:
                queue = self.queues[m.destination] = Queue(m.destination, self)
            queue.restore(m, journal)
        journal.commit()
        log.info(
            "journal %s: %d unacknowledged message(s) replayed%s%s",
            journal.directory,
            len(stored) - orphans,
            f", {journal.torn_records} torn record skipped" if journal.torn_records else "",
            f", {orphans} of removed durable subscriptions dropped" if orphans else "",
        )

    # -- the durable subscriptions themselves, kept in data_dir/durables.json

    def _durables_file(self) -> Path | None:
        return None if self.data_dir is None else self.data_dir / "durables.json"

    def _restore_durables(self) -> None:
        path = self._durables_file()
        if path is None or not path.exists():
            return
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            log.error("cannot read %s (%s): durable subscriptions not restored", path, exc)
            return
        restoring, self.journal_durables = self.journal_durables, False
        try:
            for e in entries:
                text = e.get("selector")
                try:
                    selector = self.selector(text) if text else None
                    pattern = wildcard_pattern(e["topic"])
                except (SelectorError, ValueError) as exc:
                    log.error("durable subscription %s: not restored (%s)", e, exc)
                    continue
                self.durable_for(
                    e["client_id"], e["name"], e["topic"], pattern, text or None, selector
                )
        finally:
            self.journal_durables = restoring
        log.info("%s: %d durable subscription(s) restored", path, len(self.durables))

    def durables_changed(self) -> None:
        path = self._durables_file()
        if path is None or not self.journal_durables:
            return
        entries = [
            {
                "client_id": d.client_id,
                "name": d.sub_name,
                "topic": d.topic_name,
                "selector": d.selector_text,
            }
            for d in self.durables.values()
        ]
        tmp = path.with_suffix(".tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "w") as f:
                json.dump(entries, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            log.error("cannot write %s: %s (durable subscriptions not kept on disk)", path, exc)

    # -- group commit: one fsync per batch of events; receipts of what it covers after it

    def schedule_commit(self) -> None:
        if not self._commit_scheduled:
            self._commit_scheduled = True
            self.loop.call_soon(self._commit)

    def defer_receipt(self, conn: Connection, receipt: str) -> None:
        """``receipt`` confirms journaled data: send it once the group is on disk."""
        self._awaiting_commit.append((conn, receipt))
        self.schedule_commit()

    def _commit(self) -> None:
        self._commit_scheduled = False
        waiting = self._awaiting_commit
        self._awaiting_commit = []
        assert self.journal is not None
        try:
            self.journal.commit()
        except JournalError as exc:
            log.error("%s", exc)
            for conn in {c for c, _ in waiting}:
                conn.fail("journal write failed", f"the message was not stored: {exc}")
            return
        for conn, receipt in waiting:
            if not conn.closing:
                conn.send_receipt(receipt)
        if self._page_waiting:
            queues = list(self._page_waiting)
            self._page_waiting.clear()
            for queue in queues:
                queue.dispatch()

    def page_after_commit(self, queue: Queue) -> None:
        self._page_waiting.add(queue)
        self.schedule_commit()

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    # -- output batching: what is written while handling one batch of events goes out in one write

    def schedule_flush(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        dirty = self._dirty
        self._dirty = []
        for conn in dirty:
            conn.flush()

    # -- introspection (tests, status)

    def stats(self) -> dict[str, Any]:
        held = (
            sum(q.held for q in self.queues.values())
            + sum(d.nbytes for d in self.durables.values())
            + sum(c.pending_bytes for c in self.conns)
        )
        journal = self.journal
        return {
            "connections": len(self.conns),
            **super().stats(),
            "held_bytes": held,
            "rss_bytes": _rss(),
            "queue_memory_limit": self.queue_memory_limit,
            "journal": None
            if journal is None
            else {
                "directory": str(journal.directory),
                "bytes": journal.size(),
                "segments": len(journal.segments()),
            },
        }


def _rss() -> int:
    """Resident memory of this process, bytes (0 when it cannot be read)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 -- a statistic, never a reason to fail
        return 0


# =========================================================================== running it


def _configure_logging(level: int | str = logging.INFO) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if log.level == logging.NOTSET and root.level > logging.INFO:
        log.setLevel(logging.INFO)


async def _serve(broker: Broker, metrics: tuple[str, int] | None = None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread, or no signals here
            pass
    await broker.start()
    log.info("swf-testbed broker listening on %s:%d", broker.host, broker.port)
    if metrics is not None:  # Prometheus figures of broker.stats() on their own port
        from swf_testbed.broker.metrics import serve_metrics

        port = serve_metrics(broker, *metrics)
        log.info("broker metrics on http://%s:%d/metrics", metrics[0], port)
    try:
        await stop.wait()
    finally:
        log.info("swf-testbed broker stopping")
        await broker.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass


def server_tls_context(
    cert_file: str, key_file: str, client_ca_file: str | None = None
) -> ssl.SSLContext:
    """TLS for the broker: its certificate and key; with a CA, client certificates are required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    if client_ca_file:
        context.load_verify_locations(client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def run(
    host: str = "127.0.0.1",
    port: int = 61613,
    login: str | None = None,
    passcode: str | None = None,
    *,
    limits: Limits | None = None,
    metrics: tuple[str, int] | None = None,
    **options: Any,
) -> None:
    """Run the broker until SIGTERM or SIGINT, then close every connection and return.

    Logs ``swf-testbed broker listening on HOST:PORT`` once it accepts
    connections. Extra keyword options go to :class:`Broker`.
    """
    _configure_logging()
    broker = Broker(host, port, login, passcode, limits, **options)
    asyncio.run(_serve(broker, metrics))

"""The ingest: broker → database, every message exactly once.

It runs as its own process (``swf-testbed monitor ingest`` or
``manage.py ingest``), never inside the web workers.

* It subscribes to every testbed topic of every namespace: the run topic
  and the wildcard ``/topic/swf.>`` (heartbeats, each namespace's topics),
  the broker's queue mirrors ``/topic/VirtualTopic.Mirror.>`` (a copy of
  every message sent to any queue: the embedded broker by default, ActiveMQ
  with ``useMirroredQueues``), plus any extra destination.
* Topic subscriptions are durable (a stable client id, a subscription name
  per topic; ActiveMQ Classic, Artemis and the embedded broker), so messages
  sent while the ingest is down wait for it.
* Deliveries are handed from the receiver thread to the writer through a
  queue; the writer stores them in batches (at most ``batch_size`` messages,
  at most ``flush_ms`` after the first one of a batch) in one transaction,
  and acknowledges them only after that transaction committed. The
  subscriptions use ``client`` acknowledgement, where an ACK covers every
  earlier delivery of its subscription: batches are taken in the order the
  messages were received and written one after the other, so when a batch
  has committed, so has everything received before it, and one ACK per
  subscription and batch acknowledges exactly the committed messages. A crash before
  the commit loses nothing: the broker redelivers, and recording is
  idempotent on ``msg_id``.
* A database error (unavailable, locked) is retried with backoff, forever,
  holding the batch; a broker outage is the client's to heal (reconnect and
  resubscribe). Neither kills the process.
* A database that stops answering without an error (a frozen server, a
  half-open connection) would block a call forever: a watchdog drops the
  connection of a call that takes longer than ``db_timeout_s`` (PostgreSQL;
  SQLite has its busy timeout), which turns it into an error that is retried.
  Before the retry, the server-side sessions of the dropped connections are
  ended: the server cannot tell them from slow clients, and the transaction
  of one would hold the locks of the rows it inserted, blocking the retry of
  the same batch.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db import (
    DEFAULT_DB_ALIAS,
    DatabaseError,
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    connections,
)
from django.db.backends.base.base import BaseDatabaseWrapper

from swf_testbed.monitor.api.recording import Incoming, RecordResult, record, record_refused
from swf_testbed.monitor.metrics import observe_batch
from swf_testbed.mq.client import BrokerClient, Delivery
from swf_testbed.mq.destinations import ALL_TESTBED_TOPICS, Destination, mirrored_queue
from swf_testbed.retry import Backoff
from swf_testbed.settings import BrokerSettings

log = logging.getLogger(__name__)

DEFAULT_CLIENT_ID = "swf-monitor-ingest"


def destinations_for(extra: Iterable[Destination] = ()) -> list[Destination]:
    """Every destination the ingest follows: all testbed topics of all namespaces, and ``extra``.

    ``/topic/swf.>`` (a wildcard) covers heartbeats and every namespace's
    topics; ``/topic/VirtualTopic.Mirror.>`` the mirror topics where the
    broker copies each message sent to any queue (control, slices, dead
    letters, and queues of programs that are not ours): so the ingest sees
    every message once, without knowing the namespaces, and without taking
    anything from a queue's consumers. A mirrored message is recorded with
    its queue as destination.
    """
    unique: list[Destination] = []
    for dest in (*ALL_TESTBED_TOPICS, *extra):
        if dest not in unique:
            unique.append(dest)
    return unique


@dataclass
class IngestStats:
    received: int = 0
    stored: int = 0
    duplicates: int = 0
    invalid: int = 0
    projection_errors: int = 0
    batches: int = 0
    db_retries: int = 0
    acked: int = 0
    ack_skipped: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, result: RecordResult) -> None:
        self.stored += result.stored
        self.duplicates += result.duplicates
        self.invalid += result.invalid
        self.projection_errors += result.projection_errors


class DbWatchdog:
    """Drops the database connection of a call that has not returned within ``timeout_s``.

    A PostgreSQL server that stops answering without closing (frozen, or the
    connection half-open behind a dead middlebox) leaves the client waiting
    on its socket for ever; TCP keepalives do not help when the peer's kernel
    still answers. Shutting the socket down from this thread makes the
    waiting call fail at once with an error the caller retries.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.fired = 0
        self._abandoned: list[int] = []  # server pids of the connections dropped, still to end
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._block_timeout_s = timeout_s
        self._wrapper: BaseDatabaseWrapper | None = None
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def guard(self, timeout_s: float | None = None) -> Iterator[None]:
        """Watch the database calls of the current thread made inside the block (``timeout_s``: this
        block's)."""
        wrapper = connections[DEFAULT_DB_ALIAS]
        if self.timeout_s <= 0 or wrapper.vendor != "postgresql":
            yield
            return
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="ingest-db-watchdog", daemon=True
                )
                self._thread.start()
            self._block_timeout_s = timeout_s or self.timeout_s
            self._deadline = time.monotonic() + self._block_timeout_s
            self._wrapper = wrapper
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = None
                self._wrapper = None

    def _watch(self) -> None:
        while True:
            with self._cond:
                while self._deadline is None:
                    self._cond.wait()
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                wrapper, self._deadline, waited = self._wrapper, None, self._block_timeout_s
            if wrapper is not None:
                self._drop(wrapper, waited)

    def _drop(self, wrapper: BaseDatabaseWrapper, waited_s: float) -> None:
        raw = (
            wrapper.connection
        )  # the driver's connection; None while connecting (connect_timeout covers that)
        try:
            fd = raw.fileno() if raw is not None else -1
        except Exception:  # noqa: BLE001 - closed meanwhile: nothing to drop
            return
        if fd < 0:
            return
        self.fired += 1
        with contextlib.suppress(Exception):  # the pid is known once connected
            with self._cond:
                self._abandoned.append(int(raw.info.backend_pid))
        log.warning("the database has not answered for %g s; dropping the connection", waited_s)
        try:
            # shutdown (not close) on a duplicate: the call waiting on the socket fails now,
            # and the descriptor stays the driver's to close
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def end_abandoned(self) -> None:
        """End the server-side sessions of the connections dropped so far (call on a new
        connection).

        A frozen link leaves its session on the server, maybe idle in a
        transaction that holds row locks; ``idle_in_transaction_session_timeout``
        does not reliably end it (a session frozen in the middle of reading a
        message is never idle), so the ingest ends them itself. Only sessions
        of this database and role are touched.
        """
        with self._cond:
            pids, self._abandoned = self._abandoned, []
        if not pids:
            return
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE pid = ANY(%s) AND pid <> pg_backend_pid() "
                    "AND datname = current_database() AND usename = current_user",
                    [pids],
                )
                ended = cursor.fetchone()[0]
        except (OperationalError, InterfaceError):
            with self._cond:
                self._abandoned[:0] = (
                    pids  # the new connection failed too: try again on the next one
                )
            raise
        except DatabaseError as exc:
            log.warning(
                "cannot end the abandoned database sessions %s (%s); the server's timeout will",
                pids,
                exc,
            )
            return
        if ended:
            log.warning(
                "ended %d database session(s) of dropped connections (server pids %s)", ended, pids
            )


@dataclass(slots=True)
class _Item:
    delivery: Delivery
    received_at: datetime


class Ingestor:
    """Subscribes, batches, records, acknowledges. :meth:`run` until :meth:`stop`."""

    def __init__(
        self,
        broker: BrokerSettings,
        destinations: list[Destination],
        *,
        batch_size: int = 500,
        flush_ms: int = 5,
        durable: bool = True,
        client_id: str = DEFAULT_CLIENT_ID,
        max_db_backoff_s: float = 5.0,
        db_timeout_s: float = 30.0,
    ) -> None:
        self.destinations = destinations
        self.watchdog = DbWatchdog(db_timeout_s)
        self.batch_size = batch_size
        self.flush_s = flush_ms / 1000.0
        self.max_db_backoff_s = max_db_backoff_s
        self.durable = durable
        self.client = BrokerClient(
            broker, client_name=client_id, client_id=client_id if durable else None
        )
        self.stats = IngestStats()
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._subscribed = False
        self._unstored: set[int] = set()  # ids of this batch's Incoming that no write stored

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait: float | None = None) -> Ingestor:
        """Connect (retrying in the background) and subscribe to every destination."""
        self.client.start(wait=wait)
        if not self._subscribed:
            prefetch = max(self.batch_size * 2, 100)
            for dest in self.destinations:
                self.client.subscribe(
                    dest,
                    self._on_delivery,
                    ack="client",
                    prefetch=prefetch,
                    durable=self.durable and dest.is_topic,
                )
            self._subscribed = True
        log.info("ingest following %s", ", ".join(str(d) for d in self.destinations))
        return self

    def stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> None:
        """Write batches until :meth:`stop`; then write what is in hand, and disconnect."""
        try:
            while not self._stop.is_set():
                batch = self._next_batch(timeout=0.5)
                if batch:
                    self._write_and_ack(batch)
        finally:
            self.client.close()
            close_old_connections()
            connection.close()
            log.info("ingest stopped: %s", self.stats)

    # ------------------------------------------------------------------ receiving

    def _on_delivery(self, delivery: Delivery) -> None:
        # receiver thread: never block it
        self._queue.put(_Item(delivery, datetime.now(UTC)))

    def _next_batch(self, timeout: float) -> list[_Item]:
        """What is queued, up to ``batch_size``, waiting at most ``flush_s`` for more.

        The wait is short (5 ms by default): under load, deliveries pile up while the previous
        batch is written, so batches grow by themselves; at a low rate a longer wait would only add
        to every message's lag (at 100 ms it was half the real-time soak's p99 of 0.22 s).
        """
        try:
            first = self._queue.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.flush_s
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            try:
                batch.append(
                    self._queue.get(timeout=remaining)
                    if remaining > 0
                    else self._queue.get_nowait()
                )
            except queue.Empty:
                break
        return batch

    # ------------------------------------------------------------------ writing

    def _write_and_ack(self, batch: list[_Item]) -> None:
        incoming = [
            Incoming(
                body=item.delivery.body,
                headers=item.delivery.headers,
                destination=mirrored_queue(item.delivery.destination) or item.delivery.destination,
                received_at=item.received_at,
            )
            for item in batch
        ]
        self.stats.received += len(batch)
        self._unstored.clear()
        if not self._write(incoming):
            # stopping with the database still down: leave them unacknowledged, the broker
            # keeps them
            return
        self.stats.batches += 1
        deliveries = [
            item.delivery
            for item, sent in zip(batch, incoming, strict=True)
            if id(sent) not in self._unstored
        ]
        acked = self.client.ack_all(deliveries)
        self.stats.acked += acked
        self.stats.ack_skipped += (
            len(batch) - acked
        )  # their connection is gone: redelivered, and skipped

    def _write(self, incoming: list[Incoming]) -> bool:
        """Record the batch; retries database outages until it succeeds or the ingest stops."""
        delay = 0.1
        integrity_failures = 0
        cut_short = 0
        while True:
            fired = self.watchdog.fired
            try:
                # each time the watchdog cut this batch short, give it twice as long: a batch
                # that is merely slow (a loaded server, a large backlog) must get through, not
                # be dropped again and again
                self._record(incoming, self.watchdog.timeout_s * 2 ** min(cut_short, 5))
                return True
            except (OperationalError, InterfaceError) as exc:
                self.stats.db_retries += 1
                cut_short += self.watchdog.fired > fired
                log.warning(
                    "database unavailable (%s); retrying in %.1f s",
                    str(exc).strip() or type(exc).__name__,
                    delay,
                )
                self._drop_connection()
            except Exception as exc:  # noqa: BLE001 - never let one batch kill the ingest
                # Not an outage: a value or a race the batch cannot pass. Retry once (a
                # concurrent insert of the same msg_id resolves itself), then one by one.
                integrity_failures += 1
                self.stats.db_retries += 1
                self._drop_connection()
                if integrity_failures > 1:
                    log.warning("batch refused by the database (%s); recording one by one", exc)
                    return self._write_one_by_one(incoming)
                continue
            if self._stop.wait(delay):
                return False
            delay = min(delay * 2, self.max_db_backoff_s)

    def _write_one_by_one(self, incoming: list[Incoming]) -> bool:
        """Record each alone; one the database refuses is stored invalid with the reason.

        If even the invalid record cannot be stored, the message is left unacknowledged
        (``self._unstored``): the broker redelivers it, nothing is acked unstored.
        """
        for item in incoming:
            backoff = Backoff(0.1, self.max_db_backoff_s)
            while True:
                try:
                    self._record([item])
                    break
                except (OperationalError, InterfaceError):
                    self._drop_connection()
                    if backoff.wait(self._stop):
                        return False
                except Exception as exc:  # noqa: BLE001 - a body this database cannot store
                    self._drop_connection()
                    self._store_refused(item, exc)
                    break
        return True

    def _store_refused(self, item: Incoming, exc: Exception) -> None:
        reason = f"refused by the database: {str(exc).strip() or type(exc).__name__}"
        try:
            with self.watchdog.guard(None):
                close_old_connections()
                self.stats.add(record_refused(item, reason))
        except Exception as again:  # noqa: BLE001 - leave it unacked, it is redelivered
            log.error(
                "cannot store message from %s even as invalid (%s); left unacknowledged",
                item.destination,
                again,
            )
            self._drop_connection()
            self._unstored.add(id(item))

    def _record(self, incoming: list[Incoming], timeout_s: float | None = None) -> None:
        with self.watchdog.guard(timeout_s):
            close_old_connections()
            self.watchdog.end_abandoned()
            started = time.perf_counter()
            result = record(incoming)
            self.stats.add(result)
        observe_batch(
            (item.received_at for item in incoming), time.perf_counter() - started, result
        )

    @staticmethod
    def _drop_connection() -> None:
        try:
            connection.close()
        except DatabaseError:  # pragma: no cover - closing a broken connection
            pass

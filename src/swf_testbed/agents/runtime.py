"""The agent runtime: the base class every testbed agent subclasses.

An agent is a persistent service. It connects to the broker, subscribes to
its destinations, and hands every message to the handler registered for its
class (``@handles(StfReady)``, checked when the agent class is created; see
:func:`handles`, and :meth:`Agent.dispatch` for the call alone). Handlers
run in a bounded worker pool, never on the STOMP receiver thread, so a slow
handler never blocks heart-beats; by default messages of one subscription are
handled in order (one lane per subscription), and ``ordered=False`` lets a
subscription use every worker (competing-consumer work such as slices).

``durable=True`` (the agent option ``durable``) makes its topic subscriptions
durable, owned by the client id ``swf-agent-<namespace>-<name>``: messages
published while the agent is disconnected (a broker restart, a dropped
connection, the agent crashed) wait for it on the broker instead of being
missed. ActiveMQ keeps them across its own restart; the embedded broker does
not. A clean stop removes the subscriptions, so a stopped agent leaves no
backlog behind. The price: one connection per agent name (the broker refuses
a second with the same client id until it has let go of the first).

Failure policy, per message:

* not valid (bad JSON, unknown ``msg_type``, wrong fields) → reported in the
  log, sent to the dead-letter queue with the reason, acknowledged;
* another namespace → acknowledged and counted, not handled;
* the handler raises → retried (NACK where the broker redelivers on NACK,
  local retry where it does not, after ``retry_delay``, twice that, ...: a
  :class:`~swf_testbed.retry.Backoff`), and after ``max_attempts`` sent to the
  dead-letter queue and acknowledged. The connection stays up. The attempts
  are counted per message under a lock (pool threads and retry timers fail
  messages at the same time), for the last 10 000 failing messages.

Operational states: STARTING → READY ⇄ PROCESSING → EXITED, published in a
heartbeat every ``heartbeat_interval`` seconds and on every state change.
SIGTERM, SIGINT and SIGQUIT stop the agent gracefully within
``drain_timeout`` seconds; a second signal exits at once. Nothing happens at
import time.

Log records at ``log_level`` and above (WARNING by default; ``None``: none)
go to the monitor too: a handler on the root logger buffers them (at most
``log_buffer`` records; more are dropped and counted, the heartbeat counter
``log_records_dropped``) and a background thread sends them in ``log_batch``
messages on ``swf.<namespace>.logs`` (:mod:`swf_testbed.agents.logship`).
Neither a broker nor a monitor outage blocks or slows the agent. A record
logged while a handler runs carries that message's execution and run. The
handler is on the root logger: meant for one agent per process (``swf-testbed
agent run``); in a process running several agents, each one sends every record.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from swf_testbed.agents.handlers import Route, routes_of
from swf_testbed.agents.handlers import handles as handles  # re-exported: agents import it here
from swf_testbed.agents.logship import (
    DEFAULT_BUFFER_SIZE,
    DEFAULT_LOG_LEVEL,
    BrokerLogHandler,
    LogBuffer,
    LogShipper,
    level_number,
    logging_for,
)
from swf_testbed.messages import (
    MAX_BODY_BYTES,
    AgentStatus,
    DeadLetter,
    Heartbeat,
    LogBatch,
    Message,
    MessageError,
    OperationalState,
    parse_received,
    to_ours,
)
from swf_testbed.mq.client import BrokerClient, BrokerUnavailable, Delivery, Subscription
from swf_testbed.mq.destinations import DEAD_LETTER_QUEUE, HEARTBEAT_TOPIC, Destination, logs_topic
from swf_testbed.retry import Backoff
from swf_testbed.settings import BrokerSettings, get_settings

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

DEAD_LETTER_BODY_BYTES = MAX_BODY_BYTES // 8
"""Most of an original body a dead letter carries: it must stay under the body limit itself,
even when every byte becomes a 6-character JSON escape."""


@dataclass(frozen=True, slots=True)
class Listen:
    """A destination an agent listens on."""

    destination: Destination
    ordered: bool = True
    prefetch: int | None = None


class _Lanes:
    """Runs tasks on a shared pool, sequentially within a lane, lanes in parallel."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self._pool = pool
        self._lock = threading.Lock()
        self._queues: dict[str, deque[Callable[[], None]]] = {}
        self._running: set[str] = set()

    def submit(self, lane: str | None, task: Callable[[], None]) -> None:
        if lane is None:
            self._pool.submit(task)
            return
        with self._lock:
            self._queues.setdefault(lane, deque()).append(task)
            if lane in self._running:
                return
            self._running.add(lane)
        self._pool.submit(self._drain, lane)

    def _drain(self, lane: str) -> None:
        while True:
            with self._lock:
                queue = self._queues.get(lane)
                if not queue:
                    self._running.discard(lane)
                    return
                task = queue.popleft()
            try:
                task()
            except Exception:  # noqa: BLE001 - a task that raises must not end its lane for good
                log.exception("unexpected error handling a message")


class Agent:
    """Base class of every agent. Subclass, set ``agent_type``, override
    :meth:`listens_on`, and decorate handlers with :func:`handles`.
    """

    agent_type: ClassVar[str] = "agent"
    _handlers: ClassVar[dict[str, Route]] = {}
    _attempts_bound: ClassVar[int] = 10_000
    """How many failing messages the runtime remembers attempts of (the oldest are forgotten)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._handlers = routes_of(cls)  # raises HandlerError: a bad registration fails the import

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        broker: BrokerSettings | None = None,
        heartbeat_interval: float = 30.0,
        workers: int = 4,
        max_attempts: int = 3,
        retry_delay: float = 0.5,
        drain_timeout: float = 10.0,
        description: str = "",
        durable: bool = False,
        log_level: str | int | None = DEFAULT_LOG_LEVEL,
        log_buffer: int = DEFAULT_BUFFER_SIZE,
        log_flush_interval: float = 0.5,
    ) -> None:
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be > 0")
        if max_attempts < 1:
            raise ValueError("max_attempts must be >= 1")
        if retry_delay <= 0:
            raise ValueError("retry_delay must be > 0 (seconds)")
        if log_buffer < 1:
            raise ValueError("log_buffer must be >= 1 (records)")
        if log_flush_interval <= 0:
            raise ValueError("log_flush_interval must be > 0")
        self.log_level = None if log_level is None else level_number(log_level)
        self.log_buffer = LogBuffer(log_buffer)
        self.log_flush_interval = log_flush_interval
        self._log_handler: BrokerLogHandler | None = None
        self._log_shipper: LogShipper | None = None
        self.name = name
        self.namespace = namespace
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        self.instance_id = f"{name}-{self.hostname}-{self.pid}-{uuid.uuid4().hex[:6]}"
        self.heartbeat_interval = heartbeat_interval
        self.workers = workers
        self.max_attempts = max_attempts
        self.retry_delay = retry_delay
        # the local retry's schedule (brokers that do not redeliver a NACK): retry_delay, twice
        # that, ... up to the last retry before the dead letter
        self._retry_backoff = Backoff(
            initial=retry_delay, maximum=retry_delay * 2 ** (max_attempts - 1)
        )
        self.drain_timeout = drain_timeout
        self.description = description
        self.durable = durable
        self.client = BrokerClient(
            broker or get_settings().broker,
            client_name=name,
            on_state_change=self._on_mq_state,
            # durable topic subscriptions belong to a stable client id: one connection per
            # agent name
            client_id=f"swf-agent-{namespace}-{name}" if durable else None,
        )
        self.state = OperationalState.STARTING
        self.status = AgentStatus.OK
        self.counters: dict[str, int] = {
            "received": 0,
            "handled": 0,
            "failed": 0,
            "retried": 0,
            "dead_lettered": 0,
            "invalid": 0,
            "other_namespace": 0,
            "unhandled": 0,
            "sent": 0,
        }
        self._counter_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._in_flight = 0
        self._idle_since = time.monotonic()
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._accepting = threading.Event()
        self._pool: ThreadPoolExecutor | None = None
        self._lanes: _Lanes | None = None
        self._attempts: OrderedDict[str, int] = OrderedDict()  # failed attempts per message
        self._attempts_lock = threading.Lock()  # pool threads and retry timers change it
        self._subs: list[Subscription] = []
        self._thread: threading.Thread | None = None
        self._signals = 0

    # ------------------------------------------------------------------ to override

    def listens_on(self) -> Iterable[Listen | Destination]:
        """The destinations this agent subscribes to."""
        return ()

    def is_busy(self) -> bool:
        """True while the agent has work in hand beyond running handlers (e.g. an open run)."""
        return False

    def on_start(self) -> None:
        """Called once connected and subscribed, before READY."""

    def on_stop(self) -> None:
        """Called once handlers have drained, before EXITED is published."""

    # ------------------------------------------------------------------ helpers for handlers

    def message(self, cls: type[M], **fields: Any) -> M:
        """Build a message of this agent (namespace and sender filled in)."""
        fields.setdefault("namespace", self.namespace)
        fields.setdefault("sender", self.name)
        return cls(**fields)

    def send(self, destination: Destination, msg: Message, *, persistent: bool = True) -> None:
        """Send ``msg``, always in our strict schema (a v28 message is converted, or refused)."""
        self.client.send(destination, to_ours(msg), persistent=persistent, wait=False)
        self.count("sent")

    def count(self, counter: str, n: int = 1) -> None:
        with self._counter_lock:
            self.counters[counter] = self.counters.get(counter, 0) + n

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait: float | None = 30.0) -> Agent:
        """Connect, subscribe and become READY; returns once READY (in-process use)."""
        self._pool = ThreadPoolExecutor(
            max_workers=self.workers, thread_name_prefix=f"{self.name}-h"
        )
        self._lanes = _Lanes(self._pool)
        self._accepting.set()
        self.client.start(wait=wait)
        self._start_log_shipping()
        self.publish_heartbeat()  # STARTING
        for item in self.listens_on():
            listen = item if isinstance(item, Listen) else Listen(item)
            prefetch = listen.prefetch or max(4, self.workers * 4)
            lane = f"sub:{listen.destination}" if listen.ordered else None
            self._subs.append(
                self.client.subscribe(
                    listen.destination,
                    functools.partial(self._on_delivery, lane=lane),
                    ack="client-individual",
                    prefetch=prefetch,
                    durable=self.durable and listen.destination.is_topic,
                )
            )
        self.on_start()
        self._set_state(OperationalState.READY)
        self._thread = threading.Thread(
            target=self._heartbeat_loop, name=f"{self.name}-hb", daemon=True
        )
        self._thread.start()
        log.info("%s %s ready in namespace %s", self.agent_type, self.instance_id, self.namespace)
        return self

    def stop(self) -> None:
        """Ask the agent to stop; :meth:`wait` returns once it has."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._stopped.wait(timeout)

    def run(self) -> int:
        """Run until a stop signal: the entry point of an agent process. Returns the exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._on_signal)
        try:
            self.start(wait=None)
            while not self._stop.wait(0.5):
                pass
        finally:
            self.shutdown()
        if self._in_flight:
            # Handler threads cannot be interrupted and the interpreter would
            # wait for them at exit; their messages stay unacknowledged and the
            # broker redelivers them, so leaving now loses nothing.
            logging.shutdown()
            os._exit(0)
        return 0

    def shutdown(self) -> None:
        """Stop taking messages, drain handlers (bounded), publish EXITED, disconnect."""
        if self._stopped.is_set():
            return
        self._stop.set()
        self._accepting.clear()
        for sub in self._subs:
            self.client.unsubscribe(
                sub, forget=True
            )  # a clean stop leaves no durable backlog behind
        deadline = time.monotonic() + self.drain_timeout
        while self._in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._in_flight:
            log.warning(
                "%s: %d handlers still running after %.1f s; their messages stay unacknowledged "
                "and will be redelivered",
                self.name,
                self._in_flight,
                self.drain_timeout,
            )
        try:
            self.on_stop()
        except Exception:  # noqa: BLE001 -- a failing on_stop hook must not stop the shutdown
            log.exception("on_stop failed")
        self.status = AgentStatus.EXITED
        self._stop_log_shipping()
        self._set_state(OperationalState.EXITED, publish_timeout=2.0)
        self.client.close()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._stopped.set()
        log.info("%s %s exited", self.agent_type, self.instance_id)

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second signal: exiting now")
            os._exit(128 + signum)
        log.info("%s: %s received, stopping", self.name, signal.Signals(signum).name)
        self._stop.set()

    # ------------------------------------------------------------------ logs to the monitor

    def _start_log_shipping(self) -> None:
        if self.log_level is None or self._log_shipper is not None:
            return
        handler = BrokerLogHandler(self.log_buffer, self.log_level)
        shipper = LogShipper(
            self.log_buffer,
            self._send_log_batch,
            self._log_batch,
            flush_interval=self.log_flush_interval,
            name=f"{self.name}-logs",
        ).start()
        handler.ignored_thread = shipper.thread_ident
        root = logging.getLogger()
        if root.getEffectiveLevel() > self.log_level:
            # the root's level would stop these records before any handler: lower it, and keep
            # the handlers already there (the console, i.e. supervisord's log files) where they were
            for existing in root.handlers:
                if existing.level == logging.NOTSET:
                    existing.setLevel(root.getEffectiveLevel())
            root.setLevel(self.log_level)
        root.addHandler(handler)
        self._log_handler, self._log_shipper = handler, shipper

    def _stop_log_shipping(self) -> None:
        if self._log_handler is not None:
            logging.getLogger().removeHandler(self._log_handler)
        if self._log_shipper is not None:
            self._log_shipper.stop(timeout=2.0)  # sends what it holds, if the broker takes it

    def _log_batch(self, **fields: Any) -> LogBatch:
        return self.message(
            LogBatch,
            agent_name=self.name,
            agent_type=self.agent_type,
            instance_id=self.instance_id,
            pid=self.pid,
            hostname=self.hostname,
            **fields,
        )

    def _send_log_batch(self, batch: LogBatch) -> None:
        # a short wait: while the broker is away the records stay buffered (bounded);
        # nothing waits for it
        self.client.send(logs_topic(self.namespace), batch, persistent=False, timeout=1.0)

    # ------------------------------------------------------------------ state and heartbeats

    def heartbeat(self) -> Heartbeat:
        with self._counter_lock:
            counters = dict(self.counters)
        if self.log_level is not None:
            counters["log_records_dropped"] = self.log_buffer.dropped_total
        return self.message(
            Heartbeat,
            agent_name=self.name,
            agent_type=self.agent_type,
            instance_id=self.instance_id,
            pid=self.pid,
            hostname=self.hostname,
            operational_state=self.state,
            status=self.status,
            mq_connected=self.client.connected,
            interval_s=self.heartbeat_interval,
            description=self.description,
            counters=counters,
        )

    def publish_heartbeat(self, timeout: float = 2.0) -> bool:
        try:
            self.client.send(HEARTBEAT_TOPIC, self.heartbeat(), persistent=False, timeout=timeout)
            return True
        except BrokerUnavailable:
            return False

    def _set_state(self, state: OperationalState, publish_timeout: float = 2.0) -> None:
        with self._state_lock:
            if state == self.state:
                return
            self.state = state
        log.debug("%s → %s", self.name, state)
        self.publish_heartbeat(publish_timeout)

    def _refresh_state(self) -> None:
        if (
            self.state in (OperationalState.STARTING, OperationalState.EXITED)
            or self._stop.is_set()
        ):
            return
        busy = self._in_flight > 0 or self.is_busy()
        if busy:
            self._set_state(OperationalState.PROCESSING)
        elif time.monotonic() - self._idle_since >= 0.2:
            # back to READY only after a short idle spell, so that a stream of
            # messages does not flip the state (and publish) per message
            self._set_state(OperationalState.READY)

    def _heartbeat_loop(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_interval
        while not self._stop.wait(0.1):
            self._refresh_state()
            if time.monotonic() >= next_beat:
                self.publish_heartbeat()
                next_beat = time.monotonic() + self.heartbeat_interval

    def _on_mq_state(self, connected: bool) -> None:
        if connected and self.state is not OperationalState.STARTING:
            threading.Thread(target=self.publish_heartbeat, daemon=True).start()

    # ------------------------------------------------------------------ dispatch

    @classmethod
    def handled_types(cls) -> dict[str, type[Message]]:
        """The message types this agent class handles: ``msg_type`` → the class its handler gets."""
        return {msg_type: route.message for msg_type, route in cls._handlers.items()}

    def dispatch(self, msg: Message) -> bool:
        """Hand ``msg`` to the handler registered for its type, in this thread; False if none is.

        This is the step of the runtime that calls a handler, without the rest of the
        receiving path: no namespace filter, no acknowledgement, no retry and no dead
        letter. The handler's exception propagates. It runs, as on receipt, with ``msg``'s
        execution and run attached to the records it logs. Tests call it to drive an
        agent's handlers with real messages without a broker.
        """
        route = self._handlers.get(msg.msg_type)
        if route is None:
            return False
        if not isinstance(msg, route.message):
            raise TypeError(
                f"{type(self).__qualname__}.{route.method} handles {route.message.__name__}, "
                f"not {type(msg).__name__} (msg_type {msg.msg_type!r})"
            )
        with logging_for(msg.execution_id, msg.run_id):
            getattr(self, route.method)(msg)
        return True

    def _on_delivery(self, delivery: Delivery, lane: str | None) -> None:
        """Receiver thread: count and hand over, never block."""
        if not self._accepting.is_set() or self._lanes is None:
            return  # left unacknowledged: the broker redelivers it elsewhere or later
        self.count("received")
        with self._state_lock:
            self._in_flight += 1
        self._lanes.submit(lane, lambda: self._process(delivery))

    def _process(self, delivery: Delivery) -> None:
        try:
            if self.state is not OperationalState.PROCESSING:
                self._refresh_state()
            self._handle(delivery)
        finally:
            with self._state_lock:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle_since = time.monotonic()

    def _handle(self, delivery: Delivery) -> None:
        try:
            # tolerant on receipt: the ePIC v28 dialect too, its naive times read in
            # SWF_LEGACY_TIMEZONE
            msg = parse_received(
                delivery.body,
                zone=get_settings().legacy_zone,
                broker_message_id=delivery.message_id or "",
            )
        except MessageError as exc:
            self.count("invalid")
            log.warning(
                "%s: invalid message %s on %s: %s",
                self.name,
                delivery.message_id,
                delivery.destination,
                exc.detail,
            )
            self._dead_letter(delivery, f"{exc.reason}: {exc.detail}", attempts=1)
            return
        if msg.namespace != self.namespace:
            self.count("other_namespace")
            self.client.ack(delivery)
            return
        key = f"{delivery.subscription.destination}|{delivery.message_id}"
        try:
            handled = self.dispatch(msg)
        except Exception as exc:  # noqa: BLE001 - a handler must never take the agent down
            self._on_failure(delivery, key, msg, exc)
            return
        if not handled:
            self.count("unhandled")
            self.client.ack(delivery)
            return
        with self._attempts_lock:
            self._attempts.pop(key, None)
        self.client.ack(delivery)
        self.count("handled")

    def _count_attempt(self, key: str) -> int:
        """One more failed attempt of the message ``key``: its number (1 for the first).

        At ``max_attempts`` the message is forgotten (it is dead-lettered). Read, increment
        and bound happen under one lock: the pool's threads and the retry timers fail
        messages at the same time.
        """
        with self._attempts_lock:
            attempts = self._attempts.pop(key, 0) + 1
            if attempts < self.max_attempts:
                self._attempts[key] = attempts  # (re)inserted last: the newest
                while len(self._attempts) > self._attempts_bound:
                    self._attempts.popitem(last=False)
            return attempts

    def _on_failure(self, delivery: Delivery, key: str, msg: Message, exc: Exception) -> None:
        self.count("failed")
        attempts = self._count_attempt(key)
        error = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        if attempts >= self.max_attempts:
            log.error(
                "%s: %s %s failed %d times, dead-lettered: %s",
                self.name,
                msg.msg_type,
                msg.msg_id,
                attempts,
                error,
                extra={"execution_id": msg.execution_id, "run_id": msg.run_id},
            )
            self._dead_letter(delivery, error, attempts)
            return
        self.count("retried")
        log.warning(
            "%s: %s %s failed (attempt %d of %d), will retry: %s",
            self.name,
            msg.msg_type,
            msg.msg_id,
            attempts,
            self.max_attempts,
            error,
            extra={"execution_id": msg.execution_id, "run_id": msg.run_id},
        )
        if self.client.nack_redelivers:
            self.client.nack(delivery)
            return
        delay = self._retry_backoff.for_attempt(attempts)
        with self._state_lock:
            self._in_flight += 1  # the retry is work in hand: drain waits for it
        timer = threading.Timer(delay, self._retry, args=(delivery,))
        timer.daemon = True
        timer.start()

    def _retry(self, delivery: Delivery) -> None:
        """Timer thread: put a failed message back into the pool (its in-flight count is held)."""
        if self._pool is None or self._stop.is_set():
            with self._state_lock:
                self._in_flight -= 1
            return  # unacknowledged: the broker redelivers it after we disconnect
        try:
            self._pool.submit(self._process, delivery)
        except RuntimeError:  # pool shut down meanwhile
            with self._state_lock:
                self._in_flight -= 1

    def _dead_letter(self, delivery: Delivery, error: str, attempts: int) -> None:
        body = delivery.body
        if len(body) > DEAD_LETTER_BODY_BYTES:
            # an oversized body would make the dead letter itself too large to be a valid message
            error = (
                f"{error} (original body of {len(body)} bytes kept truncated to "
                f"{DEAD_LETTER_BODY_BYTES})"
            )
            body = body[:DEAD_LETTER_BODY_BYTES]
        letter = self.message(
            DeadLetter,
            original_destination=delivery.destination,
            original_headers={k: v for k, v in delivery.headers.items() if len(v) < 2000},
            original_body=body.decode("utf-8", "replace"),
            attempts=attempts,
            error=error[:10_000],
        )
        try:
            self.client.send(DEAD_LETTER_QUEUE, letter, timeout=10.0)
        except BrokerUnavailable:
            log.error(
                "%s: could not dead-letter %s; leaving it unacknowledged",
                self.name,
                delivery.message_id,
            )
            return
        self.count("dead_lettered")
        self.client.ack(delivery)

"""The STOMP client every testbed program uses, on top of stomp.py.

What it adds to stomp.py:

* settings (host, port, credentials, vhost, TLS) from one settings object;
* a supervisor thread that reconnects with exponential backoff and jitter
  whenever the connection drops (socket error, broker restart, missed
  heart-beats) and then re-subscribes *every* subscription;
* explicit topics and queues, spelled for the broker in use;
* deliveries that remember the connection they came on, so that an ACK is
  never sent on a connection that did not deliver the message (after a
  reconnect the broker redelivers it instead);
* sends that wait (boundedly) for the connection instead of failing at once;
* confirmed sends: a persistent send asks for a broker ``receipt`` and is
  done only once the receipt is in (the broker sends it once the message is
  in its journal). Unconfirmed sends are kept in an outbox; after a
  reconnect they are sent again, in their order, with the same headers (the
  same ``msg_id``), before anything new. ``send(wait=False)`` returns once
  the frame is written and blocks only while ``send_window`` sends await
  their receipts, so that a chain of agents is not one round trip per message;
* duplicates filtered on ``client-individual`` subscriptions: a message
  whose ``msg_id`` this subscription has handled already (a resent copy, or
  a redelivery after an ACK the broker lost in a crash) is acknowledged and
  not handed over again; a redelivered copy of one still being handled on
  an earlier connection waits for that one's outcome (:mod:`swf_testbed.mq.delivery`).

Message handlers are called on stomp.py's receiver thread and must return
quickly; :class:`swf_testbed.agents.runtime.Agent` hands them to a worker pool.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Literal

import stomp
from stomp.exception import StompException

from swf_testbed.messages import Message
from swf_testbed.mq.delivery import AckMode, Delivery, Duplicates, Handler, Subscription
from swf_testbed.mq.destinations import Destination, forget_frames, mirror_topic
from swf_testbed.mq.sending import BrokerUnavailable, SendRefused, Sent
from swf_testbed.retry import Backoff
from swf_testbed.settings import BrokerSettings, DestinationStyle, QueueMirror

__all__ = [
    "AckMode",
    "BrokerClient",
    "BrokerUnavailable",
    "Delivery",
    "Handler",
    "SendRefused",
    "Sent",
    "Subscription",
]

log = logging.getLogger(__name__)

DEFAULT_SEND_WINDOW = 256
"""Confirmed sends that may await their receipts at once (``send(wait=False)`` blocks beyond it)."""


class _Listener(stomp.ConnectionListener):  # type: ignore[misc]  # stomp.py has no type hints
    def __init__(self, client: BrokerClient, generation: int) -> None:
        self.client = client
        self.generation = generation
        self.connected = threading.Event()
        self.error = ""

    def on_connected(self, frame: stomp.utils.Frame) -> None:
        self.client.server = frame.headers.get("server", "")
        self.connected.set()

    def on_message(self, frame: stomp.utils.Frame) -> None:
        self.client._on_message(self.generation, frame)

    def on_receipt(self, frame: stomp.utils.Frame) -> None:
        self.client._on_receipt(frame.headers.get("receipt-id", ""))

    def on_error(self, frame: stomp.utils.Frame) -> None:
        self.error = (
            f"broker ERROR: {frame.headers.get('message', '')} {_short(frame.body)}".strip()
        )
        log.warning("%s", self.error)
        self.client._on_refused(frame.headers.get("receipt-id", ""), self.error)
        if not self.connected.is_set():
            self.connected.set()  # wakes the connect wait, which then fails with this error

    def on_heartbeat_timeout(self) -> None:
        log.warning("broker heart-beats missed; dropping the connection")

    def on_disconnected(self) -> None:
        self.client._on_disconnected(self.generation)


def _drop(conn: stomp.Connection, *, polite: bool) -> None:
    """Close a stomp.py connection without ever blocking for long."""
    try:
        if polite and conn.is_connected():
            conn.disconnect()
            deadline = time.monotonic() + 1.0
            while conn.is_connected() and time.monotonic() < deadline:
                time.sleep(0.01)
    except Exception:  # noqa: BLE001 - closing is best effort
        pass
    try:
        conn.transport.disconnect_socket()
    except Exception:  # noqa: BLE001 -- closing is best effort
        pass


def _no_delay(conn: stomp.Connection) -> None:
    """Send small frames (ACKs, replies) at once instead of waiting for the peer's delayed ACK.

    Without it an ACK after a send waits ~40 ms (Nagle's algorithm), which
    caps a prefetch-1 consumer at about 25 messages a second.
    """
    sock = getattr(conn.transport, "socket", None)
    if sock is None:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def _short(body: object, limit: int = 200) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    return text if len(text) <= limit else text[:limit] + "…"


class BrokerClient:
    """A long-lived, self-healing STOMP connection with several subscriptions.

    Call :meth:`start` once; the client then keeps itself connected until
    :meth:`close`. ``on_state_change(connected: bool)`` is called whenever the
    connection goes up or down.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        *,
        client_name: str = "swf-testbed",
        client_id: str | None = None,
        on_state_change: Callable[[bool], None] | None = None,
        send_window: int = DEFAULT_SEND_WINDOW,
    ) -> None:
        """``client_id``: a stable id, needed for durable subscriptions (one
        connection per id at a time; the broker refuses a second).
        ``send_window``: confirmed sends that may await their receipts at once."""
        if send_window < 1:
            raise ValueError("send_window must be >= 1")
        self.settings = settings
        self.client_name = client_name
        self.client_id = client_id
        self.on_state_change = on_state_change
        self.send_window = send_window
        self._subscriptions: dict[str, Subscription] = {}
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._conn: stomp.Connection | None = None
        self._generation = 0
        self._receipts: dict[str, threading.Event] = {}
        self._receipt_lock = threading.Lock()
        # unconfirmed sends by receipt id, in the order sent; never taken before self._lock
        self._outbox: OrderedDict[str, Sent] = OrderedDict()
        self._outbox_cond = threading.Condition(threading.Lock())
        self._duplicates = Duplicates()
        self._backoff = Backoff(settings.reconnect_initial_s, settings.reconnect_max_s, jitter=True)
        self._supervisor: threading.Thread | None = None
        self._stats_lock = threading.Lock()
        self._stats = dict.fromkeys(
            ("confirmed", "resent", "refused", "redelivered", "duplicates"), 0
        )
        self.server: str = ""
        self.reconnects = 0

    # ------------------------------------------------------------------ lifecycle

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def nack_redelivers(self) -> bool:
        """Whether this broker redelivers a NACKed message.

        ActiveMQ Classic treats a STOMP NACK as a poison acknowledgement and
        moves the message to its own DLQ; there the runtime retries locally.
        RabbitMQ requeues it: known from the ``rabbitmq`` destination style,
        not from its ``server`` header. The embedded broker says who it is.
        """
        if self.settings.destination_style is DestinationStyle.RABBITMQ:
            return True
        return self.server.startswith("swf-testbed/")

    @property
    def unconfirmed(self) -> int:
        """Confirmed sends still waiting for their receipts."""
        with self._outbox_cond:
            return len(self._outbox)

    def stats(self) -> dict[str, int]:
        """Counters: sends ``confirmed``, ``resent`` after a reconnect, ``refused`` by the broker;
        deliveries marked ``redelivered``, ``duplicates`` acknowledged without being handed over."""
        with self._stats_lock:
            return dict(self._stats, reconnects=self.reconnects, unconfirmed=self.unconfirmed)

    def _count(self, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self._stats[key] += n

    def start(self, wait: float | None = 30.0) -> BrokerClient:
        """Start the connection supervisor; with ``wait``, block until connected."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"{self.client_name}-mq", daemon=True
            )
            self._supervisor.start()
        if wait is not None and not self._connected.wait(wait):
            raise BrokerUnavailable(
                f"no STOMP broker answered at {self.settings.host}:{self.settings.port} "
                f"within {wait:g} s"
            )
        return self

    def flush(self, timeout: float | None = None) -> bool:
        """Wait for the receipts of every confirmed send; False if some still wait at timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._outbox_cond:
            while self._outbox:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._outbox_cond.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Wait (up to ``timeout``, while connected) for the receipts of what was sent, disconnect
        and stop reconnecting. Unacknowledged messages go back to the broker."""
        if self.connected and not self.flush(timeout):
            log.warning(
                "%s: closing with %d sends the broker has not confirmed",
                self.client_name,
                self.unconfirmed,
            )
        self._closing.set()
        self._wake.set()
        with self._lock:
            conn = self._conn
        if conn is not None:
            _drop(conn, polite=True)
        self._connected.clear()
        if self._supervisor is not None:
            self._supervisor.join(timeout)

    def __enter__(self) -> BrokerClient:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ subscriptions

    def subscribe(
        self,
        destination: Destination,
        handler: Handler,
        *,
        ack: AckMode = "client-individual",
        prefetch: int | None = None,
        durable: bool = False,
    ) -> Subscription:
        """Subscribe; the subscription survives reconnects.

        ``durable`` (topics, needs ``client_id``): the broker keeps the
        topic's messages for this subscription while it is disconnected.
        Topic names may use ActiveMQ wildcards: ``*`` one element, ``>`` the rest.
        On a ``client-individual`` subscription duplicates (by ``msg_id``) are
        acknowledged and not handed over (see the module's docstring).
        """
        durable_name = None
        if durable:
            if not self.client_id:
                raise ValueError("a durable subscription needs a client_id")
            if not destination.is_topic:
                raise ValueError(f"only topic subscriptions can be durable, not {destination}")
            durable_name = f"{self.client_id}:{destination.name}"
        sub = Subscription(destination, handler, ack, prefetch, durable_name)
        waiter = None
        with self._lock:
            self._subscriptions[sub.id] = sub
            conn = self._conn if self.connected else None
            if conn is not None:
                waiter = self._send_subscribe(conn, sub)
        # Wait for the broker's receipt: once subscribe() returns, nothing sent
        # to the destination afterwards is missed.
        if waiter is not None and not waiter.wait(self.settings.connect_timeout_s):
            log.warning(
                "no receipt for the subscription to %s; it may not be active yet", destination
            )
        return sub

    def unsubscribe(self, sub: Subscription, *, forget: bool = False) -> None:
        """Stop the subscription; ``forget``: a durable one is removed from the broker too
        (its backlog goes)."""
        with self._lock:
            sub.active = False
            self._subscriptions.pop(sub.id, None)
            conn = self._conn if self.connected else None
            if conn is not None:
                try:
                    if forget and sub.durable_name:
                        style = self.settings.destination_style
                        for headers in forget_frames(style, sub.durable_name):
                            conn.unsubscribe(id=sub.id, headers=headers)
                    else:
                        conn.unsubscribe(id=sub.id)
                except StompException:
                    pass

    def _send_subscribe(self, conn: stomp.Connection, sub: Subscription) -> threading.Event:
        style = self.settings.destination_style
        headers = sub.destination.subscribe_headers(
            style, prefetch=sub.prefetch, durable_name=sub.durable_name
        )
        waiter = self._expect_receipt(headers)
        conn.subscribe(
            destination=sub.destination.address(style), id=sub.id, ack=sub.ack, headers=headers
        )
        return waiter

    def _expect_receipt(self, headers: dict[str, str]) -> threading.Event:
        receipt_id = uuid.uuid4().hex
        headers["receipt"] = receipt_id
        waiter = threading.Event()
        with self._receipt_lock:
            self._receipts[receipt_id] = waiter
        return waiter

    # ------------------------------------------------------------------ acknowledgement

    def ack(self, delivery: Delivery) -> bool:
        """Acknowledge; False when the delivering connection is gone (the broker will redeliver).

        The message counts as handled all the same: a copy the broker delivers
        again (or delivered meanwhile) is acknowledged, not handed over.
        """
        parked = self._settle(delivery, handled=True)
        acked = self._ack_or_nack(delivery, "ack")
        for copy in parked:
            acked = self._ack_or_nack(copy, "ack") or acked
        return acked

    def nack(self, delivery: Delivery) -> bool:
        """Give the message back (the broker redelivers it, where it does so on NACK)."""
        # forgotten before the NACK: the broker may redeliver it before this call returns
        parked = self._settle(delivery, handled=False)
        nacked = self._ack_or_nack(delivery, "nack")
        for copy in parked:
            self._hand_over(copy)  # the one in hand failed: a copy that waited for it is handled
        return nacked

    def ack_all(self, deliveries: Sequence[Delivery]) -> int:
        """Acknowledge deliveries handled in the order received; returns how many were acknowledged.

        On a ``client`` subscription an ACK is cumulative (it covers every
        message the subscription delivered before it), so one frame for the
        last delivery of each subscription acknowledges them all; the caller
        must have handled every earlier delivery of those subscriptions.
        ``client-individual`` ones are acknowledged one by one. Deliveries of
        an earlier connection are not acknowledged (the broker redelivers them).
        """
        acked = 0
        with self._lock:
            conn, generation = self._conn, self._generation
            if conn is None:
                return 0
            last: dict[str, tuple[Delivery, int]] = {}
            for delivery in deliveries:
                mode = delivery.subscription.ack
                if mode == "auto":
                    acked += 1
                elif delivery.generation != generation:
                    continue
                elif mode == "client":
                    covered = last.get(delivery.subscription.id, (delivery, 0))[1]
                    last[delivery.subscription.id] = (delivery, covered + 1)
                elif self._send_ack(conn, delivery):
                    acked += 1
            for delivery, covered in last.values():
                if self._send_ack(conn, delivery):
                    acked += covered
        for delivery in deliveries:
            if delivery.subscription.ack == "client-individual":
                for copy in self._settle(delivery, handled=True):
                    self._ack_or_nack(copy, "ack")
        return acked

    @staticmethod
    def _send_ack(conn: stomp.Connection, delivery: Delivery) -> bool:
        try:
            conn.ack(delivery.ack_id, delivery.subscription.id)
            return True
        except StompException as exc:
            log.warning("ack of %s failed: %s", delivery.message_id, exc)
            return False

    def _ack_or_nack(self, delivery: Delivery, verb: Literal["ack", "nack"]) -> bool:
        if delivery.subscription.ack == "auto":
            return True
        with self._lock:
            conn = self._conn
            if conn is None or delivery.generation != self._generation:
                return False
            try:
                getattr(conn, verb)(delivery.ack_id, delivery.subscription.id)
                return True
            except StompException as exc:
                log.warning("%s of %s failed: %s", verb, delivery.message_id, exc)
                return False

    # ------------------------------------------------------------------ duplicates

    def _settle(self, delivery: Delivery, *, handled: bool) -> list[Delivery]:
        """The outcome of a delivery handed over; returns the copies that waited for it."""
        parked = self._duplicates.settle(delivery, handled=handled)
        if handled and parked:
            self._count("duplicates", len(parked))
        return parked

    def _hand_over(self, delivery: Delivery) -> None:
        sub = delivery.subscription
        if not sub.active:
            return
        verdict = self._duplicates.admit(delivery)
        if verdict == "parked":
            return
        if verdict == "duplicate":
            self._count("duplicates")
            log.info(
                "%s: %s on %s is a duplicate of msg_id %s (%s); acknowledged, not handled again",
                self.client_name,
                delivery.message_id,
                delivery.destination,
                delivery.msg_id,
                "redelivered" if delivery.redelivered else "a second copy",
            )
            self._ack_or_nack(delivery, "ack")
            return
        try:
            sub.handler(delivery)
        except Exception:  # noqa: BLE001 - a handler must never kill the receiver thread
            self._settle(delivery, handled=False)  # a later copy is handled, not parked for ever
            log.exception(
                "handler for %s raised; message %s left unacknowledged",
                sub.destination,
                delivery.message_id,
            )

    # ------------------------------------------------------------------ sending

    def send(
        self,
        destination: Destination,
        body: Message | bytes | str,
        *,
        headers: dict[str, str] | None = None,
        persistent: bool = True,
        receipt: bool | None = None,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> Sent | None:
        """Send one message; waits up to ``timeout`` for a connection (and for the receipt).

        ``receipt`` (default: ``persistent``): a confirmed send. With ``wait``
        it returns once the broker confirmed it (or raises); without, once
        it is written, blocking only while ``send_window`` sends await their
        receipts, and returns the :class:`Sent` to wait on. Until confirmed,
        it is sent again after every reconnect (same headers, same
        ``msg_id``: consumers may see it twice and drop the copy). Returns
        None for an unconfirmed send.

        A message to a queue is consumed by one receiver only; the monitor
        sees it on the queue's mirror topic, which the broker publishes
        (``VirtualTopic.Mirror.<queue>``: the embedded broker by default,
        ActiveMQ with ``useMirroredQueues``). On a broker without mirrored
        queues (``queue_mirror = client``, RabbitMQ's default) the client sends
        that copy itself, right after the message.
        """
        sent = self._send_one(destination, body, headers, persistent, receipt, wait, timeout)
        if not destination.is_topic and self.settings.mirror is QueueMirror.CLIENT:
            # a broker without mirrored queues (RabbitMQ): the copy the monitor reads
            mirror = mirror_topic(destination)
            self._send_one(mirror, body, headers, persistent, receipt, wait, timeout)
        return sent

    def _send_one(
        self,
        destination: Destination,
        body: Message | bytes | str,
        headers: dict[str, str] | None,
        persistent: bool,
        receipt: bool | None,
        wait: bool,
        timeout: float,
    ) -> Sent | None:
        deadline = time.monotonic() + timeout
        all_headers: dict[str, str] = {}
        if isinstance(body, Message):
            all_headers.update(
                {
                    "msg_type": body.msg_type,
                    "namespace": body.namespace,
                    "msg_id": body.msg_id,
                    "content-type": "application/json",
                }
            )
            data = body.to_bytes()
        elif isinstance(body, str):
            data = body.encode()
        else:
            data = body
        all_headers["persistent"] = "true" if persistent else "false"
        all_headers.update(destination.send_headers(self.settings.destination_style))
        if headers:
            all_headers.update(headers)
        if not (persistent if receipt is None else receipt):
            self._write(destination, data, all_headers, deadline, timeout)
            return None
        receipt_id = uuid.uuid4().hex
        all_headers["receipt"] = receipt_id
        sent = Sent(destination, data, all_headers)
        with self._outbox_cond:
            while len(self._outbox) >= self.send_window:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailable(
                        f"cannot send to {destination}: {len(self._outbox)} sends await the "
                        f"broker's receipts for {timeout:g} s"
                    )
                self._outbox_cond.wait(remaining)
            self._outbox[receipt_id] = sent
        try:
            self._write(destination, data, all_headers, deadline, timeout, sent)
        except BaseException:
            self._forget(receipt_id)
            raise
        if not wait:
            return sent
        if sent.wait(max(0.0, deadline - time.monotonic())):
            return sent
        self._forget(receipt_id)
        raise BrokerUnavailable(
            f"no receipt from the broker for a message to {destination} within {timeout:g} s"
        )

    def _forget(self, receipt_id: str) -> None:
        with self._outbox_cond:
            if self._outbox.pop(receipt_id, None) is not None:
                self._outbox_cond.notify_all()

    def _write(
        self,
        destination: Destination,
        data: bytes,
        headers: dict[str, str],
        deadline: float,
        timeout: float,
        sent: Sent | None = None,
    ) -> None:
        """Write one SEND frame on the connection, waiting (until ``deadline``) for one."""
        address = destination.address(self.settings.destination_style)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._connected.wait(remaining):
                raise BrokerUnavailable(
                    f"cannot send to {destination}: broker "
                    f"{self.settings.host}:{self.settings.port} unreachable for {timeout:g} s"
                )
            with self._lock:
                conn, generation = self._conn, self._generation
                if conn is None or not self.connected:
                    continue
                try:
                    conn.send(destination=address, body=data, headers=headers)
                    if sent is not None:
                        sent.attempts += 1
                    return
                except (StompException, OSError) as exc:
                    log.info("send to %s failed (%s); waiting for the connection", destination, exc)
            self._mark_down(generation)

    def _resend_unconfirmed(self, conn: stomp.Connection) -> int:
        """On a new connection, before anything new: what was sent and not confirmed, in order."""
        with self._outbox_cond:
            pending = [s for s in self._outbox.values() if s.attempts and not s.done.is_set()]
        style = self.settings.destination_style
        for sent in pending:
            conn.send(
                destination=sent.destination.address(style), body=sent.data, headers=sent.headers
            )
            sent.attempts += 1
        if pending:
            self._count("resent", len(pending))
            log.info(
                "%s: %d sends were not confirmed before the connection dropped; sent again",
                self.client_name,
                len(pending),
            )
        return len(pending)

    # ------------------------------------------------------------------ internals

    def _new_connection(self) -> stomp.Connection:
        s = self.settings
        hb = (s.heartbeat_ms, s.heartbeat_ms)
        conn = stomp.Connection(
            [(s.host, s.port)],
            heartbeats=hb,
            reconnect_attempts_max=1,
            vhost=s.virtual_host,
            timeout=10,
            # ActiveMQ Classic may leave 2x the interval between beats
            heart_beat_receive_scale=3.0,
            auto_decode=False,
        )
        if s.use_ssl:
            conn.set_ssl(
                for_hosts=[(s.host, s.port)],
                ca_certs=str(s.ssl_ca_certs) if s.ssl_ca_certs else None,
                cert_file=str(s.ssl_cert_file) if s.ssl_cert_file else None,
                key_file=str(s.ssl_key_file) if s.ssl_key_file else None,
                ssl_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        return conn

    def _connect_once(self) -> None:
        s = self.settings
        with self._lock:
            self._generation += 1
            generation = self._generation
        conn = self._new_connection()
        listener = _Listener(self, generation)
        conn.set_listener("swf", listener)
        headers = {"client-id": self.client_id or f"{self.client_name}-{uuid.uuid4().hex[:8]}"}
        conn.connect(s.user or None, s.password or None, wait=False, headers=headers)
        # stomp.py's own wait has no overall timeout: a peer that accepts TCP
        # but never answers CONNECT would hang us forever.
        if not listener.connected.wait(s.connect_timeout_s) or not conn.is_connected():
            _drop(conn, polite=False)
            raise StompException(
                listener.error or f"no CONNECTED frame within {s.connect_timeout_s:g} s"
            )
        _no_delay(conn)
        with self._lock:
            if generation != self._generation or self._closing.is_set():
                _drop(conn, polite=True)
                return
            self._conn = conn
            waiters = [
                self._send_subscribe(conn, sub) for sub in list(self._subscriptions.values())
            ]
        for waiter in waiters:
            if not waiter.wait(s.connect_timeout_s):
                _drop(conn, polite=False)
                raise StompException("the broker did not confirm a subscription after reconnecting")
        with self._lock:
            if generation != self._generation:
                return
            try:
                self._resend_unconfirmed(conn)
            except (StompException, OSError) as exc:
                _drop(conn, polite=False)
                raise StompException(f"resending unconfirmed messages failed: {exc}") from exc
            self._connected.set()
        log.info(
            "connected to %s at %s:%d (%d subscriptions)",
            self.server or "broker",
            s.host,
            s.port,
            len(self._subscriptions),
        )
        if self.on_state_change:
            self.on_state_change(True)

    def _supervise(self) -> None:
        s = self.settings
        first = True
        while not self._closing.is_set():
            if self.connected:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            if not first:
                self.reconnects += 1
            try:
                self._connect_once()
                self._backoff.reset()
                first = False
                continue
            except (StompException, OSError, ssl.SSLError) as exc:
                error = str(exc)
            except Exception:  # noqa: BLE001 - the supervisor must never die
                log.exception("unexpected error while connecting to the broker")
                error = "unexpected error"
            first = False
            delay = self._backoff.next_delay()
            log.info(
                "broker %s:%d not reachable (%s); retrying in %.1f s", s.host, s.port, error, delay
            )
            self._closing.wait(delay)

    def _mark_down(self, generation: int) -> None:
        with self._lock:
            if generation != self._generation or not self._connected.is_set():
                return
            self._connected.clear()
            conn, self._conn = self._conn, None
        if conn is not None:
            _drop(conn, polite=False)
        if not self._closing.is_set():
            log.warning("lost the broker connection; reconnecting")
        self._wake.set()
        if self.on_state_change:
            self.on_state_change(False)

    def _on_disconnected(self, generation: int) -> None:
        self._mark_down(generation)

    def _on_receipt(self, receipt_id: str) -> None:
        with self._receipt_lock:
            waiter = self._receipts.pop(receipt_id, None)
        if waiter is not None:
            waiter.set()
            return
        with self._outbox_cond:
            sent = self._outbox.pop(receipt_id, None)
            if sent is None:
                return  # a resent message's second receipt, or one given up on
            sent.done.set()
            self._outbox_cond.notify_all()
        self._count("confirmed")

    def _on_refused(self, receipt_id: str, error: str) -> None:
        """An ERROR frame naming a send's receipt: that send is refused, not resent."""
        with self._outbox_cond:
            sent = self._outbox.pop(receipt_id, None) if receipt_id else None
            if sent is None:
                return
            sent.error = error
            sent.done.set()
            self._outbox_cond.notify_all()
        self._count("refused")
        log.error(
            "%s: the broker refused a message to %s: %s", self.client_name, sent.destination, error
        )

    def _on_message(self, generation: int, frame: stomp.utils.Frame) -> None:
        headers = dict(frame.headers)
        sub = self._subscriptions.get(headers.get("subscription", ""))
        if sub is None or not sub.active:
            return
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body or "").encode()
        delivery = Delivery(sub, headers, body, generation)
        if delivery.redelivered:
            self._count("redelivered")
        self._hand_over(delivery)

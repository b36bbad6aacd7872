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
* sends that wait (boundedly) for the connection instead of failing at once,
  and optional broker receipts.

Message handlers are called on stomp.py's receiver thread and must return
quickly; :class:`swf_testbed.agents.runtime.Agent` hands them to a worker pool.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import stomp
from stomp.exception import StompException

from swf_testbed.messages import Message
from swf_testbed.mq.destinations import Destination, forget_frames, mirror_topic
from swf_testbed.settings import BrokerSettings, DestinationStyle, QueueMirror

log = logging.getLogger(__name__)

AckMode = Literal["auto", "client", "client-individual"]


class BrokerUnavailable(ConnectionError):
    """The broker could not be reached within the allowed time."""


@dataclass(slots=True)
class Delivery:
    """One message as received: raw body (bytes) and headers."""

    subscription: Subscription
    headers: dict[str, str]
    body: bytes
    generation: int

    @property
    def destination(self) -> str:
        return self.headers.get("destination", "")

    @property
    def message_id(self) -> str:
        return self.headers.get("message-id", "")

    @property
    def redelivered(self) -> bool:
        return self.headers.get("redelivered", "false").lower() == "true"

    @property
    def ack_id(self) -> str:
        # STOMP 1.2 acknowledges by the 'ack' header; 1.0/1.1 by message-id.
        return self.headers.get("ack") or self.message_id


Handler = Callable[[Delivery], None]


@dataclass(slots=True)
class Subscription:
    destination: Destination
    handler: Handler
    ack: AckMode = "client-individual"
    prefetch: int | None = None
    selector: str | None = None
    durable_name: str | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    active: bool = True


class _Listener(stomp.ConnectionListener):
    def __init__(self, client: BrokerClient, generation: int) -> None:
        self.client = client
        self.generation = generation
        self.connected = threading.Event()
        self.error = ""

    def on_connected(self, frame: stomp.utils.Frame) -> None:
        self.client._on_connected(self.generation, frame.headers)
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
    except Exception:  # noqa: BLE001
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
    ) -> None:
        """``client_id``: a stable id, needed for durable subscriptions (one
        connection per id at a time; the broker refuses a second)."""
        self.settings = settings
        self.client_name = client_name
        self.client_id = client_id
        self.on_state_change = on_state_change
        self._subscriptions: dict[str, Subscription] = {}
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._closing = threading.Event()
        self._wake = threading.Event()
        self._conn: stomp.Connection | None = None
        self._generation = 0
        self._receipts: dict[str, threading.Event] = {}
        self._receipt_lock = threading.Lock()
        self._supervisor: threading.Thread | None = None
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

    def start(self, wait: float | None = 30.0) -> BrokerClient:
        """Start the connection supervisor; with ``wait``, block until connected."""
        if self._supervisor is None:
            self._supervisor = threading.Thread(
                target=self._supervise, name=f"{self.client_name}-mq", daemon=True
            )
            self._supervisor.start()
        if wait is not None and not self._connected.wait(wait):
            raise BrokerUnavailable(
                f"no STOMP broker answered at {self.settings.host}:{self.settings.port} within {wait:g} s"
            )
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect and stop reconnecting. Unacknowledged messages go back to the broker."""
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
        selector: str | None = None,
        durable: bool = False,
    ) -> Subscription:
        """Subscribe; the subscription survives reconnects.

        ``durable`` (topics, needs ``client_id``): the broker keeps the
        topic's messages for this subscription while it is disconnected.
        Topic names may use ActiveMQ wildcards: ``*`` one element, ``>`` the rest.
        """
        durable_name = None
        if durable:
            if not self.client_id:
                raise ValueError("a durable subscription needs a client_id")
            if not destination.is_topic:
                raise ValueError(f"only topic subscriptions can be durable, not {destination}")
            durable_name = f"{self.client_id}:{destination.name}"
        sub = Subscription(destination, handler, ack, prefetch, selector, durable_name)
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
        """Stop the subscription; ``forget``: a durable one is removed from the broker too (its backlog goes)."""
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
        if sub.selector:
            headers["selector"] = sub.selector
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
        """Acknowledge; False when the delivering connection is gone (the broker will redeliver)."""
        return self._ack_or_nack(delivery, "ack")

    def nack(self, delivery: Delivery) -> bool:
        return self._ack_or_nack(delivery, "nack")

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

    # ------------------------------------------------------------------ sending

    def send(
        self,
        destination: Destination,
        body: Message | bytes | str,
        *,
        headers: dict[str, str] | None = None,
        persistent: bool = True,
        receipt: bool = False,
        timeout: float = 30.0,
    ) -> None:
        """Send one message; waits up to ``timeout`` for a connection (and the receipt).

        A message to a queue is consumed by one receiver only; the monitor
        sees it on the queue's mirror topic, which the broker publishes
        (``VirtualTopic.Mirror.<queue>``: the embedded broker by default,
        ActiveMQ with ``useMirroredQueues``). On a broker without mirrored
        queues (``queue_mirror = client``, RabbitMQ's default) the client sends
        that copy itself, right after the message.
        """
        self._send_one(destination, body, headers, persistent, receipt, timeout)
        if not destination.is_topic and self.settings.mirror is QueueMirror.CLIENT:
            # a broker without mirrored queues (RabbitMQ): the copy the monitor reads
            self._send_one(mirror_topic(destination), body, headers, persistent, receipt, timeout)

    def _send_one(
        self,
        destination: Destination,
        body: Message | bytes | str,
        headers: dict[str, str] | None,
        persistent: bool,
        receipt: bool,
        timeout: float,
    ) -> None:
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
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._connected.wait(remaining):
                raise BrokerUnavailable(
                    f"cannot send to {destination}: broker {self.settings.host}:{self.settings.port} "
                    f"unreachable for {timeout:g} s"
                )
            waiter: threading.Event | None = None
            with self._lock:
                conn = self._conn
                if conn is None or not self.connected:
                    continue
                if receipt:
                    waiter = self._expect_receipt(all_headers)
                try:
                    conn.send(
                        destination=destination.address(self.settings.destination_style),
                        body=data,
                        headers=all_headers,
                    )
                except (StompException, OSError) as exc:
                    log.info("send to %s failed (%s); waiting for the connection", destination, exc)
                    self._mark_down(self._generation)
                    continue
            if waiter is None:
                return
            if waiter.wait(max(0.0, deadline - time.monotonic())):
                return
            raise BrokerUnavailable(
                f"no receipt from the broker for a message to {destination} within {timeout:g} s"
            )

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
            heart_beat_receive_scale=3.0,  # ActiveMQ Classic may leave 2x the interval between beats
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
        delay = s.reconnect_initial_s
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
                delay = s.reconnect_initial_s
                first = False
                continue
            except (StompException, OSError, ssl.SSLError) as exc:
                log.info(
                    "broker %s:%d not reachable (%s); retrying in %.1f s",
                    s.host,
                    s.port,
                    exc,
                    delay,
                )
            except Exception:  # noqa: BLE001 - the supervisor must never die
                log.exception("unexpected error while connecting to the broker")
            first = False
            # exponential backoff with full jitter
            self._closing.wait(random.uniform(delay / 2, delay))
            delay = min(delay * 2, s.reconnect_max_s)

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

    def _on_connected(self, generation: int, headers: dict[str, str]) -> None:
        self.server = headers.get("server", "")

    def _on_disconnected(self, generation: int) -> None:
        self._mark_down(generation)

    def _on_receipt(self, receipt_id: str) -> None:
        with self._receipt_lock:
            waiter = self._receipts.pop(receipt_id, None)
        if waiter is not None:
            waiter.set()

    def _on_message(self, generation: int, frame: stomp.utils.Frame) -> None:
        headers = dict(frame.headers)
        sub = self._subscriptions.get(headers.get("subscription", ""))
        if sub is None or not sub.active:
            return
        body = frame.body if isinstance(frame.body, bytes) else str(frame.body or "").encode()
        delivery = Delivery(sub, headers, body, generation)
        try:
            sub.handler(delivery)
        except Exception:  # noqa: BLE001 - a handler must never kill the receiver thread
            log.exception(
                "handler for %s raised; message %s left unacknowledged",
                sub.destination,
                delivery.message_id,
            )

"""The STOMP protocol: what each client frame does (CONNECT, SEND, SUBSCRIBE, ACK, ...).

One function per command, ``on_<command>(conn, frame) -> bool`` (True: it
sent the RECEIPT itself); :data:`HANDLERS` maps commands to them and
:meth:`Connection.handle <swf_testbed.broker.connection.Connection.handle>`
dispatches. Transport, flow control and timers are the connection's.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from swf_testbed import __version__
from swf_testbed.broker.destinations import (
    ACK_MODES,
    QUEUE,
    TOPIC,
    Message,
    Subscription,
    has_wildcard,
    wildcard_pattern,
)
from swf_testbed.broker.frames import Frame, ProtocolError, encode_frame
from swf_testbed.broker.selectors import SelectorError

if TYPE_CHECKING:
    from swf_testbed.broker.connection import Connection

log = logging.getLogger("swf_testbed.broker")

SERVER_NAME = f"swf-testbed/{__version__}"

# Headers of a SEND that the broker does not pass on as they are (it sets its own).
_BROKER_HEADERS = frozenset(
    {
        "destination",
        "message-id",
        "subscription",
        "ack",
        "redelivered",
        "content-length",
        "transaction",
        "receipt",
    }
)

MIN_HEARTBEAT_MS = 100

# SUBSCRIBE/UNSUBSCRIBE headers naming a durable subscription: ActiveMQ Classic, Artemis.
_DURABLE_NAME_HEADERS = ("activemq.subscriptionName", "durable-subscription-name")

# Broker name in ActiveMQ-worded errors ("Broker: localhost - Client: X already connected ...").
BROKER_NAME = "localhost"

_SEND, _ACK, _NACK = 0, 1, 2

STATS_QUEUE = "ActiveMQ.Statistics.Broker"
"""A SEND here with ``reply-to`` gets the broker's statistics (JSON) sent to that destination.

ActiveMQ Classic's statistics plugin destination; ``swf-testbed broker --stats`` uses it.
"""


def _durable_name(h: dict[str, str]) -> str | None:
    """The durable subscription name of a SUBSCRIBE/UNSUBSCRIBE (either spelling), or None."""
    for header in _DURABLE_NAME_HEADERS:
        name = h.get(header)
        if name is not None:
            if not name.strip():
                raise ProtocolError(
                    f"Invalid {header}: empty", "a durable subscription name cannot be empty"
                )
            return name
    return None


def _resolve(dest: str, dtype: str | None) -> tuple[str, str]:
    """(kind, name) of a destination header value."""
    if dest.startswith("/topic/"):
        kind, name = TOPIC, dest[7:]
    elif dest.startswith("/queue/"):
        kind, name = QUEUE, dest[7:]
    elif dest.startswith("/temp-topic/"):
        kind, name = TOPIC, dest
    elif dest.startswith("/temp-queue/"):
        kind, name = QUEUE, dest
    else:
        name = dest
        kind = TOPIC if dtype is not None and dtype.strip().upper() == "MULTICAST" else QUEUE
    if not name:
        raise ProtocolError("Invalid destination", f"destination {dest!r} names no topic or queue")
    return kind, name


def on_connect(conn: Connection, frame: Frame) -> bool:
    if conn.connected:
        raise ProtocolError("Already connected.", "a second CONNECT on this connection")
    h = frame.headers
    accept = h.get("accept-version")
    if accept is None:
        version = "1.0"
    else:
        offered = {v.strip() for v in accept.split(",")}
        for version in ("1.2", "1.1", "1.0"):
            if version in offered:
                break
        else:
            raise ProtocolError(
                "Supported protocol versions are 1.0,1.1,1.2",
                f"none of the versions offered ({accept}) is supported; "
                "this broker speaks 1.0, 1.1 and 1.2",
                {"version": "1.0,1.1,1.2"},
            )
    b = conn.broker
    if b.login is not None or b.passcode is not None:
        login = h.get("login", "")
        passcode = h.get("passcode", "")
        ok_login = hmac.compare_digest(login.encode(), (b.login or "").encode())
        ok_pass = hmac.compare_digest(passcode.encode(), (b.passcode or "").encode())
        if not (ok_login and ok_pass):
            raise ProtocolError(
                f"User name [{login}] or password is invalid.",
                "authentication failed: wrong login or passcode",
            )
    cid = h.get("client-id") or None
    if cid is not None:
        other = b.clients.get(cid)
        if other is not None and other is not conn:
            raise ProtocolError(
                f"Broker: {BROKER_NAME} - Client: {cid} already connected from tcp://{other.peer}",
                f"client-id {cid!r} is in use by another connection; one connection per client-id",
            )
    cx = cy = 0
    if version != "1.0":
        raw = h.get("heart-beat")
        if raw is not None:
            parts = raw.replace(" ", "").split(",")
            if len(parts) != 2 or not all(p.isdigit() and p.isascii() for p in parts):
                raise ProtocolError(
                    f"Invalid heart-beat header: {raw}",
                    "heart-beat must be two non-negative integers: cx,cy",
                )
            cx, cy = int(parts[0]), int(parts[1])
    # What we offer: to send at the rate the client wants to receive (cy),
    # to receive at the rate it offers to send (cx), ActiveMQ style.
    sx = max(cy, MIN_HEARTBEAT_MS) if cy else 0
    sy = max(cx, MIN_HEARTBEAT_MS) if cx else 0
    conn.version = version
    conn.parser.version = version
    conn.v12 = version == "1.2"
    conn.connected = True
    if cid is not None:
        conn.client_id = cid
        b.clients[cid] = conn
    headers = {
        "version": version,
        "server": SERVER_NAME,
        "session": conn.session,
        "heart-beat": f"{sx},{sy}",
    }
    conn.write(encode_frame("CONNECTED", headers, b"", version))
    conn.start_heartbeats(sx, sy)
    log.debug(
        "%s connected: STOMP %s, session %s, heart-beat %s,%s",
        conn.peer,
        version,
        conn.session,
        sx,
        sy,
    )
    return True


def on_send(conn: Connection, frame: Frame) -> bool:
    h = frame.headers
    dest = h.get("destination")
    if not dest:
        raise ProtocolError(
            "SEND received without a Destination specified!",
            "a SEND frame needs a destination header",
        )
    kind, name = _resolve(dest, h.get("destination-type"))
    if ("*" in name or ">" in name) and has_wildcard(name):
        raise ProtocolError(
            f"Cannot send to a wildcard destination: {dest}",
            "'*' and '>' elements are wildcards, for SUBSCRIBE only; send to a topic's own name",
        )
    b = conn.broker
    if kind == QUEUE and name == STATS_QUEUE:
        _answer_stats(conn, h)
        return False
    headers = {k: v for k, v in h.items() if k not in _BROKER_HEADERS}
    b.msg_serial += 1
    # the id names the sending connection (its session), as ActiveMQ's do: the monitor records it
    msg = Message(f"{conn.session}:{b.msg_serial}", headers, frame.body, name)
    tx = h.get("transaction")
    if tx is not None:
        actions = conn.transactions.get(tx)
        if actions is None:
            raise ProtocolError(
                f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun"
            )
        actions.append((_SEND, kind, name, msg))
    else:
        b.route(kind, name, msg)
    return False


def _answer_stats(conn: Connection, h: dict[str, str]) -> None:
    """The statistics request: :meth:`Broker.stats` as JSON, sent to the ``reply-to``."""
    reply_to = h.get("reply-to")
    if not reply_to:
        raise ProtocolError(
            f"{STATS_QUEUE} needs a reply-to",
            f"a SEND to /queue/{STATS_QUEUE} asks for the broker's statistics; "
            "reply-to names the destination that gets them",
        )
    kind, name = _resolve(reply_to, None)
    b = conn.broker
    b.msg_serial += 1
    body = json.dumps(b.stats(), sort_keys=True).encode()
    headers = {"content-type": "application/json"}
    if "correlation-id" in h:
        headers["correlation-id"] = h["correlation-id"]
    b.route(kind, name, Message(f"{conn.session}:{b.msg_serial}", headers, body, name))


def _prefetch(conn: Connection, raw: str | None, kind: str, durable: bool) -> int:
    """A SUBSCRIBE's ``activemq.prefetchSize``, or the broker's default for that kind."""
    b = conn.broker
    if raw is None:
        if kind == QUEUE:
            return b.queue_prefetch
        return b.durable_prefetch if durable else b.topic_prefetch
    try:
        prefetch = int(raw)
    except ValueError:
        prefetch = -1
    if prefetch < 0:
        raise ProtocolError(
            f"Invalid activemq.prefetchSize: {raw}",
            "activemq.prefetchSize must be a non-negative integer",
        )
    return max(prefetch, 1)


def on_subscribe(conn: Connection, frame: Frame) -> bool:
    h = frame.headers
    dest = h.get("destination")
    if not dest:
        raise ProtocolError(
            "SUBSCRIBE received without a destination",
            "a SUBSCRIBE frame needs a destination header",
        )
    sid = h.get("id")
    if sid is None and conn.version != "1.0":
        raise ProtocolError(
            "SUBSCRIBE received without a subscription id!",
            f"STOMP {conn.version} requires an id header on SUBSCRIBE",
        )
    key = sid if sid is not None else "\x00" + dest
    if key in conn.subs:
        raise ProtocolError(
            f"Duplicate subscription id: {sid if sid is not None else dest}",
            "this connection already has a subscription with that id",
        )
    ack_name = h.get("ack", "auto")
    ack = ACK_MODES.get(ack_name)
    if ack is None:
        raise ProtocolError(
            f"Invalid ack mode: {ack_name}", "ack must be auto, client or client-individual"
        )
    kind, name = _resolve(dest, h.get("subscription-type"))
    try:
        pattern = wildcard_pattern(name)
    except ValueError as e:
        raise ProtocolError(f"Invalid wildcard destination: {dest}", str(e)) from None
    if pattern is not None and kind == QUEUE:
        raise ProtocolError(
            f"Wildcard queue subscriptions are not supported: {dest}",
            "this broker supports '*' and '>' wildcards on topics only",
        )
    durable_name = _durable_name(h) if kind == TOPIC else None  # ignored on queues (ActiveMQ)
    if durable_name is not None and conn.client_id is None:
        raise ProtocolError(
            "You cannot create a durable subscriber without specifying a unique clientID "
            "on a Connection",
            "a durable subscription belongs to a client: CONNECT with a client-id header",
        )
    b = conn.broker
    prefetch = _prefetch(conn, h.get("activemq.prefetchSize"), kind, durable_name is not None)
    selector = None
    text = h.get("selector")
    if text is not None and text.strip():
        try:
            selector = b.selector(text)
        except SelectorError as e:
            raise ProtocolError(
                f"Invalid selector: {e}", f"cannot parse selector {text!r}: {e}"
            ) from None
    durable = None
    if durable_name is not None:
        assert conn.client_id is not None
        durable = b.durable_for(
            conn.client_id, durable_name, name, pattern, text if selector else None, selector
        )
        selector = None  # the durable subscription applies it, before its backlog
    serial = conn.next_serial()
    sub = Subscription(conn, sid, key, serial, dest, kind, ack, prefetch, selector)
    if pattern is not None:
        sub.set_wildcard(name)
    conn.subs[key] = sub
    conn.subs_by_serial[serial] = sub
    receipt = h.get("receipt")
    if receipt is not None:  # before any message is dispatched, as ActiveMQ does
        conn.send_receipt(receipt)
    if durable is not None:
        durable.attach(sub)
    else:
        b.attach(sub, kind, name, pattern)
    return True


def on_unsubscribe(conn: Connection, frame: Frame) -> bool:
    h = frame.headers
    sid = h.get("id")
    sub = None
    if sid is None and conn.version != "1.0":
        raise ProtocolError(
            "UNSUBSCRIBE received without a subscription id!",
            f"STOMP {conn.version} requires an id header on UNSUBSCRIBE",
        )
    durable_name = _durable_name(h)
    if durable_name is not None:  # remove a durable subscription (ActiveMQ: the id is not used)
        _remove_durable(conn, durable_name)
        return False
    if sid is not None:
        sub = conn.subs.get(sid)
    else:
        dest = h.get("destination")
        if dest is None:
            raise ProtocolError(
                "Must specify the subscriptionId or the destination you are unsubscribing from",
                "UNSUBSCRIBE needs an id or a destination header",
            )
        sub = conn.subs.get("\x00" + dest)
        if sub is None:
            sub = next((s for s in conn.subs.values() if s.destination == dest), None)
    if sub is None:
        raise ProtocolError(
            "No subscription matched.", f"no subscription with id {sid!r} on this connection"
        )
    del conn.subs[sub.key]
    conn.subs_by_serial.pop(sub.serial, None)
    conn.broker.detach(sub)
    return False


def _remove_durable(conn: Connection, name: str) -> None:
    b = conn.broker
    cid = conn.client_id
    durable = b.durables.get((cid, name)) if cid is not None else None
    if durable is None:
        raise ProtocolError(
            f"No durable subscription exists for clientID: {cid or conn.session} "
            f"and subscriptionName: {name}",
            "there is no durable subscription of that name for this connection's client-id",
        )
    if durable.consumer is not None:
        raise ProtocolError(
            "Durable consumer is in use",
            "the durable subscription is attached: UNSUBSCRIBE its id first (that only "
            "detaches it), then UNSUBSCRIBE with its name to remove it",
        )
    b.remove_durable(durable)


def _find_outstanding(conn: Connection, h: dict[str, str], verb: str) -> tuple[Subscription, str]:
    mid = h.get("message-id")
    if conn.v12:
        ack_id = h.get("id")
        if ack_id is not None:
            m, sep, serial = ack_id.rpartition("/")
            if sep:
                sub = conn.subs_by_serial.get(serial)
                if sub is not None and m in sub.unacked:
                    return sub, m
            mid = ack_id  # acknowledged by message-id
    if mid is None:
        raise ProtocolError(
            f"{verb} received without a message-id to acknowledge!",
            f"{verb} needs {'an id' if conn.v12 else 'a message-id'} header",
        )
    sid = h.get("subscription")
    if sid is not None:
        sub = conn.subs.get(sid)
        if sub is not None and mid in sub.unacked:
            return sub, mid
    for sub in conn.subs.values():
        if mid in sub.unacked:
            return sub, mid
    raise ProtocolError(
        f"Unexpected {verb} received for message-id [{mid}]",
        f"message {mid!r} is not awaiting acknowledgement on this connection",
    )


def _tx_actions(conn: Connection, h: dict[str, str]) -> list[tuple[Any, ...]] | None:
    tx = h.get("transaction")
    if tx is None:
        return None
    actions = conn.transactions.get(tx)
    if actions is None:
        raise ProtocolError(f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun")
    return actions


def on_ack(conn: Connection, frame: Frame) -> bool:
    sub, mid = _find_outstanding(conn, frame.headers, "ACK")
    actions = _tx_actions(conn, frame.headers)
    if actions is not None:
        actions.append((_ACK, sub, mid))
    else:
        conn.broker.ack(sub, mid)
    return False


def on_nack(conn: Connection, frame: Frame) -> bool:
    if conn.version == "1.0":
        raise ProtocolError(
            "NACK received but connection is in v1.0 mode.", "NACK exists from STOMP 1.1 on"
        )
    sub, mid = _find_outstanding(conn, frame.headers, "NACK")
    actions = _tx_actions(conn, frame.headers)
    if actions is not None:
        actions.append((_NACK, sub, mid))
    else:
        conn.broker.nack(sub, mid)
    return False


def _tx_name(conn: Connection, h: dict[str, str], what: str) -> str:
    tx = h.get("transaction")
    if tx is None:
        raise ProtocolError(
            f"Must specify the transaction you are {what}",
            "BEGIN, COMMIT and ABORT need a transaction header",
        )
    return tx


def on_begin(conn: Connection, frame: Frame) -> bool:
    tx = _tx_name(conn, frame.headers, "beginning")
    if tx in conn.transactions:
        raise ProtocolError(
            f"The transaction was already started: {tx}", "BEGIN of an active transaction"
        )
    conn.transactions[tx] = []
    return False


def on_commit(conn: Connection, frame: Frame) -> bool:
    tx = _tx_name(conn, frame.headers, "committing")
    actions = conn.transactions.pop(tx, None)
    if actions is None:
        raise ProtocolError(f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun")
    b = conn.broker
    for action in actions:
        if action[0] == _SEND:
            b.route(action[1], action[2], action[3])
        elif action[0] == _ACK:
            b.ack(action[1], action[2])
        else:
            b.nack(action[1], action[2])
    return False


def on_abort(conn: Connection, frame: Frame) -> bool:
    tx = _tx_name(conn, frame.headers, "aborting")
    if conn.transactions.pop(tx, None) is None:
        raise ProtocolError(f"Invalid transaction id: {tx}", f"transaction {tx!r} was not begun")
    return False


def on_disconnect(conn: Connection, frame: Frame) -> bool:
    receipt = frame.headers.get("receipt")
    conn.teardown()
    if receipt is not None:
        conn.send_receipt(receipt)
    conn.close_after_flush()
    return True


def on_connect_again(conn: Connection, frame: Frame) -> bool:
    raise ProtocolError("Already connected.", "a second CONNECT on this connection")


HANDLERS: dict[str, Callable[[Connection, Frame], bool]] = {
    "SEND": on_send,
    "SUBSCRIBE": on_subscribe,
    "UNSUBSCRIBE": on_unsubscribe,
    "ACK": on_ack,
    "NACK": on_nack,
    "BEGIN": on_begin,
    "COMMIT": on_commit,
    "ABORT": on_abort,
    "DISCONNECT": on_disconnect,
    "CONNECT": on_connect_again,
    "STOMP": on_connect_again,
}

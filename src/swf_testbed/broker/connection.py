"""One client connection: transport, output batching, flow control, slow consumers, heart-beats.

What the frames mean is :mod:`.protocol`'s; this module moves bytes and
keeps every connection's memory bounded. See docs/broker.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from swf_testbed.broker.destinations import Queue, Subscription
from swf_testbed.broker.frames import (
    Frame,
    FrameError,
    FrameParser,
    ProtocolError,
    encode_frame,
    escape,
)
from swf_testbed.broker.protocol import HANDLERS, on_connect

if TYPE_CHECKING:
    from swf_testbed.broker.server import Broker

log = logging.getLogger("swf_testbed.broker")


class Connection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.loop = broker.loop
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.parser = FrameParser(broker.limits)
        self.version = "1.0"
        self.v12 = False
        self.connected = False
        self.closing = False
        self.session = ""
        self.client_id: str | None = None  # CONNECT's client-id (owns durable subscriptions)
        self.subs: dict[str, Subscription] = {}
        self.subs_by_serial: dict[str, Subscription] = {}
        self._serial = 0
        self.transactions: dict[str, list[tuple[Any, ...]]] = {}
        self.out: list[bytes] = []
        self.out_bytes = 0
        self.flush_pending = False
        self.paused = False
        self.reading_paused = False
        self.read_blockers: set[Connection] = set()  # consumers this producer waits for
        self.throttled: set[Connection] = set()  # producers waiting for this consumer
        self._slow_timer: asyncio.TimerHandle | None = None
        self.blocked = False
        self.pending_bytes = 0
        self.wrote = False
        self.last_read = 0.0
        self.hb_send_ms = 0
        self.hb_recv_ms = 0
        self._connect_timer: asyncio.TimerHandle | None = None
        self._hb_send_timer: asyncio.TimerHandle | None = None
        self._hb_recv_timer: asyncio.TimerHandle | None = None
        self._abort_handle: asyncio.TimerHandle | None = None

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        b = self.broker
        transport.set_write_buffer_limits(high=b.write_buffer_high, low=b.write_buffer_low)
        peer = transport.get_extra_info("peername")
        if isinstance(peer, tuple) and len(peer) >= 2:
            self.peer = f"{peer[0]}:{peer[1]}"
        b.conns.add(self)
        b.conn_serial += 1
        self.session = f"{b.token}-{b.conn_serial}"
        self.last_read = self.loop.time()
        if b.connect_timeout:
            self._connect_timer = self.loop.call_later(b.connect_timeout, self._connect_timeout)
        log.debug("connection from %s", self.peer)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_read = self.loop.time()
        parser = self.parser
        parser.feed(data)
        frame: Frame | None = None
        broker = self.broker
        broker.current = self
        try:
            while not self.closing:
                frame = parser.next_frame()
                if frame is None:
                    break
                self.handle(frame)
        except FrameError as e:
            self.fail(e.message, e.detail)
        except ProtocolError as e:
            receipt = frame.headers.get("receipt") if frame is not None else None
            self.fail(e.message, e.detail, receipt, e.headers)
        except Exception:  # a bug: keep the broker alive, drop this connection
            log.exception("internal error handling a frame from %s", self.peer)
            self.fail("Internal error", "the broker failed to process this frame; see its log")
        finally:
            broker.current = None

    def eof_received(self) -> bool | None:
        if not self.closing and self.parser.in_frame:
            self.fail("Incomplete frame", "the connection ended in the middle of a frame")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.teardown()
        self.closing = True
        self.broker.conns.discard(self)
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        self.out.clear()
        log.debug("connection from %s closed%s", self.peer, f": {exc}" if exc else "")

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.closing or self.transport is None:
            return
        if self.throttled:
            self.release()
        if self.blocked:
            self.blocked = False
            self._redispatch()

    # -- output

    def write_parts(self, parts: list[bytes], nbytes: int) -> None:
        self.out.extend(parts)
        self.out_bytes += nbytes
        if not self.flush_pending:
            self.flush_pending = True
            self.broker.schedule_flush(self)

    def write(self, data: bytes) -> None:
        self.write_parts([data], len(data))

    def flush(self) -> None:
        self.flush_pending = False
        if not self.out:
            return
        data = b"".join(self.out)
        self.out.clear()
        self.out_bytes = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.wrote = True
            if self.closing:
                return
            if transport.get_write_buffer_size() > self.broker.max_pending_bytes:
                self.check_slow()
                return
        if self.closing:
            return
        if self.throttled and not self.paused:
            self.release()
        if self.blocked and not self.paused:
            self.blocked = False
            self._redispatch()

    def _redispatch(self) -> None:
        for sub in tuple(self.subs.values()):
            target = sub.target
            if sub.active and isinstance(target, Queue):
                target.dispatch()

    # -- slow consumers: producer flow control, a timeout, and a hard cap

    def throttle(self) -> None:
        """Backed up by topic traffic: make the producer of the current frame wait."""
        b = self.broker
        producer = b.current
        if (
            producer is not None
            and producer is not self
            and not producer.closing
            and not self.closing
        ):
            if producer not in self.throttled:
                self.throttled.add(producer)
                producer.block_reading(self)
            if self._slow_timer is None and b.slow_consumer_timeout:
                self._slow_timer = self.loop.call_later(b.slow_consumer_timeout, self._slow_timeout)
        self.check_slow()

    def release(self) -> None:
        """Caught up: let the producers that waited for this consumer go on."""
        if self._slow_timer is not None:
            self._slow_timer.cancel()
            self._slow_timer = None
        if self.throttled:
            producers = list(self.throttled)
            self.throttled.clear()
            for producer in producers:
                producer.unblock_reading(self)

    def block_reading(self, consumer: Connection) -> None:
        self.read_blockers.add(consumer)
        if not self.reading_paused and not self.closing and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()

    def unblock_reading(self, consumer: Connection) -> None:
        self.read_blockers.discard(consumer)
        if not self.read_blockers and self.reading_paused:
            self.reading_paused = False
            if not self.closing and self.transport is not None:
                self.last_read = self.loop.time()
                self.transport.resume_reading()

    def _slow_timeout(self) -> None:
        self._slow_timer = None
        if self.throttled and not self.closing:
            self.fail(
                "slow consumer",
                f"producers have waited {self.broker.slow_consumer_timeout:g} s for this "
                "connection to read its topic messages",
            )

    def check_slow(self) -> None:
        """The hard cap: what waits for this connection may not exceed ``max_pending_bytes``."""
        if self.closing or self.transport is None:
            return
        backlog = self.transport.get_write_buffer_size() + self.out_bytes + self.pending_bytes
        if backlog > self.broker.max_pending_bytes:
            self.fail(
                "slow consumer",
                f"this connection has {backlog} bytes waiting to be sent "
                f"(limit {self.broker.max_pending_bytes}); it does not read fast enough",
            )

    def send_receipt(self, receipt: str) -> None:
        self.write(b"RECEIPT\nreceipt-id:" + escape(receipt, self.version).encode() + b"\n\n\x00")

    def fail(
        self,
        message: str,
        detail: str = "",
        receipt: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        """Send ERROR, then close this connection."""
        if self.closing:
            return
        message = " ".join(message.split())
        log.info("closing connection from %s: %s", self.peer, message)
        headers = {"message": message, "content-type": "text/plain"}
        if extra:
            headers.update(extra)
        if receipt is not None:
            headers["receipt-id"] = receipt
        frame = encode_frame("ERROR", headers, (detail or message).encode() + b"\n", self.version)
        self.teardown()
        self.out.append(frame)
        self.out_bytes += len(frame)
        self.close_after_flush()

    def close_after_flush(self) -> None:
        """Flush what is pending and close; abort if the peer does not take it in time."""
        self.closing = True
        self.flush()
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if self._abort_handle is None and transport.get_write_buffer_size():
            self._abort_handle = self.loop.call_later(self.broker.close_grace, transport.abort)

    def teardown(self) -> None:
        """Drop transactions and subscriptions (unacked queue messages go back to their queue)."""
        self.closing = True
        self._cancel_timers()
        self.release()
        self.read_blockers.clear()
        self.transactions.clear()
        if self.subs:
            subs = list(self.subs.values())
            self.subs.clear()
            self.subs_by_serial.clear()
            for sub in subs:
                self.broker.detach(sub)
        self.pending_bytes = 0
        cid = self.client_id
        if cid is not None and self.broker.clients.get(cid) is self:
            del self.broker.clients[cid]

    # -- timers

    def next_serial(self) -> str:
        """A new subscription serial of this connection (part of 1.2 ``ack`` ids)."""
        self._serial += 1
        return str(self._serial)

    def start_heartbeats(self, send_ms: int, recv_ms: int) -> None:
        """CONNECTED went out: stop the CONNECT timeout, start the negotiated heart-beats."""
        self._cancel_timers()
        self.hb_send_ms = send_ms
        self.hb_recv_ms = recv_ms
        if send_ms:
            self._hb_send_timer = self.loop.call_later(send_ms / 2000, self._hb_send_tick)
        if recv_ms:
            self.last_read = self.loop.time()
            self._hb_recv_timer = self.loop.call_later(recv_ms / 2000, self._hb_recv_tick)

    def _cancel_timers(self) -> None:
        for name in ("_connect_timer", "_hb_send_timer", "_hb_recv_timer"):
            handle = getattr(self, name)
            if handle is not None:
                handle.cancel()
                setattr(self, name, None)

    def _connect_timeout(self) -> None:
        if not self.connected and not self.closing:
            self.fail(
                "Connect timeout", f"no CONNECT frame within {self.broker.connect_timeout:g} s"
            )

    def _hb_send_tick(self) -> None:
        if self.closing:
            return
        if not self.wrote and not self.out:
            self.write(b"\n")
        self.wrote = False
        self._hb_send_timer = self.loop.call_later(self.hb_send_ms / 2000, self._hb_send_tick)

    def _hb_recv_tick(self) -> None:
        if self.closing:
            return
        now = self.loop.time()
        if self.reading_paused:  # we are not reading it (flow control): no fault of the client
            self.last_read = now
        elif now - self.last_read > 2 * self.hb_recv_ms / 1000:
            self.fail(
                "heart-beat timeout",
                f"nothing received for {now - self.last_read:.1f} s "
                f"(negotiated client heart-beat {self.hb_recv_ms} ms)",
            )
            return
        self._hb_recv_timer = self.loop.call_later(self.hb_recv_ms / 2000, self._hb_recv_tick)

    # -- frames

    def handle(self, frame: Frame) -> None:
        command = frame.command
        if not self.connected:
            if command == "CONNECT" or command == "STOMP":
                on_connect(self, frame)
                return
            if command == "DISCONNECT":
                self.teardown()
                self.close_after_flush()
                return
            raise ProtocolError("Not connected.", f"{command} received before CONNECT")
        handler = HANDLERS[command]
        if not handler(self, frame):
            receipt = frame.headers.get("receipt")
            if receipt is not None:
                journal = self.broker.journal
                if journal is not None and journal.pending:
                    self.broker.defer_receipt(self, receipt)  # after the fsync that covers it
                else:
                    self.send_receipt(receipt)

    def shutdown(self) -> None:
        """Broker stopping: close without ceremony."""
        if self.closing:
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()
            return
        self.teardown()
        self.close_after_flush()

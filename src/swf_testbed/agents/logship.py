"""Shipping an agent's own log records to the monitor, over the broker, off the logging path.

:class:`BrokerLogHandler` is a ``logging.Handler``: ``emit`` copies what it
needs of a record into a :class:`LogBuffer` (bounded; a record that finds it
full is dropped and counted) and returns. It never touches the network, so
logging never waits for a broker or a monitor. :class:`LogShipper`, a
background thread, takes what is buffered every ``flush_interval`` seconds (at
once when the buffer is half full) and sends it as one ``log_batch`` message per batch (at most
:data:`~swf_testbed.messages.LOG_BATCH_MAX_RECORDS` records). While the broker
is unreachable the records stay in the buffer, up to its bound; the next batch
that gets through says how many were dropped meanwhile.

Records are tied to the message being handled when they were logged: the
runtime sets :data:`log_context` around each handler (``execution_id``,
``run_id``); ``extra={"execution_id": ..., "run_id": ...}`` on a call wins.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from swf_testbed.messages import (
    LOG_BATCH_MAX_RECORDS,
    LOG_EXCEPTION_MAX_CHARS,
    LOG_MESSAGE_MAX_CHARS,
    LogBatch,
    LogEntry,
)

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
"""The level names an agent's ``log_level`` may take."""

DEFAULT_LOG_LEVEL = "WARNING"
DEFAULT_BUFFER_SIZE = 1000

log_context: contextvars.ContextVar[tuple[str | None, int | None]] = contextvars.ContextVar(
    "swf_log_context", default=(None, None)
)
"""(execution_id, run_id) of the work in hand on this thread; records logged meanwhile
carry them."""


@contextlib.contextmanager
def logging_for(execution_id: str | None, run_id: int | None) -> Iterator[None]:
    """Records logged on this thread inside the block belong to this execution and run."""
    token = log_context.set((execution_id, run_id))
    try:
        yield
    finally:
        log_context.reset(token)


def level_number(level: str | int) -> int:
    """``"WARNING"`` (any case) or 30 → 30; raises ``ValueError`` naming the levels allowed."""
    if isinstance(level, int) and not isinstance(level, bool):
        if level < 0:
            raise ValueError(f"log level {level} must be >= 0")
        return level
    name = str(level).upper()
    if name not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    return logging.getLevelNamesMapping()[name]


@dataclass(frozen=True, slots=True)
class BufferedRecord:
    """What the handler keeps of a record: plain values, formatted at once (a record's args
    may change later)."""

    created: float
    level: int
    levelname: str
    logger: str
    message: str
    module: str
    funcname: str
    lineno: int
    thread: str
    exception: str
    execution_id: str | None
    run_id: int | None

    def entry(self) -> LogEntry:
        return LogEntry(
            timestamp=datetime.fromtimestamp(self.created, UTC),
            level=min(max(self.level, 0), 100),
            levelname=self.levelname[:50] or "LEVEL",
            logger=self.logger[:255],
            message=_cut(self.message, LOG_MESSAGE_MAX_CHARS),
            module=self.module[:255],
            funcname=self.funcname[:255],
            lineno=max(self.lineno, 0),
            thread=self.thread[:255],
            exception=_cut(self.exception, LOG_EXCEPTION_MAX_CHARS, keep_end=True),
            execution_id=self.execution_id[:200] if self.execution_id else None,
            run_id=self.run_id if self.run_id is not None and 0 <= self.run_id < 2**63 else None,
        )


def _cut(text: str, limit: int, *, keep_end: bool = False) -> str:
    if len(text) <= limit:
        return text
    marker = " […]"
    if keep_end:  # a traceback's end says what went wrong
        return "[…] " + text[-(limit - len(marker)) :]
    return text[: limit - len(marker)] + marker


class LogBuffer:
    """A bounded FIFO of records, shared by the handler (producer) and the shipper (the only
    consumer).

    When full, a new record is dropped and counted (the ones already held are
    kept: the first records of a trouble usually say what it was). The shipper
    :meth:`peek`s a batch, sends it, and only then :meth:`commit`s it, so a
    batch that could not be sent is still held, and the bound covers it too.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the log buffer needs room for at least 1 record")
        self.capacity = capacity
        self._items: deque[BufferedRecord] = deque()
        self._lock = threading.Lock()
        self._dropped_unreported = 0
        self.dropped_total = 0
        self.accepted_total = 0
        self.on_pressure: Callable[[], None] | None = None
        """Called (outside the lock) when a record brings the buffer to ``pressure_at`` records:
        send now."""
        self.pressure_at = max(1, capacity // 2)

    def put(self, item: BufferedRecord) -> bool:
        """Keep ``item``; False (and counted) when the buffer is full."""
        with self._lock:
            if len(self._items) >= self.capacity:
                self._dropped_unreported += 1
                self.dropped_total += 1
                return False
            self._items.append(item)
            self.accepted_total += 1
            pressed = len(self._items) == self.pressure_at
        if pressed and self.on_pressure is not None:
            self.on_pressure()
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def peek(self, limit: int) -> tuple[list[BufferedRecord], int]:
        """The oldest ``limit`` records and the drops not reported yet; nothing is removed."""
        with self._lock:
            return [
                self._items[i] for i in range(min(limit, len(self._items)))
            ], self._dropped_unreported

    def commit(self, records: int, dropped_reported: int) -> None:
        """Remove the ``records`` oldest (just sent); mark ``dropped_reported`` drops reported."""
        with self._lock:
            for _ in range(min(records, len(self._items))):
                self._items.popleft()
            self._dropped_unreported -= min(dropped_reported, self._dropped_unreported)


class BrokerLogHandler(logging.Handler):
    """Copies records into a :class:`LogBuffer`; never blocks on anything but the buffer's lock."""

    def __init__(self, buffer: LogBuffer, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.buffer = buffer
        self.ignored_thread: int | None = None
        """Records of this thread (the shipper's own) are not buffered: sending must not feed
        itself."""
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.ignored_thread:
            return
        try:
            execution_id, run_id = log_context.get()
            execution_id = getattr(record, "execution_id", execution_id)
            run_id = getattr(record, "run_id", run_id)
            exception = ""
            if record.exc_info:
                exception = self._formatter.formatException(record.exc_info)
            elif record.exc_text:
                exception = record.exc_text
            if record.stack_info:
                exception = (exception + "\n" + record.stack_info).strip()
            self.buffer.put(
                BufferedRecord(
                    created=record.created,
                    level=record.levelno,
                    levelname=record.levelname,
                    logger=record.name,
                    message=record.getMessage(),
                    module=record.module or "",
                    funcname=record.funcName or "",
                    lineno=record.lineno or 0,
                    thread=record.threadName or "",
                    exception=exception,
                    execution_id=str(execution_id) if execution_id not in (None, "") else None,
                    run_id=_as_run_id(run_id),
                )
            )
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


def _as_run_id(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


Send = Callable[[LogBatch], None]
"""Sends one batch; raises when it could not (the batch is then kept and tried again)."""


class LogShipper:
    """The background thread that sends what the buffer holds, one ``log_batch`` per batch."""

    def __init__(
        self,
        buffer: LogBuffer,
        send: Send,
        make_batch: Callable[..., LogBatch],
        *,
        flush_interval: float = 0.5,
        batch_size: int = LOG_BATCH_MAX_RECORDS,
        name: str = "log-shipper",
    ) -> None:
        self.buffer = buffer
        self._send = send
        self._make_batch = make_batch
        self.flush_interval = flush_interval
        self.batch_size = max(1, min(batch_size, LOG_BATCH_MAX_RECORDS))
        self.batches_sent = 0
        self.records_sent = 0
        self.send_failures = 0
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        buffer.pressure_at = max(1, min(buffer.capacity // 2, self.batch_size))
        buffer.on_pressure = self._wake.set  # a burst is sent at once, not at the next tick

    @property
    def thread_ident(self) -> int | None:
        return self._thread.ident

    def start(self) -> LogShipper:
        self._thread.start()
        return self

    def flush_once(self) -> bool:
        """Send one batch of what is held (if anything); False when sending failed."""
        records, dropped = self.buffer.peek(self.batch_size)
        if not records and not dropped:
            return True
        batch = self._make_batch(
            records=[r.entry() for r in records],
            dropped=dropped,
            dropped_total=self.buffer.dropped_total,
            buffer_size=self.buffer.capacity,
        )
        try:
            self._send(batch)
        except Exception:  # noqa: BLE001 - kept, tried again on the next tick
            self.send_failures += 1
            return False
        self.buffer.commit(len(records), dropped)
        self.batches_sent += 1
        self.records_sent += len(records)
        return True

    def drain(self, budget: int = 20) -> None:
        """Send what is held, in at most ``budget`` batches, stopping at the first failure."""
        for _ in range(budget):
            if not len(self.buffer) and not self.buffer.peek(0)[1]:
                return
            if not self.flush_once():
                return

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the thread; what it could not send within ``timeout`` is lost (the process is
        leaving)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            stopping = self._stop.is_set()
            self.drain(budget=20 if stopping else 5)
            if stopping:
                return

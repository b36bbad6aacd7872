"""The agent's log shipping: the bounded buffer, what it drops and
counts, and the batches it makes.
"""

from __future__ import annotations

import logging
import threading
import uuid

import pytest

from swf_testbed.agents.logship import (
    BrokerLogHandler,
    LogBuffer,
    LogShipper,
    level_number,
    logging_for,
)
from swf_testbed.messages import (
    LOG_BATCH_MAX_RECORDS,
    LOG_EXCEPTION_MAX_CHARS,
    LOG_MESSAGE_MAX_CHARS,
    LogBatch,
    parse_message,
)


def _logger(handler: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"test.logship.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger


def _make_batch(**fields: object) -> LogBatch:
    return LogBatch(
        namespace="ns1",
        sender="agent1",
        agent_name="agent1",
        agent_type="test",
        instance_id="agent1-x",
        pid=1,
        hostname="host",
        **fields,
    )


class Sink:
    """A send function that can be told to fail, like a broker that is away."""

    def __init__(self) -> None:
        self.batches: list[LogBatch] = []
        self.down = False

    def __call__(self, batch: LogBatch) -> None:
        if self.down:
            raise ConnectionError("broker unreachable")
        # what goes on the wire must parse back as the same message
        back = parse_message(batch.to_bytes())
        self.batches.append(back)  # type: ignore[arg-type]  # a LogBatch, typed Message


def test_full_buffer_drops_new_records_and_counts_them() -> None:
    buffer = LogBuffer(3)
    logger = _logger(BrokerLogHandler(buffer, logging.WARNING))
    for i in range(10):
        logger.warning("w%d", i)
    assert len(buffer) == 3
    assert buffer.dropped_total == 7 and buffer.accepted_total == 3
    records, dropped = buffer.peek(10)
    assert [r.message for r in records] == ["w0", "w1", "w2"]  # the first ones are kept
    assert dropped == 7


def test_level_is_honoured() -> None:
    buffer = LogBuffer(10)
    logger = _logger(BrokerLogHandler(buffer, logging.WARNING))
    logger.debug("d")
    logger.info("i")
    logger.warning("w")
    logger.error("e")
    assert [r.levelname for r in buffer.peek(10)[0]] == ["WARNING", "ERROR"]
    assert buffer.dropped_total == 0


def test_a_batch_that_cannot_be_sent_is_kept_and_the_bound_still_holds() -> None:
    buffer = LogBuffer(4)
    sink = Sink()
    shipper = LogShipper(buffer, sink, _make_batch, batch_size=2)
    logger = _logger(BrokerLogHandler(buffer))
    sink.down = True
    for i in range(6):
        logger.warning("w%d", i)
    assert not shipper.flush_once()
    assert len(buffer) == 4 and buffer.dropped_total == 2  # the unsent batch is inside the bound
    sink.down = False
    shipper.drain()
    assert [len(b.records) for b in sink.batches] == [2, 2]
    assert [r.message for b in sink.batches for r in b.records] == ["w0", "w1", "w2", "w3"]
    # the drops are reported once, in the first batch that got through; the total stays
    assert [b.dropped for b in sink.batches] == [2, 0]
    assert [b.dropped_total for b in sink.batches] == [2, 2]
    assert all(b.buffer_size == 4 for b in sink.batches)
    assert len(buffer) == 0


def test_drops_alone_are_reported_in_an_empty_batch() -> None:
    buffer = LogBuffer(1)
    sink = Sink()
    shipper = LogShipper(buffer, sink, _make_batch)
    logger = _logger(BrokerLogHandler(buffer))
    logger.warning("kept")
    sink.down = True
    logger.warning("lost")
    shipper.flush_once()
    sink.down = False
    shipper.drain()
    assert [(len(b.records), b.dropped) for b in sink.batches] == [(1, 1)]
    logger.warning("lost? no")  # room again
    shipper.drain()
    assert [(len(b.records), b.dropped) for b in sink.batches] == [(1, 1), (1, 0)]


def test_records_carry_the_execution_and_run_of_the_work_in_hand() -> None:
    buffer = LogBuffer(10)
    logger = _logger(BrokerLogHandler(buffer))
    with logging_for("exec-7", 42):
        logger.warning("inside")
        logger.warning("explicit", extra={"execution_id": "exec-8", "run_id": "43"})
    logger.warning("outside")
    records = buffer.peek(10)[0]
    assert [(r.execution_id, r.run_id) for r in records] == [
        ("exec-7", 42),
        ("exec-8", 43),
        (None, None),
    ]


def test_other_threads_do_not_inherit_the_context() -> None:
    buffer = LogBuffer(10)
    logger = _logger(BrokerLogHandler(buffer))
    with logging_for("exec-7", 42):
        thread = threading.Thread(target=lambda: logger.warning("elsewhere"))
        thread.start()
        thread.join()
    assert buffer.peek(10)[0][0].execution_id is None


def test_long_messages_and_tracebacks_are_cut_to_the_schema() -> None:
    buffer = LogBuffer(10)
    sink = Sink()
    logger = _logger(BrokerLogHandler(buffer))
    try:
        raise RuntimeError("boom " * 2000)
    except RuntimeError:
        logger.exception("x" * (LOG_MESSAGE_MAX_CHARS * 2))
    LogShipper(buffer, sink, _make_batch).drain()
    (entry,) = sink.batches[0].records
    assert len(entry.message) == LOG_MESSAGE_MAX_CHARS and entry.message.endswith("[…]")
    # a traceback keeps its end, where what went wrong is said
    assert len(entry.exception) == LOG_EXCEPTION_MAX_CHARS
    assert entry.exception.startswith("[…]") and entry.exception.rstrip().endswith("boom")


def test_the_shippers_own_records_are_not_buffered() -> None:
    buffer = LogBuffer(10)
    handler = BrokerLogHandler(buffer)
    logger = _logger(handler)

    def send(batch: LogBatch) -> None:
        logger.warning("sending a batch")  # e.g. the broker client complaining while sending

    shipper = LogShipper(buffer, send, _make_batch, flush_interval=0.01).start()
    handler.ignored_thread = shipper.thread_ident
    logger.warning("one")
    shipper.stop()
    assert len(buffer) == 0 and buffer.accepted_total == 1


def test_a_batch_holds_at_most_the_schema_limit() -> None:
    buffer = LogBuffer(LOG_BATCH_MAX_RECORDS * 3)
    sink = Sink()
    logger = _logger(BrokerLogHandler(buffer))
    for i in range(LOG_BATCH_MAX_RECORDS * 2 + 1):
        logger.warning("w%d", i)
    LogShipper(buffer, sink, _make_batch, batch_size=10_000).drain()
    assert [len(b.records) for b in sink.batches] == [
        LOG_BATCH_MAX_RECORDS,
        LOG_BATCH_MAX_RECORDS,
        1,
    ]


def test_level_names() -> None:
    assert level_number("warning") == logging.WARNING
    assert level_number(15) == 15
    with pytest.raises(ValueError, match="expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL"):
        level_number("LOUD")
    with pytest.raises(ValueError):
        LogBuffer(0)

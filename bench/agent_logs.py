"""What shipping an agent's log records to the monitor costs a log call.

Times ``logger.warning(...)`` on a logger whose only handler writes to
/dev/null (the baseline: what an agent's console handler costs, the
supervisord log file), then with the agent runtime's
:class:`~swf_testbed.agents.logship.BrokerLogHandler` added (buffer with room,
a shipper thread taking batches and building ``log_batch`` messages, sent
nowhere), then with that buffer full (every record dropped, as while the
broker is away). Prints ns per call and the ratios to the baseline; the last
line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
import uuid

from swf_testbed.agents.logship import BrokerLogHandler, BufferedRecord, LogBuffer, LogShipper
from swf_testbed.messages import LogBatch


def _batch(**fields: object) -> LogBatch:
    return LogBatch(
        namespace="bench",
        sender="bench",
        agent_name="bench",
        agent_type="bench",
        instance_id="b-1",
        pid=os.getpid(),
        hostname="h",
        **fields,
    )  # type: ignore[arg-type]  # **fields is a dict[str, Any] of the remaining fields


def _time_calls(logger: logging.Logger, calls: int) -> float:
    started = time.perf_counter()
    for i in range(calls):
        logger.warning("stf %d took %.2f s", i, 0.5)
    return (time.perf_counter() - started) / calls * 1e9


def _logger(*handlers: logging.Handler) -> logging.Logger:
    logger = logging.getLogger(f"bench.{uuid.uuid4().hex}")
    logger.propagate = False
    for handler in handlers:
        logger.addHandler(handler)
    return logger


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="20 000 calls per case instead of 200 000"
    )
    parser.add_argument("--calls", type=int, default=0)
    args = parser.parse_args()
    calls = args.calls or (20_000 if args.quick else 200_000)
    devnull = open(os.devnull, "w")  # noqa: SIM115 - closed at the end
    console = logging.StreamHandler(devnull)
    console.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    baseline = _time_calls(_logger(console), calls)

    sent = 0

    def send(batch: LogBatch) -> None:
        nonlocal sent
        sent += len(batch.to_bytes())

    roomy = LogBuffer(calls + 1)
    shipper = LogShipper(roomy, send, _batch, flush_interval=0.05).start()
    shipping = _time_calls(_logger(console, BrokerLogHandler(roomy)), calls)
    shipper.stop(timeout=60)

    full = LogBuffer(1)
    full.put(_placeholder())  # the one record it holds: every call below is dropped
    dropping = _time_calls(_logger(console, BrokerLogHandler(full)), calls)
    devnull.close()

    figures = {
        "calls": calls,
        "baseline_ns_per_call": round(baseline),
        "shipping_ns_per_call": round(shipping),
        "dropping_ns_per_call": round(dropping),
        "shipping_ratio": round(shipping / baseline, 2),
        "dropping_ratio": round(dropping / baseline, 2),
        "dropped": full.dropped_total,
        "bytes_built": sent,
    }
    print(f"log call, console handler only:         {baseline:8.0f} ns")
    print(
        f"  + buffering for the monitor (shipped): {shipping:8.0f} ns  ×{shipping / baseline:.2f}"
    )
    print(
        f"  + buffer full (dropped, counted):      {dropping:8.0f} ns  ×{dropping / baseline:.2f}"
    )
    print(json.dumps(figures))


def _placeholder() -> BufferedRecord:
    return BufferedRecord(
        created=time.time(),
        level=30,
        levelname="WARNING",
        logger="bench",
        message="held",
        module="",
        funcname="",
        lineno=0,
        thread="",
        exception="",
        execution_id=None,
        run_id=None,
    )


if __name__ == "__main__":
    main()

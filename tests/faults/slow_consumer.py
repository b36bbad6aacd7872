"""A deliberately slow consumer, as its own process (so that its memory can be measured alone).

``python -m tests.faults.slow_consumer HOST PORT DESTINATION OUT.json --expect N``
subscribes, sleeps ``--sleep-ms`` per message (on the receiving thread: it
reads no faster than it handles), and once it has ``N`` distinct messages
(or nothing came for ``--idle-s``) writes what it saw to ``OUT.json``:
counts, duplicates, whether its connection dropped, and its peak RSS.
Bodies start with the message's sequence number (8 digits). It prints
``subscribed`` once the subscription is in place.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from pathlib import Path

from swf_testbed.mq import BrokerClient, Destination
from swf_testbed.mq.client import Delivery
from swf_testbed.settings import BrokerSettings


def vm_kib(pid: int | str, field: str) -> int:
    """``VmHWM`` (peak RSS) or ``VmRSS`` of a process, in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class BrokerErrors(logging.Handler):
    """Counts the broker ERROR frames the client logs (e.g. 'slow consumer')."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.errors: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if text.startswith("broker ERROR"):
            self.errors.append(text)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("destination")
    parser.add_argument("out", type=Path)
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--sleep-ms", type=float, default=1.0)
    parser.add_argument("--ack", default="auto")
    parser.add_argument("--prefetch", type=int, default=None)
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()

    errors = BrokerErrors()
    logging.getLogger("swf_testbed.mq.client").addHandler(errors)
    seen = bytearray(args.expect)
    state = {
        "received": 0,
        "distinct": 0,
        "duplicates": 0,
        "out_of_range": 0,
        "last": time.monotonic(),
        "downs": 0,
    }
    done = threading.Event()
    client: BrokerClient

    def on_message(delivery: Delivery) -> None:
        time.sleep(args.sleep_ms / 1000)
        seq = int(delivery.body[:8])
        state["received"] += 1
        state["last"] = time.monotonic()
        if not 0 <= seq < args.expect:
            state["out_of_range"] += 1
        elif seen[seq]:
            state["duplicates"] += 1
        else:
            seen[seq] = 1
            state["distinct"] += 1
        if args.ack != "auto":
            client.ack(delivery)
        if state["distinct"] >= args.expect:
            done.set()

    def on_state(connected: bool) -> None:
        if not connected:
            state["downs"] += 1

    settings = BrokerSettings(
        host=args.host,
        port=args.port,
        heartbeat_ms=2000,
        reconnect_initial_s=0.1,
        reconnect_max_s=1.0,
    )
    client = BrokerClient(settings, client_name="slow-consumer", on_state_change=on_state).start()
    client.subscribe(
        Destination.parse(args.destination),
        on_message,
        ack=args.ack,
        prefetch=args.prefetch,
    )
    rss_at_subscribe = vm_kib("self", "VmRSS")
    print("subscribed", flush=True)
    while not done.wait(0.5):
        if time.monotonic() - state["last"] > args.idle_s:
            break
    result = {
        **state,
        "broker_errors": errors.errors,
        "peak_rss_kib": vm_kib("self", "VmHWM"),
        "rss_at_subscribe_kib": rss_at_subscribe,
    }
    result.pop("last")
    client.close()
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()

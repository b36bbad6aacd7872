"""The ``watch`` program: keeps what the broker says about a namespace in a file.

supervisord runs one per namespace. It listens to the heartbeat topic and the
namespace's replies topic and writes, at least every 2 s and soon after every
change, the newest heartbeat of each agent process and the recent workflow
executions to ``<runtime dir>/watch.json``. ``swf-testbed status`` and
``run`` read it, so they know at once what was heard before they started,
instead of waiting a heartbeat interval.

    python -m swf_testbed.orchestrator.watch --namespace NS --output PATH
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from pathlib import Path

from swf_testbed.messages import MessageError, parse_message
from swf_testbed.mq import BrokerClient, Delivery
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC, replies_topic
from swf_testbed.orchestrator.health import ExecutionBook, HeartbeatBook, write_watch_file
from swf_testbed.settings import get_settings

log = logging.getLogger("swf_testbed.watch")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="swf-testbed-watch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--period", type=float, default=2.0, help="write at least this often (s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("stomp.py").setLevel(logging.WARNING)

    beats = HeartbeatBook(args.namespace)
    executions = ExecutionBook(args.namespace)
    dirty = threading.Event()
    stop = threading.Event()

    def on_delivery(delivery: Delivery) -> None:
        try:
            msg = parse_message(delivery.body)
        except MessageError:
            return
        if beats.observe(msg) or executions.observe(msg):
            dirty.set()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()
        dirty.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    broker = get_settings().broker.model_copy(update={"reconnect_max_s": 2.0})
    client = BrokerClient(
        broker, client_name=f"swf-watch-{args.namespace}", on_state_change=lambda _c: dirty.set()
    )
    client.start(wait=None)
    client.subscribe(HEARTBEAT_TOPIC, on_delivery, ack="auto")
    client.subscribe(replies_topic(args.namespace), on_delivery, ack="auto")
    log.info(
        "watching namespace %s on %s:%s → %s", args.namespace, broker.host, broker.port, args.output
    )
    last = 0.0
    try:
        while not stop.is_set():
            dirty.wait(min(0.25, args.period))
            now = time.monotonic()
            if dirty.is_set() or now - last >= args.period:
                if dirty.is_set():
                    time.sleep(0.05)  # let a burst of heartbeats land in one write
                dirty.clear()
                beats.prune()
                write_watch_file(args.output, args.namespace, beats, executions, client.connected)
                last = now
    finally:
        client.close(timeout=2.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``python -m swf_testbed.broker --host H --port P [--login L --passcode P]``."""

from __future__ import annotations

import argparse
import logging
import sys

from swf_testbed.broker.frames import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_HEADER_SIZE,
    DEFAULT_MAX_HEADERS,
    Limits,
)
from swf_testbed.broker.server import run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m swf_testbed.broker",
        description="Run the embedded STOMP broker (STOMP 1.0/1.1/1.2) until SIGTERM or Ctrl+C.",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default %(default)s)"
    )
    parser.add_argument(
        "--port", type=int, default=61613, help="port to listen on, 0 for any (default %(default)s)"
    )
    parser.add_argument("--login", default=None, help="require this login on CONNECT")
    parser.add_argument("--passcode", default=None, help="require this passcode on CONNECT")
    parser.add_argument(
        "--max-frame-size",
        type=int,
        default=DEFAULT_MAX_BODY_SIZE,
        metavar="BYTES",
        help="largest message body accepted (default %(default)s)",
    )
    parser.add_argument(
        "--max-header-size",
        type=int,
        default=DEFAULT_MAX_HEADER_SIZE,
        metavar="BYTES",
        help="largest command line + headers of a frame (default %(default)s)",
    )
    parser.add_argument(
        "--max-headers",
        type=int,
        default=DEFAULT_MAX_HEADERS,
        metavar="N",
        help="most headers in a frame (default %(default)s)",
    )
    parser.add_argument(
        "--max-pending-bytes",
        type=int,
        default=64 * 1024 * 1024,
        metavar="BYTES",
        help="topic data one connection may have waiting before it is closed as a "
        "slow consumer (default %(default)s)",
    )
    parser.add_argument(
        "--slow-consumer-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long producers wait for a backed-up topic subscriber before it is "
        "closed as a slow consumer (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    args = parser.parse_args(argv)
    if (args.login is None) != (args.passcode is None):
        parser.error("--login and --passcode go together")
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        limits = Limits(args.max_frame_size, args.max_header_size, args.max_headers)
    except ValueError as e:
        parser.error(str(e))
    try:
        run(
            args.host,
            args.port,
            args.login,
            args.passcode,
            limits=limits,
            max_pending_bytes=args.max_pending_bytes,
            slow_consumer_timeout=args.slow_consumer_timeout,
        )
    except OSError as e:
        logging.getLogger("swf_testbed.broker").error(
            "cannot listen on %s:%s: %s", args.host, args.port, e
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

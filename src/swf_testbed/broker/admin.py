"""Asking a running broker for its statistics (``swf-testbed broker --stats``).

One STOMP connection: SUBSCRIBE to a temporary queue, SEND to
``/queue/ActiveMQ.Statistics.Broker`` with ``reply-to`` naming it (as
ActiveMQ Classic's statistics plugin is asked), read the JSON answer
(:meth:`Broker.stats <swf_testbed.broker.server.Broker.stats>`). Standard
library only, like the broker.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from typing import Any

from swf_testbed.broker.frames import SERVER_COMMANDS, Frame, FrameParser, encode_frame
from swf_testbed.broker.protocol import STATS_QUEUE


class StatsError(Exception):
    """The broker could not be asked, or did not answer."""


def request_stats(
    host: str,
    port: int,
    login: str | None = None,
    passcode: str | None = None,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """The statistics of the broker at ``host:port``."""
    reply = f"/temp-queue/stats-{uuid.uuid4().hex}"
    connect = {"accept-version": "1.2", "host": "localhost"}
    if login is not None:
        connect["login"] = login
        connect["passcode"] = passcode or ""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            parser = FrameParser(commands=SERVER_COMMANDS)
            deadline = time.monotonic() + timeout

            def send(command: str, headers: dict[str, str]) -> None:
                sock.sendall(encode_frame(command, headers, b"", parser.version))

            def recv() -> Frame:
                while True:
                    frame = parser.next_frame()
                    if frame is not None:
                        if frame.command == "ERROR":
                            raise StatsError(frame.headers.get("message", "ERROR"))
                        return frame
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise StatsError(f"no answer within {timeout:g} s")
                    sock.settimeout(left)
                    data = sock.recv(1 << 16)
                    if not data:
                        raise StatsError("the broker closed the connection")
                    parser.feed(data)

            send("CONNECT", connect)
            connected = recv()
            parser.version = connected.headers.get("version", "1.0")
            send("SUBSCRIBE", {"destination": reply, "id": "stats", "ack": "auto"})
            send("SEND", {"destination": f"/queue/{STATS_QUEUE}", "reply-to": reply})
            while True:
                frame = recv()
                if frame.command == "MESSAGE":
                    send("DISCONNECT", {})
                    figures: dict[str, Any] = json.loads(frame.body)
                    return figures
    except OSError as exc:
        raise StatsError(str(exc)) from None

"""Fixtures for the embedded broker's own tests: the broker as a real process, raw STOMP sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import stomp

from swf_testbed.broker.frames import SERVER_COMMANDS, Frame, FrameParser, encode_frame
from swf_testbed.testing.brokers import free_port, wait_for_port
from tests.support.stomp_recorder import FrameRecorder

HOST = "127.0.0.1"
WAIT_S = 10.0  # failure guard for things that normally take milliseconds

# The shared broker of this directory runs with small limits so that the
# "too big" and "too slow" tests need not push much data or wait long.
MAX_FRAME = 1024 * 1024
MAX_PENDING = 4 * 1024 * 1024
SLOW_TIMEOUT_S = 0.5


@dataclass
class BrokerProc:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(WAIT_S)
        return self.proc.returncode


def launch_broker(log_dir: Path, *args: str) -> BrokerProc:
    """``python -m swf_testbed.broker --port <free port> ARGS``, once it accepts connections."""
    port = free_port()
    command = ["-m", "swf_testbed.broker", "--host", HOST, "--port", str(port), *args]
    return _launch(log_dir, port, command)


def launch_broker_with_options(log_dir: Path, **options: float) -> BrokerProc:
    """A broker process made with :class:`~swf_testbed.broker.Broker` keyword ``options``.

    For options without a command-line flag: ``swf_testbed.broker.server.run``
    in a ``python -c`` process, on a free port, logging as the command does.
    """
    port = free_port()
    code = (
        "import json, sys\n"
        "from swf_testbed.broker.server import run\n"
        "run(sys.argv[1], int(sys.argv[2]), **json.loads(sys.argv[3]))\n"
    )
    return _launch(log_dir, port, ["-c", code, HOST, str(port), json.dumps(options)])


def _launch(log_dir: Path, port: int, command: list[str]) -> BrokerProc:
    log = log_dir / f"broker-{port}.log"
    # the journal's default is $SWF_HOME/broker/<port>: keep it in the test's directory
    env = {**os.environ, "SWF_HOME": str(log_dir / "swf-home")}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *command], stdout=out, stderr=subprocess.STDOUT, env=env
        )
    broker = BrokerProc(proc, port, log)
    try:
        wait_for_port(HOST, port, 20, proc)
    except (RuntimeError, TimeoutError) as exc:
        broker.stop()
        raise RuntimeError(f"{exc}:\n{broker.log_text()}") from None
    return broker


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProc]:
    """One broker process shared by the tests of this directory."""
    b = launch_broker(
        tmp_path_factory.mktemp("broker"),
        "--max-frame-size",
        str(MAX_FRAME),
        "--max-pending-bytes",
        str(MAX_PENDING),
        "--slow-consumer-timeout",
        str(SLOW_TIMEOUT_S),
    )
    yield b
    rc = b.stop()
    assert rc == 0, f"broker exited with {rc}:\n{b.log_text()}"


@pytest.fixture
def new_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProc]]:
    """Factory for a private broker process (stopped at teardown)."""
    made: list[BrokerProc] = []

    def make(*args: str) -> BrokerProc:
        b = launch_broker(tmp_path, *args)
        made.append(b)
        return b

    yield make
    for b in made:
        b.stop()


def unique(kind: str) -> str:
    return f"/{kind}/test.{uuid.uuid4().hex}"


# --------------------------------------------------------------------------- raw STOMP client


class Raw:
    """A STOMP client on a bare socket: sends exactly what the test says, parses what comes back."""

    def __init__(
        self,
        port: int,
        *,
        connect: bool = True,
        version: str = "1.2",
        rcvbuf: int | None = None,
        **connect_headers: str,
    ) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:  # before connecting, so that the TCP window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(WAIT_S)
        self.sock.connect((HOST, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.parser = FrameParser(commands=SERVER_COMMANDS)
        self.version = "1.0"
        self.eof = False
        self.connected: Frame | None = None
        if connect:
            headers = {"accept-version": version, "host": "localhost", **connect_headers}
            if version == "1.0":
                headers.pop("accept-version")
            self.connected = self.connect(headers)

    def connect(self, headers: dict[str, str], command: str = "CONNECT") -> Frame:
        self.send(command, headers)
        frame = self.recv()
        assert frame.command == "CONNECTED", frame
        self.version = frame.headers.get("version", "1.0")
        self.parser.version = self.version
        return frame

    def send(self, command: str, headers: dict[str, str] | None = None, body: bytes = b"") -> None:
        self.sock.sendall(encode_frame(command, headers or {}, body, self.version))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, timeout: float = WAIT_S) -> Frame:
        """The next frame; fails the test on timeout or EOF."""
        frame = self.recv_or_eof(timeout)
        assert frame is not None, "connection closed by the broker"
        return frame

    def recv_or_eof(self, timeout: float = WAIT_S) -> Frame | None:
        deadline = time.monotonic() + timeout
        while True:
            frame = self.parser.next_frame()
            if frame is not None:
                return frame
            if self.eof:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame from the broker within {timeout:g} s")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
            self.parser.feed(data)

    def receipt(
        self, command: str = "SEND", headers: dict[str, str] | None = None, body: bytes = b""
    ) -> None:
        """Send a frame with a receipt and wait for the RECEIPT (no other frame may come first)."""
        rid = uuid.uuid4().hex
        self.send(command, {**(headers or {}), "receipt": rid}, body)
        frame = self.recv()
        assert frame.command == "RECEIPT" and frame.headers["receipt-id"] == rid, frame

    def subscribe(
        self, destination: str, sid: str = "s1", ack: str = "auto", **headers: str
    ) -> str:
        self.receipt("SUBSCRIBE", {"destination": destination, "id": sid, "ack": ack, **headers})
        return sid

    def messages(self, n: int) -> list[Frame]:
        out = [self.recv() for _ in range(n)]
        assert all(f.command == "MESSAGE" for f in out), out
        return out

    def sync(self) -> list[Frame]:
        """A receipt round trip that changes nothing (BEGIN, then ABORT with a receipt).

        Returns every frame that arrived before the RECEIPT: the broker writes
        in order, so anything it meant to send us by now is in that list.
        """
        tx = uuid.uuid4().hex
        rid = uuid.uuid4().hex
        self.send("BEGIN", {"transaction": tx})
        self.send("ABORT", {"transaction": tx, "receipt": rid})
        before = []
        while True:
            frame = self.recv()
            if frame.command == "RECEIPT" and frame.headers.get("receipt-id") == rid:
                return before
            before.append(frame)

    def expect_error_and_close(self, timeout: float = WAIT_S) -> Frame:
        """The broker answers with ERROR, then closes the connection."""
        frames = []
        while True:
            frame = self.recv_or_eof(timeout)
            if frame is None:
                break
            frames.append(frame)
        errors = [f for f in frames if f.command == "ERROR"]
        assert errors, f"connection closed without ERROR; got {frames}"
        return errors[-1]

    def wait_closed(self, timeout: float = WAIT_S) -> list[Frame]:
        frames = []
        while True:
            frame = self.recv_or_eof(timeout)
            if frame is None:
                return frames
            frames.append(frame)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


@pytest.fixture
def raw(broker: BrokerProc) -> Iterator[Callable[..., Raw]]:
    """Factory of raw connections to the shared broker, closed at teardown."""
    made: list[Raw] = []

    def make(**kwargs: Any) -> Raw:
        r = Raw(broker.port, **kwargs)
        made.append(r)
        return r

    yield make
    for r in made:
        r.close()


# --------------------------------------------------------------------------- stomp.py


def stomp_round_trip(port: int) -> None:
    """A normal stomp.py client can subscribe, publish and receive: the broker still serves."""
    conn = stomp.Connection([(HOST, port)], heartbeats=(0, 0), auto_decode=False)
    listener = FrameRecorder()
    conn.set_listener("c", listener)
    conn.connect(wait=True)
    try:
        topic = unique("topic")
        conn.subscribe(topic, id="1", ack="auto", headers={"receipt": "sub"})
        assert listener.wait_for(lambda: "sub" in listener.receipts), "no RECEIPT for SUBSCRIBE"
        body = b"round trip \x00 with a NUL"
        conn.send(topic, body, headers={"x-check": "yes"})
        assert listener.wait_for(lambda: len(listener.messages) == 1), "message did not come back"
        frame = listener.messages[0]
        assert frame.body == body
        assert frame.headers["x-check"] == "yes"
        assert not listener.errors
    finally:
        conn.disconnect()

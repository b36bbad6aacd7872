"""The XML-RPC transport over supervisord's unix socket: calls, faults, a timeout on a hung daemon.

An XML-RPC server on a real unix socket stands in for supervisord (the
lifecycle tests drive real ones); the timeout is what the transport adds over
supervisor's own.
"""

from __future__ import annotations

import socket
import socketserver
import threading
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from xmlrpc.server import SimpleXMLRPCDispatcher, SimpleXMLRPCRequestHandler

import pytest

from swf_testbed.orchestrator.supervisor import (
    RuntimePaths,
    Supervisor,
    SupervisorError,
    UnixSocketTransport,
)


class _Handler(SimpleXMLRPCRequestHandler):
    disable_nagle_algorithm = False  # a unix socket has no TCP options

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: object) -> None:
        pass


class _UnixXMLRPCServer(
    socketserver.ThreadingMixIn, socketserver.UnixStreamServer, SimpleXMLRPCDispatcher
):
    """Python's SimpleXMLRPCServer, on a unix socket (as supervisord serves it)."""

    daemon_threads = True
    logRequests = False  # the name SimpleXMLRPCRequestHandler reads

    def __init__(self, path: str) -> None:
        SimpleXMLRPCDispatcher.__init__(self, allow_none=True)
        socketserver.UnixStreamServer.__init__(self, path, _Handler)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Supervisor, threading.Event, list[str]]]:
    sock = tmp_path / "supervisord.sock"
    server = _UnixXMLRPCServer(str(sock))
    release, calls = threading.Event(), []

    def get_state() -> dict[str, object]:
        calls.append("getState")
        return {"statename": "RUNNING", "statecode": 1}

    def hang() -> bool:
        calls.append("hang")
        release.wait(30)
        return True

    def refuse(name: str, wait: bool) -> None:
        raise xmlrpc.client.Fault(10, f"BAD_NAME: {name}")

    server.register_function(get_state, "supervisor.getState")
    server.register_function(hang, "supervisor.hang")
    server.register_function(refuse, "supervisor.startProcess")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Supervisor(RuntimePaths(tmp_path, sock), timeout=5.0), release, calls
    finally:
        release.set()
        server.shutdown()
        server.server_close()


def test_calls_go_over_the_unix_socket(
    daemon: tuple[Supervisor, threading.Event, list[str]],
) -> None:
    sup, _release, calls = daemon
    assert sup.running()
    assert sup.call("getState")["statename"] == "RUNNING"
    assert calls == ["getState", "getState"]


def test_a_fault_is_the_daemons_answer(
    daemon: tuple[Supervisor, threading.Event, list[str]],
) -> None:
    sup, _release, _calls = daemon
    with pytest.raises(SupervisorError, match="cannot start ghost: BAD_NAME: ghost"):
        sup.start_process("ghost")


def test_a_hung_daemon_times_out_instead_of_hanging_the_command(
    daemon: tuple[Supervisor, threading.Event, list[str]],
) -> None:
    sup, release, calls = daemon
    with pytest.raises(SupervisorError, match="is not answering"):
        sup.call("hang", timeout=0.3)
    assert calls == ["hang"]  # it was reached, and did not answer
    release.set()
    assert sup.call("getState")["statename"] == "RUNNING"  # a new connection for the next call


def test_no_daemon_is_a_supervisor_error(tmp_path: Path) -> None:
    sup = Supervisor(RuntimePaths(tmp_path, tmp_path / "none.sock"))
    assert not sup.running()
    with pytest.raises(SupervisorError, match="is not answering"):
        sup.call("getState")


def test_the_transport_makes_a_unix_connection_with_the_timeout(tmp_path: Path) -> None:
    transport = UnixSocketTransport(tmp_path / "x.sock", 1.5)
    conn = transport.make_connection("localhost")
    assert conn.timeout == 1.5
    with pytest.raises(OSError):
        conn.connect()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "x.sock"))
    listener.listen(1)
    try:
        conn.connect()
        accepted, _ = listener.accept()
        accepted.close()
    finally:
        conn.close()
        listener.close()

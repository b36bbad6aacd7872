"""Start real brokers on free loopback ports: the embedded one and ActiveMQ Classic; find RabbitMQ.

Used by the test suite and the benchmarks, so that both talk to the same
real services the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from swf_testbed.settings import BrokerSettings, DestinationStyle

ACTIVEMQ_HOME = Path(os.environ.get("SWF_ACTIVEMQ_HOME", "/usr/share/activemq"))
ACTIVEMQ_CONF = Path(os.environ.get("SWF_ACTIVEMQ_CONF", "/etc/activemq/instances-available/main"))
RABBITMQ_STOMP = os.environ.get("SWF_TEST_RABBITMQ_STOMP", "127.0.0.1:61633")
"""Where RabbitMQ's STOMP plugin listens (a running server; .ci/run enables the plugin there).

Not 61613, STOMP's usual port: that is the embedded broker's default.
"""
RABBITMQ_LOGIN = ("guest", "guest")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with {proc.returncode} before listening on {host}:{port}"
            )
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:g} s")


@dataclass
class BrokerProcess:
    """A broker running as its own process."""

    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    workdir: Path | None = None
    log_path: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)
    style: DestinationStyle = DestinationStyle.PREFIXED
    login: tuple[str, str] | None = None
    virtual_host: str = ""

    @property
    def env(self) -> dict[str, str]:
        """Environment variables pointing a testbed program at this broker."""
        env = {"ACTIVEMQ_HOST": self.host, "ACTIVEMQ_PORT": str(self.port)}
        if self.style is not DestinationStyle.PREFIXED:
            env["ACTIVEMQ_DESTINATION_STYLE"] = self.style.value
        if self.login is not None:
            env["ACTIVEMQ_USER"], env["ACTIVEMQ_PASSWORD"] = self.login
        if self.virtual_host:
            env["ACTIVEMQ_VHOST"] = self.virtual_host
        return {**env, **self.extra}

    @property
    def vhost(self) -> str:
        """The STOMP ``host`` header a raw client must send (RabbitMQ: its virtual host ``/``)."""
        return self.settings().virtual_host

    def connect_kwargs(self) -> dict[str, str]:
        """Keyword arguments of stomp.py's ``connect()`` for a raw client of this broker."""
        if self.login is None:
            return {}
        return {"username": self.login[0], "passcode": self.login[1]}

    def settings(self, **overrides: Any) -> BrokerSettings:
        """Client settings for this broker, with quick heart-beats and reconnects for tests."""
        values: dict[str, Any] = {  # BrokerSettings validates each value
            "host": self.host,
            "port": self.port,
            "heartbeat_ms": 2000,
            "reconnect_initial_s": 0.1,
            "reconnect_max_s": 1.0,
            "destination_style": self.style,
        }
        if self.login is not None:
            values["user"], values["password"] = self.login
        if self.virtual_host:
            values["vhost"] = self.virtual_host
        values.update(overrides)
        return BrokerSettings(**values)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def start_embedded(
    port: int | None = None,
    host: str = "127.0.0.1",
    *,
    args: list[str] | None = None,
    log_dir: Path | None = None,
) -> BrokerProcess:
    """``python -m swf_testbed.broker`` on a free port, waited for."""
    port = port or free_port()
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="swf-broker-"))
    log_path = log_dir / f"broker-{port}.log"
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "swf_testbed.broker",
                "--host",
                host,
                "--port",
                str(port),
                *(args or []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            # the journal's default, $SWF_HOME/broker/<port>, in log_dir: never the user's home
            env={**os.environ, "SWF_HOME": str(log_dir / "swf-home")},
        )
    broker = BrokerProcess("embedded", host, port, proc, log_dir, log_path)
    try:
        wait_for_port(host, port, 20, proc)
    except Exception:
        broker.stop()
        raise RuntimeError(f"embedded broker did not start:\n{broker.log_tail()}") from None
    return broker


def rabbitmq_stomp(virtual_host: str = "") -> BrokerProcess | None:
    """RabbitMQ's STOMP listener (``SWF_TEST_RABBITMQ_STOMP``) if it answers CONNECT, else None.

    A running server, shared with whatever else uses it: give each test
    session a virtual host of its own (``rabbitmq_vhost``) so that the queues
    it creates go away with it.
    """
    host, _, port_text = RABBITMQ_STOMP.rpartition(":")
    broker = BrokerProcess(
        "rabbitmq",
        host,
        int(port_text),
        style=DestinationStyle.RABBITMQ,
        login=RABBITMQ_LOGIN,
        virtual_host=virtual_host,
    )
    connect = b"CONNECT\naccept-version:1.1\nhost:%s\nlogin:%s\npasscode:%s\n\n\x00" % (
        broker.vhost.encode(),
        RABBITMQ_LOGIN[0].encode(),
        RABBITMQ_LOGIN[1].encode(),
    )
    try:
        with socket.create_connection((broker.host, broker.port), timeout=3) as sock:
            sock.sendall(connect)
            sock.settimeout(5)
            answer = sock.recv(4096)
    except OSError:
        return None
    return broker if answer.startswith(b"CONNECTED") else None


@contextmanager
def rabbitmq_vhost(prefix: str = "swf-test") -> Iterator[str]:
    """A new RabbitMQ virtual host for the guest user, deleted (with its queues) afterwards.

    Uses ``rabbitmqctl`` (the server's own tool, on this machine); where it is
    missing or refuses, yields ``""``: the default virtual host ``/``.
    """
    name = f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl")

    def run(*args: str) -> bool:
        assert ctl is not None
        done = subprocess.run([ctl, "-q", *args], capture_output=True, timeout=60, check=False)
        return done.returncode == 0

    made = bool(ctl) and run("add_vhost", name)
    if made and not run("set_permissions", "-p", name, RABBITMQ_LOGIN[0], ".*", ".*", ".*"):
        run("delete_vhost", name)
        made = False
    try:
        yield name if made else ""
    finally:
        if made:
            run("delete_vhost", name)


def activemq_available() -> bool:
    return (
        (ACTIVEMQ_HOME / "bin" / "activemq.jar").exists()
        and (ACTIVEMQ_CONF / "activemq.xml").exists()
        and shutil.which("java") is not None
    )


class InHost(Protocol):
    """Where a service runs: a host of ``swf_testbed.testing.hosts`` (its command wrapper, and
    a block in which this thread's sockets are the host's)."""

    def command(self, argv: Sequence[str]) -> list[str]: ...

    def inside(self) -> AbstractContextManager[None]: ...


def start_activemq(
    port: int | None = None,
    host: str = "127.0.0.1",
    workdir: Path | None = None,
    in_host: InHost | None = None,
) -> BrokerProcess:
    """ActiveMQ Classic from the Debian package, in its own instance dir, with a STOMP connector.

    The packaged config opens only OpenWire; we copy it, add a STOMP
    transport connector on a free loopback port (and move OpenWire to a free
    port too, so several instances never collide), turn on mirrored queues
    (``useMirroredQueues``: every queue message is copied to the topic
    ``VirtualTopic.Mirror.<queue>``, where the monitor reads queue traffic, as
    on the embedded broker), and start it.
    """
    if not activemq_available():
        raise RuntimeError(
            f"ActiveMQ Classic is not installed ({ACTIVEMQ_HOME}); apt-get install -y activemq"
        )
    port = port or free_port()
    base = workdir or Path(tempfile.mkdtemp(prefix="swf-activemq-"))
    conf = base / "conf"
    if not conf.exists():
        shutil.copytree(ACTIVEMQ_CONF, conf)
    (base / "data").mkdir(exist_ok=True)
    xml_path = conf / "activemq.xml"
    xml = xml_path.read_text()
    if "swf-stomp" not in xml:
        openwire = free_port()
        connectors = (
            "<transportConnectors>\n"
            f'            <transportConnector name="openwire" uri="tcp://127.0.0.1:{openwire}"/>\n'
            f'            <transportConnector name="swf-stomp" uri="stomp://{host}:{port}'
            '?transport.hbGracePeriodMultiplier=2&amp;transport.tcpNoDelay=true"/>\n'
            "        </transportConnectors>"
        )
        start = xml.index("<transportConnectors>")
        end = xml.index("</transportConnectors>") + len("</transportConnectors>")
        xml = xml[:start] + connectors + xml[end:]
        if "useMirroredQueues" not in xml:
            tag = '<broker xmlns="http://activemq.apache.org/schema/core"'
            if tag not in xml:
                raise RuntimeError(
                    f"{xml_path}: no <broker> element to turn useMirroredQueues on in"
                )
            xml = xml.replace(tag, tag + ' useMirroredQueues="true"', 1)
        xml_path.write_text(xml)
    log_path = base / "activemq.out"
    cmd = [
        "java",
        "-Xms128m",
        "-Xmx1g",
        f"-Dactivemq.base={base}",
        f"-Dactivemq.home={ACTIVEMQ_HOME}",
        f"-Dactivemq.conf={conf}",
        f"-Dactivemq.data={base / 'data'}",
        "-jar",
        str(ACTIVEMQ_HOME / "bin" / "activemq.jar"),
        "start",
        f"xbean:file:{xml_path}",
    ]
    with open(log_path, "ab") as out:
        if in_host is not None:
            cmd = in_host.command(cmd)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    broker = BrokerProcess("activemq", host, port, proc, base, log_path)
    try:
        with in_host.inside() if in_host is not None else contextlib.nullcontext():
            wait_for_port(host, port, 90, proc)
    except Exception:
        broker.stop()
        raise RuntimeError(f"ActiveMQ did not start:\n{broker.log_tail()}") from None
    time.sleep(1.0)  # it accepts TCP slightly before the STOMP transport serves frames
    return broker

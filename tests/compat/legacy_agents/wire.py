"""The v28 agents' connections: their environment, their REST calls, their log handler, their STOMP
connection.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx
import stomp


def naive_now() -> str:
    """``datetime.now().isoformat()``: local time without a UTC offset, as v28 writes every
    timestamp.
    """
    return datetime.now().isoformat()


@dataclass(frozen=True)
class LegacyEnv:
    """The environment variables v28 agents read, with their defaults (not swf-testbed's)."""

    host: str = "localhost"
    port: int = 61612
    user: str = "admin"
    password: str = "admin"
    use_ssl: bool = False
    ssl_ca_certs: str = ""
    heartbeat_topic: str = "/topic/epictopic"
    monitor_url: str = "http://localhost:8002"
    monitor_http_url: str = "http://localhost:8002"
    api_token: str = ""

    @classmethod
    def from_environ(cls, environ: dict[str, str] | None = None) -> LegacyEnv:
        env = os.environ if environ is None else environ
        d = cls()
        return cls(
            host=env.get("ACTIVEMQ_HOST", d.host),
            port=int(env.get("ACTIVEMQ_PORT", d.port)),
            user=env.get("ACTIVEMQ_USER", d.user),
            password=env.get("ACTIVEMQ_PASSWORD", d.password),
            use_ssl=env.get("ACTIVEMQ_USE_SSL", "") == "true",  # only the exact string enables it
            ssl_ca_certs=env.get("ACTIVEMQ_SSL_CA_CERTS", ""),
            heartbeat_topic=env.get("ACTIVEMQ_HEARTBEAT_TOPIC", d.heartbeat_topic),
            monitor_url=env.get("SWF_MONITOR_URL", d.monitor_url).rstrip("/"),
            monitor_http_url=env.get("SWF_MONITOR_HTTP_URL", d.monitor_http_url).rstrip("/"),
            api_token=env.get("SWF_API_TOKEN", d.api_token),
        )


# --------------------------------------------------------------------------- REST

_ID_SEGMENT = re.compile(
    r"/(?:\d+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|"
    r"[A-Za-z_]+-[A-Za-z0-9_.]+-\d{4})(?=/)"
)


def endpoint_of(method: str, path: str) -> str:
    """``PATCH /api/stf-files/{id}/``: the call with its ids replaced, for per-endpoint figures."""
    return f"{method} {_ID_SEGMENT.sub('/{id}', path)}"


@dataclass
class Call:
    agent: str
    method: str
    path: str
    status: int | None  # None: no HTTP answer (connection refused, timeout)
    seconds: float
    anonymous: bool
    error: str = ""

    @property
    def endpoint(self) -> str:
        return endpoint_of(self.method, self.path)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class CallLog:
    """Every REST call of every agent, in order (appends are atomic under the GIL)."""

    calls: list[Call] = field(default_factory=list)

    def add(self, call: Call) -> None:
        self.calls.append(call)


class RestError(Exception):
    def __init__(self, call: Call, text: str) -> None:
        super().__init__(f"{call.method} {call.path}: {call.status} {text[:300]}")
        self.call = call


class Rest:
    """Plain HTTP as v28 agents make it: in series, Token auth, no redirects followed (a 3xx is an
    error).
    """

    def __init__(self, env: LegacyEnv, agent: str, log: CallLog, *, timeout: float = 60.0) -> None:
        self.env = env
        self.agent = agent
        self.log = log
        headers = {"Authorization": f"Token {env.api_token}"} if env.api_token else {}
        self._token = httpx.Client(
            base_url=env.monitor_url + "/api",
            headers=headers,
            timeout=timeout,
            follow_redirects=False,
        )
        self._anonymous = httpx.Client(
            base_url=env.monitor_http_url + "/api", timeout=timeout, follow_redirects=False
        )

    def close(self) -> None:
        self._token.close()
        self._anonymous.close()

    def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, Any] | None = None,
        anonymous: bool = False,
    ) -> Any:
        """The decoded JSON answer of a 2xx; otherwise :class:`RestError` (the call is logged either
        way).
        """
        client = self._anonymous if anonymous else self._token
        started = time.perf_counter()
        try:
            response = client.request(method, path, json=json_body, params=params)
        except httpx.HTTPError as exc:
            call = Call(
                self.agent, method, path, None, time.perf_counter() - started, anonymous, repr(exc)
            )
            self.log.add(call)
            raise RestError(call, repr(exc)) from exc
        call = Call(
            self.agent, method, path, response.status_code, time.perf_counter() - started, anonymous
        )
        if not call.ok:
            call.error = response.text[:500]
        self.log.add(call)
        if not call.ok:
            raise RestError(call, response.text)
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params=params or None)

    def post(self, path: str, body: Any = None) -> Any:
        return self.call("POST", path, json_body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, json_body=body)


class RestLogHandler(logging.Handler):
    """One anonymous ``POST {SWF_MONITOR_HTTP_URL}/api/logs/`` per record; after the first failure,
    silence.
    """

    def __init__(
        self, rest: Rest, app_name: str, instance_name: str, extra: Callable[[], dict[str, Any]]
    ) -> None:
        super().__init__(logging.DEBUG)
        self.rest = rest
        self.app_name = app_name
        self.instance_name = instance_name
        self.extra = extra
        self.stopped = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.stopped:
            return
        body = {
            "app_name": self.app_name,
            "instance_name": self.instance_name,
            "timestamp": datetime.fromtimestamp(record.created).isoformat(),
            "level": record.levelno,
            "levelname": record.levelname,
            "message": record.getMessage(),
            "module": record.module,
            "funcname": record.funcName,
            "lineno": record.lineno,
            "process": record.process,
            "thread": record.thread,
            "extra_data": self.extra(),
        }
        try:
            self.rest.call("POST", "/logs/", json_body=body, anonymous=True)
        except RestError:
            self.stopped = True  # what v28 does: no more log posts, and no word about it


# --------------------------------------------------------------------------- STOMP


class _Listener(stomp.ConnectionListener):
    def __init__(self, on_message: Callable[[dict[str, str], str], None]) -> None:
        self.on_message_cb = on_message
        self.receipts: set[str] = set()
        self.receipt_seen = threading.Condition()
        self.errors: list[str] = []
        self.connected = False

    def on_connected(self, frame: Any) -> None:
        self.connected = True

    def on_disconnected(self) -> None:
        self.connected = False

    def on_receipt(self, frame: Any) -> None:
        with self.receipt_seen:
            self.receipts.add(frame.headers.get("receipt-id", ""))
            self.receipt_seen.notify_all()

    def on_error(self, frame: Any) -> None:
        self.errors.append(f"{frame.headers.get('message', '')}: {frame.body}")

    def on_message(self, frame: Any) -> None:
        self.on_message_cb(dict(frame.headers), frame.body)


class Stomp:
    """One v28 connection: STOMP 1.1, vhost = host, heart-beat 30000,30000, ``client-id`` = the
    agent's name.
    """

    def __init__(
        self, env: LegacyEnv, agent_name: str, on_message: Callable[[dict[str, str], str], None]
    ) -> None:
        self.env = env
        self.agent_name = agent_name
        self.listener = _Listener(on_message)
        self.conn = stomp.Connection11(
            [(env.host, env.port)], vhost=env.host, heartbeats=(30000, 30000)
        )
        if env.use_ssl:
            self.conn.set_ssl(for_hosts=[(env.host, env.port)], ca_certs=env.ssl_ca_certs or None)
        self.conn.set_listener("v28", self.listener)

    def connect(self) -> None:
        self.conn.connect(
            self.env.user, self.env.password, wait=True, headers={"client-id": self.agent_name}
        )

    def subscribe(self, destination: str, timeout: float = 60.0) -> None:
        """``ack: auto``, no durable headers; waited for by a receipt
        (see the package's docstring).
        """
        receipt = f"{self.agent_name}-sub"
        self.conn.subscribe(
            destination, id=f"{self.agent_name}-1", ack="auto", headers={"receipt": receipt}
        )
        with self.listener.receipt_seen:
            if not self.listener.receipt_seen.wait_for(
                lambda: receipt in self.listener.receipts, timeout
            ):
                raise TimeoutError(
                    f"{self.agent_name}: no receipt for SUBSCRIBE {destination} "
                    f"after {timeout:g} s ({self.listener.errors})"
                )

    def send(
        self, destination: str, body: dict[str, Any], headers: dict[str, Any] | None = None
    ) -> None:
        self.conn.send(destination, json.dumps(body), headers=headers or {})

    def close(self) -> None:
        if self.conn.is_connected():
            self.conn.disconnect()

"""A Server-Sent Events reader over httpx for the stream tests (events collected by a thread)."""

from __future__ import annotations

import json
import queue
import threading
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    event: str
    data: str
    id: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


class StreamReader:
    """``GET url`` as a stream; every event lands in
    :attr:`events` (a queue) until :meth:`close`.
    """

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        read_timeout: float = 120.0,
    ) -> None:
        self.events: queue.Queue[Event | BaseException] = queue.Queue()
        self.status_code: int | None = None
        self.content_type = ""
        self._ready = threading.Event()
        self._client = httpx.Client(timeout=httpx.Timeout(30.0, read=read_timeout))
        self._closed = False
        self._thread = threading.Thread(
            target=self._read, args=(url, headers or {}, params or {}), daemon=True
        )
        self._thread.start()
        if not self._ready.wait(60):
            raise AssertionError(f"no answer from {url} within 60 s")

    def _read(self, url: str, headers: dict[str, str], params: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers, params=params) as response:
                self.status_code = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self._ready.set()
                fields: dict[str, list[str]] = {}
                for line in response.iter_lines():
                    if line == "":
                        if fields:
                            self.events.put(
                                Event(
                                    event=(fields.get("event") or ["message"])[-1],
                                    data="\n".join(fields.get("data", [])),
                                    id=(fields.get("id") or [None])[-1],
                                )
                            )
                        fields = {}
                        continue
                    if line.startswith(":"):
                        continue
                    name, _, value = line.partition(":")
                    fields.setdefault(name, []).append(
                        value[1:] if value.startswith(" ") else value
                    )
        except BaseException as exc:  # noqa: BLE001 - handed to the test that waits
            if not self._closed:
                self.events.put(exc)
        finally:
            self._ready.set()

    def next(self, timeout: float = 60.0, *, skip: tuple[str, ...] = ("heartbeat",)) -> Event:
        """The next event not named in ``skip`` (the test fails when none comes in ``timeout``)."""
        while True:
            try:
                item = self.events.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"no event within {timeout:g} s") from None
            if isinstance(item, BaseException):
                raise AssertionError(f"the stream failed: {item!r}")
            if item.event not in skip:
                return item

    def take(self, count: int, timeout: float = 60.0, **kwargs: Any) -> list[Event]:
        return [self.next(timeout, **kwargs) for _ in range(count)]

    def close(self) -> None:
        self._closed = True
        self._client.close()
        self._thread.join(10)

"""Agent health from heartbeats, and what is known about workflow executions.

Liveness is :mod:`swf_testbed.liveness`'s one rule (the monitor's too),
applied to the time the last heartbeat was heard against the interval the
agent declares in it: ``ok``, ``late``, ``down``, or ``exited`` when the agent
said EXITED. An agent is *healthy* when it is ``ok`` and READY or PROCESSING
(a busy agent is alive and connected; requiring READY would make a running
workflow look like a failure).

The heartbeat book is fed live by a broker subscription and from the watch
file that the namespace's ``watch`` program keeps (so that ``status`` and a
second ``run`` know at once what was heard before they started).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from swf_testbed.liveness import SLACK_S, Liveness, healthy, liveness
from swf_testbed.messages import (
    Heartbeat,
    Message,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)


@dataclass
class BeatRecord:
    """The last heartbeat heard from one agent process."""

    agent_name: str
    instance_id: str
    pid: int
    hostname: str
    operational_state: str
    status: str
    interval_s: float
    mq_connected: bool
    received_at: float  # epoch seconds, when we heard it
    counters: dict[str, int] = field(default_factory=dict)
    agent_type: str = ""

    @classmethod
    def from_message(cls, hb: Heartbeat, received_at: float | None = None) -> BeatRecord:
        return cls(
            agent_name=hb.agent_name,
            instance_id=hb.instance_id,
            pid=hb.pid,
            hostname=hb.hostname,
            operational_state=str(hb.operational_state.value),
            status=str(hb.status.value),
            interval_s=hb.interval_s,
            mq_connected=hb.mq_connected,
            received_at=received_at if received_at is not None else time.time(),
            counters=dict(hb.counters),
            agent_type=hb.agent_type,
        )

    def age(self, now: float | None = None) -> float:
        return max(0.0, (now if now is not None else time.time()) - self.received_at)

    def liveness(self, now: float | None = None) -> Liveness:
        """ok, late, down, or exited (see :mod:`swf_testbed.liveness`)."""
        return liveness(
            self.age(now),
            self.interval_s,
            exited=self.operational_state == "EXITED",
            slack_s=SLACK_S,
        )

    def healthy(self, now: float | None = None) -> bool:
        return healthy(self.liveness(now), self.operational_state)


class HeartbeatBook:
    """The newest heartbeat of every agent process of one namespace."""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        self._records: dict[str, BeatRecord] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()

    def observe(self, msg: Message, received_at: float | None = None) -> bool:
        if not isinstance(msg, Heartbeat) or msg.namespace != self.namespace:
            return False
        self.add(BeatRecord.from_message(msg, received_at))
        return True

    def add(self, rec: BeatRecord) -> None:
        with self._lock:
            old = self._records.get(rec.instance_id)
            if old is None or rec.received_at >= old.received_at:
                self._records[rec.instance_id] = rec
        self.changed.set()

    def records(self) -> list[BeatRecord]:
        with self._lock:
            return list(self._records.values())

    def prune(self, max_age: float = 3600.0, exited_age: float = 600.0) -> None:
        now = time.time()
        with self._lock:
            for key, rec in list(self._records.items()):
                age = rec.age(now)
                if age > max_age or (rec.operational_state == "EXITED" and age > exited_age):
                    del self._records[key]

    def match(
        self,
        agent_name: str,
        pid: int | None,
        *,
        started_at: float | None = None,
        single: bool = True,
        hostname: str | None = None,
    ) -> BeatRecord | None:
        """The heartbeat of the process ``pid`` of ``agent_name``.

        Heartbeats carry the pid of the agent process, which is the pid
        supervisord started unless a script wraps the agent (a shell, say);
        for a single-instance agent we then take its newest heartbeat heard
        after the process started.
        """
        candidates = [
            r
            for r in self.records()
            if r.agent_name == agent_name and (hostname is None or r.hostname == hostname)
        ]
        if pid:
            exact = [r for r in candidates if r.pid == pid]
            if exact:
                return max(exact, key=lambda r: r.received_at)
        if single:
            since = started_at or 0.0
            later = [r for r in candidates if r.received_at >= since and (not pid or r.pid != pid)]
            if later:
                return max(later, key=lambda r: r.received_at)
        return None

    def latest(self, agent_name: str) -> BeatRecord | None:
        records = [r for r in self.records() if r.agent_name == agent_name]
        return max(records, key=lambda r: r.received_at) if records else None


# --------------------------------------------------------------------------- executions


@dataclass
class ExecutionRecord:
    execution_id: str
    workflow_name: str
    status: str  # running | completed | terminated | failed
    started_at: float
    ended_at: float | None = None
    error: str = ""
    stf_count: int | None = None


class ExecutionBook:
    """Workflow executions of one namespace, as heard on its replies topic."""

    def __init__(self, namespace: str, keep: int = 20) -> None:
        self.namespace = namespace
        self.keep = keep
        self._items: dict[str, ExecutionRecord] = {}
        self._lock = threading.Lock()

    def observe(self, msg: Message, received_at: float | None = None) -> bool:
        if msg.namespace != self.namespace:
            return False
        now = received_at if received_at is not None else time.time()
        with self._lock:
            if isinstance(msg, WorkflowStarted):
                rec = self._items.get(msg.execution_id)
                if rec is None:
                    self._items[msg.execution_id] = ExecutionRecord(
                        msg.execution_id, msg.workflow_name, "running", now
                    )
            elif isinstance(msg, WorkflowCompleted):
                rec = self._items.setdefault(
                    msg.execution_id,
                    ExecutionRecord(msg.execution_id, msg.workflow_name, msg.status, now),
                )
                rec.status, rec.ended_at, rec.stf_count = msg.status, now, msg.stf_count
            elif isinstance(msg, WorkflowFailed) and msg.execution_id and not msg.refused:
                rec = self._items.setdefault(
                    msg.execution_id,
                    ExecutionRecord(msg.execution_id, msg.workflow_name, "failed", now),
                )
                rec.status, rec.ended_at, rec.error = "failed", now, msg.error
            else:
                return False
            while len(self._items) > self.keep:
                oldest = min(self._items.values(), key=lambda r: r.started_at)
                del self._items[oldest.execution_id]
        return True

    def add(self, rec: ExecutionRecord) -> None:
        with self._lock:
            old = self._items.get(rec.execution_id)
            if old is None or (old.status == "running" and rec.status != "running"):
                self._items[rec.execution_id] = rec

    def records(self) -> list[ExecutionRecord]:
        with self._lock:
            return sorted(self._items.values(), key=lambda r: r.started_at)

    def latest(self) -> ExecutionRecord | None:
        items = self.records()
        return items[-1] if items else None

    def running(self) -> ExecutionRecord | None:
        running = [r for r in self.records() if r.status == "running"]
        return running[-1] if running else None


# --------------------------------------------------------------------------- the watch file


WATCH_STALE_S = 6.0
"""The watch writes its file at least every 2 s; older than this, it is not running."""


def write_watch_file(
    path: Path, namespace: str, beats: HeartbeatBook, executions: ExecutionBook, connected: bool
) -> None:
    data = {
        "namespace": namespace,
        "updated_at": time.time(),
        "broker_connected": connected,
        "pid": os.getpid(),
        "hostname": socket.gethostname(),
        "heartbeats": [asdict(r) for r in beats.records()],
        "executions": [asdict(r) for r in executions.records()],
    }
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


@dataclass
class WatchSnapshot:
    updated_at: float
    broker_connected: bool
    heartbeats: list[BeatRecord]
    executions: list[ExecutionRecord]
    pid: int = 0
    hostname: str = ""

    @property
    def fresh(self) -> bool:
        return time.time() - self.updated_at <= WATCH_STALE_S


def read_watch_file(path: Path) -> WatchSnapshot | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return WatchSnapshot(
            updated_at=float(data.get("updated_at", 0)),
            broker_connected=bool(data.get("broker_connected", False)),
            heartbeats=[BeatRecord(**h) for h in data.get("heartbeats", [])],
            executions=[ExecutionRecord(**e) for e in data.get("executions", [])],
            pid=int(data.get("pid", 0)),
            hostname=str(data.get("hostname", "")),
        )
    except (OSError, ValueError, TypeError):
        return None

"""The v28 agents of a fast-processing run: the workflow runner (with its DAQ), data, fastmon, fast
processing.
"""

from __future__ import annotations

import getpass
import inspect
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .wire import CallLog, LegacyEnv, Rest, RestError, RestLogHandler, Stomp, naive_now

PROCESSING_QUEUE = "/queue/processing_agent"
SLICE_QUEUE = "/queue/panda.transformer.slices"
CONTROL_QUEUE = "/queue/workflow_control"
TFS_PER_STF = 1000


@dataclass
class RunOptions:
    stfs: int = 10
    sampling_rate: float = 1.0
    slices_per_sample: int = 15
    paced: bool = False
    stf_interval_s: float = 0.6
    imminent_s: float = 1.0
    pause_after: int = 0  # 0 = no pause; else pause_run after this STF, resume_run pause_s later
    pause_s: float = 1.0
    workflow_name: str = "stf_datataking"
    workflow_version: str = "1.0"
    heartbeat_interval_s: float = 60.0
    target_worker_count: int = 30

    def sampled(self, sequence: int) -> bool:
        """Deterministic sampling: STF ``k`` is sampled when ``floor(k·rate)`` grows."""
        return math.floor(sequence * self.sampling_rate) > math.floor(
            (sequence - 1) * self.sampling_rate
        )


@dataclass
class Context:
    """What the agents of this one process share."""

    env: LegacyEnv
    namespace: str
    options: RunOptions
    user: str = field(default_factory=getpass.getuser)
    calls: CallLog = field(default_factory=CallLog)
    sent: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    file_ids: dict[str, str] = field(default_factory=dict)
    file_registered: threading.Condition = field(default_factory=threading.Condition)

    def register_file(self, filename: str, file_id: str) -> None:
        with self.file_registered:
            self.file_ids[filename] = file_id
            self.file_registered.notify_all()

    def file_id(self, filename: str, timeout: float = 120.0) -> str | None:
        with self.file_registered:
            self.file_registered.wait_for(lambda: filename in self.file_ids, timeout)
            return self.file_ids.get(filename)


class LegacyAgent:
    """What the BaseAgent library does for every agent: name, connection, subscriber, heartbeats,
    logs.
    """

    agent_type = "BASE"
    app_name = "base"
    subscribes_to = "/topic/epictopic"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.name = ""
        self.rest = Rest(ctx.env, self.app_name, ctx.calls)
        self.log = logging.getLogger(f"legacy.{self.app_name}.{id(self)}")
        self.stomp: Stomp | None = None
        self.execution_id = ""
        self.run_id = ""
        self.stf_count = 0
        self.processed = 0
        self.operational_state = "STARTING"
        self.run_done = threading.Event()
        self._stop = threading.Event()
        self._beater: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self, max_wait_s: float = 120.0) -> None:
        self.name = (
            f"{self.agent_type.lower()}-agent-{self.ctx.user}-{self._next_agent_id(max_wait_s)}"
        )
        self.log.setLevel(logging.DEBUG)
        self.log.propagate = False
        self.handler = RestLogHandler(self.rest, self.app_name, self.name, self._log_extra)
        self.log.addHandler(self.handler)
        self.stomp = Stomp(self.ctx.env, self.name, self._on_frame)
        self.stomp.connect()
        self.stomp.subscribe(self.subscribes_to)
        self._subscriber()
        self.heartbeat("OK", "STARTING")
        self.log.info(
            "%s connected to %s:%s, listening on %s",
            self.name,
            self.ctx.env.host,
            self.ctx.env.port,
            self.subscribes_to,
        )
        self.heartbeat("OK", "READY")
        self._beater = threading.Thread(
            target=self._beat, name=f"{self.name}-heartbeat", daemon=True
        )
        self._beater.start()

    def stop(self, *, exited: bool = True) -> None:
        self._stop.set()
        if exited:
            self.heartbeat("EXITED", "EXITED")
        if self.stomp is not None:
            self.stomp.close()
        self.rest.close()

    def _next_agent_id(self, max_wait_s: float) -> int:
        """``POST /state/next-agent-id/``, retried (v28: for ever; here for ``max_wait_s``)."""
        deadline = time.monotonic() + max_wait_s
        while True:
            try:
                return int(self.rest.post("/state/next-agent-id/")["agent_id"])
            except RestError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _subscriber(self) -> None:
        body = {
            "subscriber_name": f"{self.name}-{self.subscribes_to}",
            "description": f"{self.app_name} agent",
            "is_active": True,
            "fraction": 1.0,
        }
        try:
            self.rest.post("/subscribers/", body)
        except RestError as exc:
            if not (exc.call.status == 400 and "already exists" in exc.call.error):
                self._error(f"subscriber registration failed: {exc}")

    def heartbeat(self, status: str, operational_state: str | None = None) -> None:
        if operational_state:
            self.operational_state = operational_state
        body = {
            "instance_name": self.name,
            "agent_type": self.agent_type,
            "status": status,
            "description": f"{self.app_name} agent (v28)",
            "mq_connected": bool(self.stomp and self.stomp.listener.connected),
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "operational_state": self.operational_state,
            "namespace": self.ctx.namespace,
            "workflow_enabled": True,
            "current_stf_count": self.stf_count,
            "total_stf_processed": self.processed,
        }
        try:
            self.rest.post("/systemagents/heartbeat/", body)
        except RestError as exc:
            self._error(f"heartbeat failed: {exc}")

    def _beat(self) -> None:
        while not self._stop.wait(self.ctx.options.heartbeat_interval_s):
            self.heartbeat("OK")

    def _log_extra(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "workflow_name": self.ctx.options.workflow_name,
            "run_id": self.run_id,
            "username": self.ctx.user,
        }

    def _error(self, text: str) -> None:
        self.ctx.errors.append(f"{self.name}: {text}")
        self.log.error(text)

    # ----------------------------------------------------------------- messages

    def send_message(
        self,
        destination: str,
        body: dict[str, Any],
        headers: dict[str, Any] | None = None,
        *,
        by_library: bool = True,
    ) -> None:
        """Send a body; the library adds ``namespace`` and ``sender`` (the slices are sent without
        it).
        """
        if by_library:
            body = {**body, "namespace": self.ctx.namespace, "sender": self.name}
        assert self.stomp is not None
        self.stomp.send(destination, body, headers)
        self.ctx.sent.append(
            {
                "destination": destination,
                "msg_type": body.get("msg_type"),
                "headers": headers or {},
                "body": body,
            }
        )

    def _on_frame(self, headers: dict[str, str], raw: str) -> None:
        try:
            body = json.loads(raw)
        except ValueError:
            self.log.warning("not JSON: %r", raw[:200])
            return
        msg_type = body.get("msg_type") if isinstance(body, dict) else None
        handler = getattr(self, f"on_{msg_type}", None)
        if handler is None:
            return
        if "execution_id" in body:
            self.execution_id = body["execution_id"]
        if "run_id" in body:
            self.run_id = body["run_id"]
        try:
            handler(body)
        except Exception as exc:  # noqa: BLE001 - v28 agents log and carry on
            self._error(f"handling {msg_type} failed: {exc!r}")
        if msg_type == "end_run":
            self.run_done.set()


# ------------------------------------------------------------------ the workflow runner and its DAQ


class WorkflowRunner(LegacyAgent):
    """Runs the workflow once: its REST sequence, then the DAQ's messages on the heartbeat topic."""

    agent_type = "WorkflowRunner"
    app_name = "workflow_runner"
    subscribes_to = CONTROL_QUEUE

    def run(self) -> tuple[str, int]:
        o = self.ctx.options
        sequence = self.rest.post(
            "/state/next-workflow-execution-id/", {"workflow_name": o.workflow_name}
        )["sequence"]
        self.execution_id = f"{o.workflow_name}-{self.ctx.user}-{int(sequence):04d}"
        parameters = {
            "stf_count": o.stfs,
            "stf_interval": o.stf_interval_s,
            "stf_sampling_rate": o.sampling_rate,
            "slices_per_sample": o.slices_per_sample,
            "realtime": o.paced,
            "target_worker_count": o.target_worker_count,
        }
        found = self.rest.get(
            "/workflow-definitions/", workflow_name=o.workflow_name, version=o.workflow_version
        )
        if found:
            definition_id = found[0]["id"]
        else:
            definition_id = self.rest.post(
                "/workflow-definitions/",
                {
                    "workflow_name": o.workflow_name,
                    "version": o.workflow_version,
                    "workflow_type": "simulation",
                    "definition": inspect.getsource(WorkflowRunner),
                    "parameter_values": parameters,
                    "created_by": self.ctx.user,
                    "created_at": naive_now(),
                },
            )["id"]
        self.rest.post("/namespaces/ensure/", {"name": self.ctx.namespace, "owner": self.ctx.user})
        self.rest.post(
            "/workflow-executions/",
            {
                "execution_id": self.execution_id,
                "workflow_definition": definition_id,
                "namespace": self.ctx.namespace,
                "status": "running",
                "executed_by": self.ctx.user,
                "start_time": naive_now(),
                "parameter_values": parameters,
            },
        )
        self.log.info("workflow %s started: execution %s", o.workflow_name, self.execution_id)
        status = "failed"
        try:
            run_number = int(self.rest.post("/state/next-run-number/")["run_number"])
            self.run_id = str(run_number)
            self.rest.post(
                "/run-states/",
                {
                    "run_number": run_number,
                    "phase": "initializing",
                    "state": "imminent",
                    "substate": "preparing",
                    "target_worker_count": o.target_worker_count,
                    "active_worker_count": 0,
                    "stf_samples_received": 0,
                    "slices_created": 0,
                    "slices_queued": 0,
                    "slices_processing": 0,
                    "slices_completed": 0,
                    "slices_failed": 0,
                    "state_changed_at": naive_now(),
                    "metadata": {
                        "execution_id": self.execution_id,
                        "stf_sampling_rate": o.sampling_rate,
                        "slices_per_sample": o.slices_per_sample,
                    },
                },
            )
            self.heartbeat("OK", "PROCESSING")
            self._daq(run_number)
            status = "completed"
        finally:
            self.rest.patch(
                f"/workflow-executions/{self.execution_id}/",
                {"status": status, "end_time": naive_now()},
            )
            self.log.info("workflow %s %s", self.execution_id, status)
            self.heartbeat("OK", "READY")
        return self.execution_id, run_number

    def _daq(self, run_number: int) -> None:
        o = self.ctx.options
        tick = 0.0

        def wait(seconds: float) -> None:
            nonlocal tick
            tick += seconds
            if o.paced:
                time.sleep(seconds)

        def broadcast(msg_type: str, **fields: Any) -> None:
            self.send_message(
                self.ctx.env.heartbeat_topic,
                {
                    "msg_type": msg_type,
                    "execution_id": self.execution_id,
                    "run_id": str(run_number),
                    "timestamp": naive_now(),
                    "simulation_tick": round(tick, 3),
                    **fields,
                },
            )

        broadcast("run_imminent", state="beam", substate="not_ready")
        self.log.info("run %s imminent", run_number)
        wait(o.imminent_s)
        broadcast("start_run", state="run", substate="physics")
        self.log.info("run %s started", run_number)
        for sequence in range(1, o.stfs + 1):
            wait(o.stf_interval_s)
            filename = f"swf.{run_number}.{sequence:06d}.stf"
            broadcast(
                "stf_gen", filename=filename, sequence=sequence, state="run", substate="physics"
            )
            self.stf_count = sequence
            self.log.info("STF %s generated", filename)
            self.log.debug("simulation tick %.3f", tick)
            if sequence == o.pause_after and sequence < o.stfs:
                broadcast("pause_run", state="run", substate="standby", reason="beam tuning")
                self.log.info("run %s paused", run_number)
                wait(o.pause_s)
                broadcast("resume_run", state="run", substate="physics")
                self.log.info("run %s resumed", run_number)
        wait(o.stf_interval_s)
        broadcast("end_run", total_stf_files=o.stfs)
        self.log.info("run %s ended after %d STFs", run_number, o.stfs)


# --------------------------------------------------------------------------- the data agent


class DataAgent(LegacyAgent):
    agent_type = "DATA"
    app_name = "data"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.db_run_id: int | None = None

    def on_run_imminent(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s imminent: registering it", msg["run_id"])
        run = self.rest.post(
            "/runs/",
            {
                "run_number": int(msg["run_id"]),
                "start_time": naive_now(),
                "run_conditions": {
                    "state": msg.get("state"),
                    "substate": msg.get("substate"),
                    "simulation_tick": msg.get("simulation_tick"),
                },
            },
        )
        self.db_run_id = int(run["run_id"])
        self.heartbeat("OK", "PROCESSING")

    def on_start_run(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s started", msg["run_id"])

    def on_pause_run(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s paused: %s", msg["run_id"], msg.get("reason", ""))

    def on_resume_run(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s resumed", msg["run_id"])

    def on_stf_gen(self, msg: dict[str, Any]) -> None:
        filename = msg["filename"]
        self.stf_count += 1
        self.log.info("STF %s received", filename)
        end = datetime.now()
        start = end - timedelta(seconds=self.ctx.options.stf_interval_s)
        size = 2_000_000_000 + (zlib.crc32(filename.encode()) % 1_000_000)
        record = self.rest.post(
            "/stf-files/",
            {
                "run": self.db_run_id,
                "stf_filename": filename,
                "file_size_bytes": size,
                "machine_state": msg.get("substate", ""),
                "status": "registered",
                "metadata": {
                    "created_by": self.name,
                    "substate": msg.get("substate"),
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                    "sequence": msg["sequence"],
                },
            },
        )
        file_id = record["file_id"]
        self.ctx.register_file(filename, file_id)
        self.log.info("STF %s registered as %s", filename, file_id)
        self.send_message(
            PROCESSING_QUEUE,
            {
                "msg_type": "stf_ready",
                "filename": filename,
                "run_id": msg["run_id"],
                "file_url": f"file:///data/{filename}",
                "checksum": f"{zlib.adler32(filename.encode()):08x}",
                "size_bytes": size,
                "start": start.isoformat(),
                "end": end.isoformat(),
                "state": msg.get("state"),
                "substate": msg.get("substate"),
                "sequence": msg["sequence"],
                "simulation_tick": msg.get("simulation_tick"),
                "processed_by": self.name,
            },
        )
        self.log.info("stf_ready sent for %s", filename)
        self.rest.patch(
            f"/stf-files/{file_id}/",
            {
                "status": "processed",
                "metadata": {"processed_by": self.name, "updated_at": naive_now()},
            },
        )
        self.processed += 1
        self.log.info("STF %s processed", filename)

    def on_end_run(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s ended: %s STFs", msg["run_id"], msg.get("total_stf_files"))
        if self.db_run_id is not None:
            self.rest.patch(f"/runs/{self.db_run_id}/", {"end_time": naive_now()})
        self.heartbeat("OK", "READY")


# --------------------------------------------------------------------------- fastmon


def tf_filename_of(stf_filename: str) -> str:
    return stf_filename.removesuffix(".stf") + ".tf"


class FastMonAgent(LegacyAgent):
    agent_type = "FASTMON"
    app_name = "fastmon"

    def on_run_imminent(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s imminent", msg["run_id"])
        self.heartbeat("OK", "PROCESSING")

    def on_stf_gen(self, msg: dict[str, Any]) -> None:
        filename = msg["filename"]
        self.stf_count += 1
        if not self.ctx.options.sampled(int(msg["sequence"])):
            return
        self.log.info("sampling STF %s", filename)
        file_id = self.ctx.file_id(filename)
        if file_id is None:
            self._error(f"STF {filename} never registered by the data agent")
            return
        tf_filename = tf_filename_of(filename)
        self.rest.post(
            "/fastmon-files/",
            {
                "stf_file": file_id,
                "tf_filename": tf_filename,
                "file_size_bytes": 300_000_000,
                "status": "registered",
                "metadata": {
                    "created_by": self.name,
                    "tf_first": 0,
                    "tf_last": TFS_PER_STF - 1,
                    "tf_count": TFS_PER_STF,
                    "run_id": msg["run_id"],
                },
            },
        )
        self.processed += 1
        self.log.info("TF file %s registered", tf_filename)

    def on_end_run(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s ended", msg["run_id"])
        self.heartbeat("OK", "READY")


# --------------------------------------------------------------------------- fast processing


class FastProcessingAgent(LegacyAgent):
    agent_type = "FAST_PROCESSING"
    app_name = "fast_processing"

    def _state_event(self, run_number: int, event_type: str, data: dict[str, Any]) -> None:
        try:
            self.rest.post(
                "/system-state-events/",
                {
                    "timestamp": naive_now(),
                    "run_number": run_number,
                    "event_type": event_type,
                    "state": "unknown",
                    "substate": None,
                    "event_data": data,
                },
            )
        except RestError as exc:
            self._error(f"system state event failed: {exc}")

    def on_run_imminent(self, msg: dict[str, Any]) -> None:
        self.log.info("run %s imminent: preparing workers", msg["run_id"])
        self.heartbeat("OK", "PROCESSING")
        self._state_event(int(msg["run_id"]), "run_imminent", {"execution_id": msg["execution_id"]})

    def on_start_run(self, msg: dict[str, Any]) -> None:
        self.rest.patch(
            f"/run-states/{int(msg['run_id'])}/",
            {"phase": "running", "state": "run", "substate": "physics"},
        )
        self.log.info("run %s started", msg["run_id"])

    def on_stf_gen(self, msg: dict[str, Any]) -> None:
        run_number = int(msg["run_id"])
        filename = msg["filename"]
        self.stf_count += 1
        self.log.info("STF %s received", filename)
        if not self.ctx.options.sampled(int(msg["sequence"])):
            return
        execution = self.rest.get(f"/workflow-executions/{msg['execution_id']}/")
        params = execution.get("parameter_values") or {}
        slices = int(params.get("slices_per_sample", self.ctx.options.slices_per_sample))
        self.log.info("sampling %s into %d slices", filename, slices)
        self.rest.patch(
            f"/run-states/{run_number}/",
            {
                "phase": "processing",
                "state": msg.get("state", "run"),
                "substate": msg.get("substate", "physics"),
            },
        )
        state = self.rest.get(f"/run-states/{run_number}/")
        self.rest.patch(
            f"/run-states/{run_number}/",
            {
                "stf_samples_received": int(state.get("stf_samples_received", 0)) + 1,
                "slices_created": int(state.get("slices_created", 0)) + slices,
                "slices_queued": int(state.get("slices_queued", 0)) + slices,
                "state_changed_at": naive_now(),
            },
        )
        self.log.info(
            "run state %s: %d samples", run_number, int(state.get("stf_samples_received", 0)) + 1
        )
        tf_filename = tf_filename_of(filename)
        for slice_id in range(1, slices + 1):
            first = (slice_id - 1) * TFS_PER_STF // slices
            last = slice_id * TFS_PER_STF // slices - 1
            self.rest.post(
                "/tf-slices/",
                {
                    "slice_id": slice_id,
                    "tf_first": first,
                    "tf_last": last,
                    "tf_count": last - first + 1,
                    "tf_filename": tf_filename,
                    "stf_filename": filename,
                    "run_number": run_number,
                    "status": "queued",
                    "retries": 0,
                    "metadata": {"execution_id": msg["execution_id"], "created_by": self.name},
                },
            )
            self.log.info("slice %d of %s created", slice_id, tf_filename)
            content = {
                "run_id": msg["run_id"],
                "execution_id": msg["execution_id"],
                "req_id": str(uuid.uuid4()),
                "filename": filename,
                "tf_filename": tf_filename,
                "slice_id": slice_id,
                "start": first,
                "end": last,
                "tf_count": last - first + 1,
                "state": "queued",
                "substate": "new",
            }
            self.send_message(
                SLICE_QUEUE,
                {
                    "msg_type": "slice",
                    "run_id": msg["run_id"],
                    "created_at": datetime.now(UTC).isoformat(),
                    "content": content,
                },
                headers={
                    "persistent": "true",
                    "ttl": "43200000",
                    "vo": "eic",
                    "msg_type": "slice",
                    "run_id": msg["run_id"],
                },
                by_library=False,
            )
            self.log.info("slice %d of %s sent", slice_id, tf_filename)
        self._state_event(
            run_number,
            "stf_sampled",
            {"stf_filename": filename, "slices": slices, "execution_id": msg["execution_id"]},
        )
        self.processed += 1

    def on_end_run(self, msg: dict[str, Any]) -> None:
        run_number = int(msg["run_id"])
        self.rest.patch(
            f"/run-states/{run_number}/",
            {"phase": "ended", "state": "beam", "substate": "not_ready"},
        )
        self._state_event(run_number, "run_ended", {"total_stf_files": msg.get("total_stf_files")})
        self.log.info("run %s ended", msg["run_id"])
        self.heartbeat("OK", "READY")

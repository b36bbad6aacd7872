"""Replay of an exported execution: its run messages published again in another namespace, re-timed.

Only the messages that started the chain are replayed: those the DAQ sent on
the run topic (``run_imminent``, ``start_run``, ``pause_run``,
``resume_run``, ``stf_gen``, ``end_run``), or the subset of them chosen. The
agents of the target namespace then do what they did in the recording.

What is made new, so that the replay stands beside the recording in one
monitor (whose runs, STF files and samples are unique by number and name):

* ``namespace``: the target namespace;
* ``execution_id``: a new one, of the runner's form
  ``<workflow>-<namespace>-<UTC time>-<6 hex>``; the replay announces it with a
  ``workflow_started`` (the recorded config, plus ``replay_of``: the recorded
  execution id) and ends it with ``workflow_completed`` (``terminated`` when
  the replay was interrupted);
* ``run_id``: a new number per recorded run, the way the runner allocates
  them (seconds since 2024-01-01, above the recorded number);
* ``msg_id``, ``sender`` (``replay``) and ``timestamp`` (the time of sending);
  an STF's ``start`` / ``end`` move by as much as its message's time;
* STF file names: ``swf.<run>.<seq>.stf`` gets the new run number
  (``swf.<new run>.<seq>.stf``); any other name gets ``r<new run>`` after its
  first dot-separated element (``swf.20261202.034842.run.physics.stf`` →
  ``swf.r<new run>.20261202.034842.run.physics.stf``). The simulated checksum
  (adler32 of ``<name>:<size>``) is recomputed for the new name when the
  recorded one was of that form.

Everything else (run conditions, sizes, sequences, TF counts, DAQ states)
is as recorded. Timing: the gaps between the recorded messages' timestamps,
divided by the speed, or none.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from swf_testbed.agents.runner import RUN_ID_EPOCH, new_execution_id
from swf_testbed.daq.simulator import stf_checksum
from swf_testbed.messages import (
    DaqState,
    DaqSubstate,
    EndRun,
    MessageError,
    RunMessage,
    StfGen,
    WorkflowCompleted,
    WorkflowStarted,
    new_msg_id,
    parse_received,
    peek_fields,
    to_ours,
    utcnow,
)
from swf_testbed.mq.destinations import RUN_TOPIC, Destination, replies_topic

REPLAYABLE = ("run_imminent", "start_run", "pause_run", "resume_run", "stf_gen", "end_run")
"""The messages that start the chain: the DAQ's, on the run topic."""

SENDER = "replay"
_RUN_TOPIC_ADDRESSES = {str(RUN_TOPIC), f"topic://{RUN_TOPIC.name}", RUN_TOPIC.name}


class ReplayError(ValueError):
    """The replay cannot be made as asked (an unknown type, nothing to replay)."""


def parse_types(text: str | None) -> tuple[str, ...]:
    """``a,b`` → the message types to replay (all of :data:`REPLAYABLE` when None)."""
    if text is None:
        return REPLAYABLE
    types = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in types if t not in REPLAYABLE]
    if unknown or not types:
        raise ReplayError(
            f"--types {text!r}: {', '.join(unknown) or 'no type given'}; "
            f"replayable are {', '.join(REPLAYABLE)}"
        )
    return types


def new_run_number(recorded: int, previous: int = 0, now: datetime | None = None) -> int:
    """A run number as the runner allocates one, above the recorded one and the previous new one."""
    seconds = int(((now or datetime.now(UTC)) - RUN_ID_EPOCH).total_seconds())
    return max(seconds, recorded + 1, previous + 1)


def renamed_file(name: str, recorded_run: int, new_run: int) -> str:
    """The STF file name in the replayed run (see the module docstring)."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[1].isdigit() and int(parts[1]) == recorded_run:
        parts[1] = f"{new_run:0{len(parts[1])}d}"
        return ".".join(parts)
    if len(parts) == 1:
        return f"{name}.r{new_run}"
    return ".".join([parts[0], f"r{new_run}", *parts[1:]])


@dataclass
class Recorded:
    """One message to replay: where it was in the file, and its recorded form."""

    line: int
    message: RunMessage


@dataclass
class ReplayPlan:
    """What a replay will send, built from an export before anything is sent."""

    source_execution: str
    namespace: str
    execution_id: str
    workflow_started: WorkflowStarted
    messages: list[Recorded]
    run_numbers: dict[int, int]
    skipped: list[str] = field(default_factory=list)
    """``file:line: why`` of each selected message our schema cannot send (e.g. stored invalid)."""

    @property
    def recorded_offsets(self) -> list[float]:
        """Seconds since the first replayed message, as recorded (never going backwards)."""
        if not self.messages:
            return []
        first = self.messages[0].message.timestamp
        offsets: list[float] = []
        for rec in self.messages:
            offsets.append(
                max(
                    offsets[-1] if offsets else 0.0, (rec.message.timestamp - first).total_seconds()
                )
            )
        return offsets

    def renamed(self, msg: RunMessage, sent_at: datetime) -> RunMessage:
        """The recorded message as sent into the new namespace (validated again: strict on send)."""
        new_run = self.run_numbers[msg.run_id]
        fields: dict[str, Any] = msg.model_dump()
        fields.update(
            msg_id=new_msg_id(),
            namespace=self.namespace,
            sender=SENDER,
            timestamp=sent_at,
            execution_id=self.execution_id,
            run_id=new_run,
        )
        if isinstance(msg, StfGen):
            shift = sent_at - msg.timestamp
            name = renamed_file(msg.filename, msg.run_id, new_run)
            fields.update(filename=name, start=msg.start + shift, end=msg.end + shift)
            if msg.checksum == stf_checksum(msg.filename, msg.size_bytes):
                fields["checksum"] = stf_checksum(name, msg.size_bytes)
        return type(msg).model_validate(fields)


def _workflow_name(execution: dict[str, Any]) -> str:
    definition = execution.get("workflow_definition")
    if isinstance(definition, dict) and definition.get("workflow_name"):
        return str(definition["workflow_name"])
    return "replay"


def plan_replay(
    export: Any, path: Path, namespace: str, types: Iterable[str] = REPLAYABLE
) -> ReplayPlan:
    """Select and check the messages of an export file read from ``path``.

    ``export``: a :class:`~swf_testbed.monitor.exchange.ExportFile`.
    """
    wanted = set(types)
    execution = export.execution
    source = execution["execution_id"]
    selected: list[Recorded] = []
    skipped: list[str] = []
    started: WorkflowStarted | None = None
    for number, row in enumerate(export.messages, 2):  # line 1 is the header
        where = f"{path}:{number}"
        try:
            msg = parse_received(row["body"], zone=UTC)
        except MessageError as exc:
            if peek_fields(row["body"]).get("msg_type") in wanted:
                skipped.append(f"{where}: recorded invalid, not replayed: {exc}")
            continue
        if isinstance(msg, WorkflowStarted) and started is None:
            started = msg
            continue
        if msg.msg_type not in wanted or row["destination"] not in _RUN_TOPIC_ADDRESSES:
            continue
        try:
            ours = to_ours(msg)
        except MessageError as exc:
            skipped.append(f"{where}: cannot be sent in our schema, not replayed: {exc}")
            continue
        assert isinstance(ours, RunMessage)
        selected.append(Recorded(number, ours))
    if not selected:
        raise ReplayError(
            f"{path}: no {', '.join(sorted(wanted))} message on the run topic "
            f"in execution {source}: nothing to replay"
        )
    run_numbers: dict[int, int] = {}
    previous = 0
    for rec in selected:
        if rec.message.run_id not in run_numbers:
            previous = run_numbers[rec.message.run_id] = new_run_number(
                rec.message.run_id, previous
            )
    workflow = started.workflow_name if started else _workflow_name(execution)
    execution_id = new_execution_id(workflow, namespace)
    config = dict(started.config) if started else dict(execution.get("parameter_values") or {})
    config["replay_of"] = source
    announce = WorkflowStarted(
        namespace=namespace,
        sender=SENDER,
        workflow_name=workflow,
        execution_id=execution_id,
        run_id=next(iter(run_numbers.values())),
        config=config,
        workflow_version=started.workflow_version if started else "",
        workflow_module=started.workflow_module if started else "",
        git_commit=started.git_commit if started else "",
        time_scale=started.time_scale if started else None,
    )
    return ReplayPlan(source, namespace, execution_id, announce, selected, run_numbers, skipped)


Send = Callable[[Destination, RunMessage | WorkflowStarted | WorkflowCompleted], object]


@dataclass
class ReplayOutcome:
    sent: int
    stf_count: int
    interrupted: bool


def replay(
    plan: ReplayPlan,
    send: Send,
    *,
    speed: float | None,
    stop: threading.Event | None = None,
    on_message: Callable[[RunMessage], None] | None = None,
) -> ReplayOutcome:
    """Publish the plan: ``workflow_started``, the run messages re-timed, ``workflow_completed``.

    ``speed``: the recorded gaps are divided by it; None: no gaps. When
    ``stop`` is set mid-way, each run left open gets an ``end_run`` (the
    STFs sent so far) and the execution ends ``terminated``.
    """
    stop = stop or threading.Event()
    send(
        replies_topic(plan.namespace),
        WorkflowStarted.model_validate(
            {**plan.workflow_started.model_dump(), "timestamp": utcnow()}
        ),
    )
    started = time.monotonic()
    sent = stfs = 0
    open_runs: dict[int, int] = {}  # new run number → STFs sent in it
    for rec, offset in zip(plan.messages, plan.recorded_offsets, strict=True):
        due = started + offset / speed - time.monotonic() if speed is not None else 0.0
        if due > 0 and stop.wait(min(due, threading.TIMEOUT_MAX)):
            break
        if stop.is_set():
            break
        msg = plan.renamed(rec.message, utcnow())
        send(RUN_TOPIC, msg)
        sent += 1
        if msg.msg_type == "run_imminent":
            open_runs.setdefault(msg.run_id, 0)
        elif msg.msg_type == "stf_gen":
            stfs += 1
            open_runs[msg.run_id] = open_runs.get(msg.run_id, 0) + 1
        elif msg.msg_type == "end_run":
            open_runs.pop(msg.run_id, None)
        if on_message is not None:
            on_message(msg)
    interrupted = sent < len(plan.messages)
    if interrupted:
        for run_id, count in open_runs.items():  # closed the way the runner closes a stopped run
            send(
                RUN_TOPIC,
                EndRun(
                    namespace=plan.namespace,
                    sender=SENDER,
                    execution_id=plan.execution_id,
                    run_id=run_id,
                    state=DaqState.BEAM,
                    substate=DaqSubstate.NOT_READY,
                    total_stf_files=count,
                ),
            )
    send(
        replies_topic(plan.namespace),
        WorkflowCompleted(
            namespace=plan.namespace,
            sender=SENDER,
            workflow_name=plan.workflow_started.workflow_name,
            execution_id=plan.execution_id,
            run_id=plan.workflow_started.run_id,
            status="terminated" if interrupted else "completed",
            stf_count=stfs,
        ),
    )
    return ReplayOutcome(sent, stfs, interrupted)

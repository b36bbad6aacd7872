"""Our message schema: the envelope, one typed model per ``msg_type``, and strict parsing.

Import the names from :mod:`swf_testbed.messages`, which also has the ePIC
v28 dialect's (:mod:`swf_testbed.messages.v28`).
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TypeAlias, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic_core import ErrorDetails

from swf_testbed.errors import describe

SCHEMA_VERSION = 1
"""Bumped when a change to a model is not backwards compatible."""

MAX_BODY_BYTES = 1024 * 1024
"""Largest message body accepted on receipt."""

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$"


class DaqState(StrEnum):
    OFF = "off"
    NO_BEAM = "no_beam"
    BEAM = "beam"
    RUN = "run"
    CALIB = "calib"
    TEST = "test"


class DaqSubstate(StrEnum):
    NOT_READY = "not_ready"
    READY = "ready"
    PHYSICS = "physics"
    STANDBY = "standby"


class OperationalState(StrEnum):
    STARTING = "STARTING"
    READY = "READY"
    PROCESSING = "PROCESSING"
    EXITED = "EXITED"


class Dialect(StrEnum):
    """The dialects received: ours, and the existing ePIC testbed agents' (release line v28)."""

    SWF = "swf"
    EPIC_V28 = "epic-v28"


class AgentStatus(StrEnum):
    OK = "OK"
    WARNING = "WARNING"
    ERROR = "ERROR"
    EXITED = "EXITED"


def new_msg_id() -> str:
    return uuid.uuid4().hex


def utcnow() -> datetime:
    return datetime.now(UTC)


Name = Annotated[str, Field(pattern=NAME_PATTERN, description="letters, digits, _ . : @ -")]


# --------------------------------------------------------------------------- envelope


class Message(BaseModel):
    """Fields every message carries."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    msg_type: str
    msg_id: str = Field(default_factory=new_msg_id, min_length=1, max_length=64)
    namespace: Name
    sender: Name
    timestamp: datetime = Field(default_factory=utcnow, description="UTC, ISO 8601")
    schema_version: int = Field(SCHEMA_VERSION, ge=1)
    execution_id: str | None = Field(None, max_length=200)
    run_id: int | None = Field(None, ge=0)

    category: ClassVar[str] = "other"
    dialect: ClassVar[str] = "swf"
    """Which dialect the message was received in (``Dialect``); ours is the strict one."""

    @field_validator("timestamp", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must carry a UTC offset, e.g. 2026-01-01T00:00:00Z")
        return value.astimezone(UTC)

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)

    def to_bytes(self) -> bytes:
        return self.to_json().encode()


class RunMessage(Message):
    """A message about a DAQ run: identity and the DAQ state in effect."""

    execution_id: str = Field(..., min_length=1, max_length=200)
    run_id: int = Field(..., ge=0)
    state: DaqState
    substate: DaqSubstate

    category: ClassVar[str] = "run"


# --------------------------------------------------------------------------- run lifecycle


class RunImminent(RunMessage):
    """A run is about to start (state beam, substate not_ready)."""

    msg_type: Literal["run_imminent"] = "run_imminent"
    run_conditions: dict[str, Any] = Field(default_factory=dict)


class StartRun(RunMessage):
    """Physics datataking starts (run/physics)."""

    msg_type: Literal["start_run"] = "start_run"


class PauseRun(RunMessage):
    """Standby (run/standby)."""

    msg_type: Literal["pause_run"] = "pause_run"
    reason: str = Field("", max_length=1000)


class ResumeRun(RunMessage):
    """Back to physics (run/physics)."""

    msg_type: Literal["resume_run"] = "resume_run"


class StfGen(RunMessage):
    """A new super time frame file exists in the exit buffer."""

    msg_type: Literal["stf_gen"] = "stf_gen"
    filename: str = Field(..., min_length=1, max_length=255)
    sequence: int = Field(..., ge=0)
    size_bytes: int = Field(..., ge=0)
    checksum: str = Field(..., pattern=r"^[0-9a-f]{8}$", description="adler32, 8 hex digits")
    tf_count: int = Field(..., ge=0)
    start: datetime
    end: datetime


class EndRun(RunMessage):
    """The run is over (beam/not_ready)."""

    msg_type: Literal["end_run"] = "end_run"
    total_stf_files: int = Field(..., ge=0)


# --------------------------------------------------------------------------- data flow


class StfReady(RunMessage):
    """An STF is registered and available (data agent → processing, fastmon)."""

    msg_type: Literal["stf_ready"] = "stf_ready"
    filename: str = Field(..., min_length=1, max_length=255)
    url: str = Field(..., min_length=1, max_length=1000)
    sequence: int = Field(..., ge=0)
    size_bytes: int = Field(..., ge=0)
    checksum: str = Field(..., pattern=r"^[0-9a-f]{8}$")
    tf_count: int = Field(0, ge=0)

    category: ClassVar[str] = "data"


class ProcessingComplete(RunMessage):
    """An STF was processed promptly."""

    msg_type: Literal["processing_complete"] = "processing_complete"
    filename: str = Field(..., min_length=1, max_length=255)
    outputs: list[str] = Field(default_factory=list)
    processing_time_s: float = Field(..., ge=0)

    category: ClassVar[str] = "data"


class TfFileRegistered(RunMessage):
    """A TF sample of an STF was taken (fastmon → fast processing)."""

    msg_type: Literal["tf_file_registered"] = "tf_file_registered"
    tf_filename: str = Field(..., min_length=1, max_length=255)
    stf_filename: str = Field(..., min_length=1, max_length=255)
    tf_first: int = Field(..., ge=0)
    tf_last: int = Field(..., ge=0)
    tf_count: int = Field(..., ge=1)
    size_bytes: int = Field(..., ge=0)

    category: ClassVar[str] = "data"


class Slice(RunMessage):
    """One unit of work for a worker: a range of TFs of a sample."""

    msg_type: Literal["slice"] = "slice"
    slice_id: int = Field(..., ge=0)
    tf_filename: str = Field(..., min_length=1, max_length=255)
    stf_filename: str = Field(..., min_length=1, max_length=255)
    tf_first: int = Field(..., ge=0)
    tf_last: int = Field(..., ge=0)
    tf_count: int = Field(..., ge=1)
    retries: int = Field(0, ge=0)
    work_time_s: float | None = Field(
        None,
        ge=0,
        description="simulation: wall seconds a worker spends on it "
        "(already scaled by the time scale); absent = the worker's own setting",
    )

    category: ClassVar[str] = "data"


class SliceResult(RunMessage):
    """A worker finished a slice, or failed it."""

    msg_type: Literal["slice_result"] = "slice_result"
    slice_id: int = Field(..., ge=0)
    tf_filename: str = Field(..., min_length=1, max_length=255)
    worker_id: str = Field(..., min_length=1, max_length=200)
    status: Literal["completed", "failed"]
    processing_time_s: float = Field(..., ge=0)
    error: str = Field("", max_length=10_000)

    category: ClassVar[str] = "data"


class RunImminentWorker(RunMessage):
    """Workers ramp up for a run (fast processing → worker topic)."""

    msg_type: Literal["run_imminent_worker"] = "run_imminent_worker"
    target_worker_count: int = Field(..., ge=0)
    rampup_time_s: float = Field(0, ge=0)

    category: ClassVar[str] = "data"


# --------------------------------------------------------------------------- control


class RunWorkflow(Message):
    """Ask a namespace's workflow runner to run a workflow."""

    msg_type: Literal["run_workflow"] = "run_workflow"
    workflow_name: str = Field(..., min_length=1, max_length=200)
    config: str = Field(..., min_length=1, max_length=200)
    realtime: bool = False
    time_scale: float | None = Field(
        None, ge=0, description="1 = real time, N = N× faster, 0 = as fast as possible"
    )
    duration: float = Field(0, ge=0, description="seconds of simulated time, 0 = until done")
    params: dict[str, Any] = Field(default_factory=dict)

    category: ClassVar[str] = "control"


class StopWorkflow(Message):
    """Stop an execution cleanly (end_run is sent, the execution terminated)."""

    msg_type: Literal["stop_workflow"] = "stop_workflow"
    execution_id: str = Field(..., min_length=1, max_length=200)
    reason: str = Field("", max_length=1000)

    category: ClassVar[str] = "control"


class WorkflowReply(Message):
    """A workflow runner's reply to a control message."""

    in_reply_to: str | None = Field(None, max_length=64, description="msg_id of the request")
    workflow_name: str = Field(..., min_length=1, max_length=200)

    category: ClassVar[str] = "control"


class WorkflowStarted(WorkflowReply):
    """An execution started; carries its id and the fully merged config."""

    msg_type: Literal["workflow_started"] = "workflow_started"
    execution_id: str = Field(..., min_length=1, max_length=200)
    config: dict[str, Any] = Field(default_factory=dict, description="the fully merged config")
    workflow_version: str = Field("", max_length=100, description="version of the workflow code")
    workflow_module: str = Field(
        "", max_length=200, description="Python module the workflow comes from"
    )
    git_commit: str = Field(
        "",
        max_length=80,
        description="git commit of the workflow's source tree, if known (-dirty: file differs)",
    )
    time_scale: float | None = Field(
        None, ge=0, description="the time scale in effect (0 = as fast as possible)"
    )


class WorkflowCompleted(WorkflowReply):
    """An execution ended: completed, or terminated by stop_workflow."""

    msg_type: Literal["workflow_completed"] = "workflow_completed"
    execution_id: str = Field(..., min_length=1, max_length=200)
    status: Literal["completed", "terminated"] = "completed"
    stf_count: int = Field(0, ge=0)


class WorkflowFailed(WorkflowReply):
    """An execution failed, or a request was refused (e.g. one already runs)."""

    msg_type: Literal["workflow_failed"] = "workflow_failed"
    error: str = Field(..., min_length=1, max_length=10_000)
    refused: bool = Field(False, description="true when the request was refused, not started")


# --------------------------------------------------------------------------- agents


class Heartbeat(Message):
    """An agent's liveness and state, every interval and on every state change."""

    msg_type: Literal["heartbeat"] = "heartbeat"
    agent_name: Name = Field(..., description="stable logical name from the testbed config")
    agent_type: str = Field(..., min_length=1, max_length=100)
    instance_id: str = Field(..., min_length=1, max_length=200)
    pid: int = Field(..., ge=0)
    hostname: str = Field(..., min_length=1, max_length=255)
    operational_state: OperationalState
    status: AgentStatus = AgentStatus.OK
    mq_connected: bool = True
    interval_s: float = Field(..., gt=0)
    description: str = Field("", max_length=1000)
    counters: dict[str, int] = Field(default_factory=dict)

    category: ClassVar[str] = "agent"


class DeadLetter(Message):
    """A message no handler could process after every allowed attempt."""

    msg_type: Literal["dead_letter"] = "dead_letter"
    original_destination: str
    original_headers: dict[str, str] = Field(default_factory=dict)
    original_body: str = Field(..., description="the original body, as received")
    attempts: int = Field(..., ge=1)
    error: str = Field(..., max_length=10_000)

    category: ClassVar[str] = "agent"


LOG_BATCH_MAX_RECORDS = 100
"""Most records one ``log_batch`` carries.

With the field limits below, a batch stays well under the body limit.
"""
LOG_MESSAGE_MAX_CHARS = 4000
LOG_EXCEPTION_MAX_CHARS = 4000


class LogEntry(BaseModel):
    """One log record of an agent, as carried in a ``log_batch``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timestamp: datetime = Field(..., description="when it was logged, UTC")
    level: int = Field(..., ge=0, le=100, description="numeric level (WARNING = 30)")
    levelname: str = Field(..., min_length=1, max_length=50)
    logger: str = Field("", max_length=255, description="the logger's name")
    message: str = Field(..., max_length=LOG_MESSAGE_MAX_CHARS)
    module: str = Field("", max_length=255)
    funcname: str = Field("", max_length=255)
    lineno: int = Field(0, ge=0)
    thread: str = Field("", max_length=255, description="the thread's name")
    exception: str = Field(
        "", max_length=LOG_EXCEPTION_MAX_CHARS, description="the formatted traceback, if any"
    )
    execution_id: str | None = Field(
        None, max_length=200, description="the execution of the message being handled"
    )
    run_id: int | None = Field(None, ge=0, description="the run of the message being handled")

    @field_validator("timestamp", mode="after")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("timestamp must carry a UTC offset, e.g. 2026-01-01T00:00:00Z")
        return value.astimezone(UTC)


class LogBatch(Message):
    """An agent's log records (its configured level and up), sent in batches off the logging path.

    ``dropped`` counts the records lost since the previous batch because the
    agent's bounded buffer was full (the broker was unreachable, or records came
    faster than they could be sent); ``dropped_total`` since the agent started.
    """

    msg_type: Literal["log_batch"] = "log_batch"
    agent_name: Name = Field(..., description="stable logical name from the testbed config")
    agent_type: str = Field(..., min_length=1, max_length=100)
    instance_id: str = Field(..., min_length=1, max_length=200)
    pid: int = Field(..., ge=0)
    hostname: str = Field(..., min_length=1, max_length=255)
    records: list[LogEntry] = Field(default_factory=list, max_length=LOG_BATCH_MAX_RECORDS)
    dropped: int = Field(
        0, ge=0, description="records dropped since the previous batch (buffer full)"
    )
    dropped_total: int = Field(0, ge=0, description="records dropped since the agent started")
    buffer_size: int = Field(..., ge=1, description="the agent's buffer bound, in records")

    category: ClassVar[str] = "agent"


AnyMessage: TypeAlias = Annotated[
    RunImminent
    | StartRun
    | PauseRun
    | ResumeRun
    | StfGen
    | EndRun
    | StfReady
    | ProcessingComplete
    | TfFileRegistered
    | Slice
    | SliceResult
    | RunImminentWorker
    | RunWorkflow
    | StopWorkflow
    | WorkflowStarted
    | WorkflowCompleted
    | WorkflowFailed
    | Heartbeat
    | DeadLetter
    | LogBatch,
    Field(discriminator="msg_type"),
]

MESSAGE_TYPES: dict[str, type[Message]] = {
    model.model_fields["msg_type"].default: model for model in get_args(get_args(AnyMessage)[0])
}

_adapter: TypeAdapter[Message] = TypeAdapter(AnyMessage)


# --------------------------------------------------------------------------- errors


class MessageError(ValueError):
    """A body that is not a valid testbed message. ``reason`` is short and stable."""

    reason = "invalid"

    def __init__(self, detail: str, *, msg_type: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.msg_type = msg_type


class InvalidJson(MessageError):
    reason = "invalid_json"


class UnknownMessageType(MessageError):
    reason = "unknown_msg_type"


class InvalidMessage(MessageError):
    reason = "invalid_fields"

    def __init__(
        self,
        detail: str,
        *,
        msg_type: str | None = None,
        errors: list[ErrorDetails] | None = None,
    ) -> None:
        super().__init__(detail, msg_type=msg_type)
        self.errors = errors or []


class BodyTooLarge(MessageError):
    reason = "too_large"


def _describe(exc: ValidationError, msg_type: str) -> str:
    return f"{msg_type}: " + describe(exc, skip={msg_type})


# --------------------------------------------------------------------------- parsing


def decode_body(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a received body, with a string ``msg_type``.

    Raises :class:`MessageError`.
    """
    if isinstance(body, (bytes, bytearray)):
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
        try:
            text: str | dict[str, Any] = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"body is not UTF-8: {exc}") from None
    else:
        text = body
    data: Any
    if isinstance(text, str):
        if len(text) > MAX_BODY_BYTES:
            raise BodyTooLarge(
                f"body of {len(text)} characters exceeds the limit of {MAX_BODY_BYTES}"
            )
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidJson(
                f"body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
            ) from None
        except RecursionError:
            raise InvalidJson(
                "body is not usable JSON: arrays or objects nested too deeply"
            ) from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise InvalidJson(f"body is not usable JSON: {exc}") from None
    else:
        data = text
    if not isinstance(data, dict):
        raise InvalidMessage(f"body must be a JSON object, not {type(data).__name__}")
    msg_type = data.get("msg_type")
    if not isinstance(msg_type, str) or not msg_type:
        raise InvalidMessage("msg_type: missing, or not a string")
    return data


def _validate(
    data: dict[str, Any], types: dict[str, type[Message]], adapter: TypeAdapter[Message]
) -> Message:
    msg_type = data["msg_type"]
    if msg_type not in types:
        raise UnknownMessageType(
            f"unknown msg_type {msg_type!r}; known: {', '.join(sorted(types))}", msg_type=msg_type
        )
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        raise InvalidMessage(
            _describe(exc, msg_type),
            msg_type=msg_type,
            errors=exc.errors(include_url=False, include_context=False),
        ) from None


def validate_message(data: dict[str, Any]) -> Message:
    """A decoded body (:func:`decode_body`) as its typed message of our schema."""
    return _validate(data, MESSAGE_TYPES, _adapter)


def parse_message(body: bytes | str | dict[str, Any]) -> Message:
    """Validate a received body against our (strict) schema and return its typed message.

    Raises a :class:`MessageError` subclass naming what is wrong, never
    anything else. :func:`parse_received` also accepts the ePIC v28 dialect.
    """
    return validate_message(decode_body(body))


def peek_fields(body: bytes | str) -> dict[str, Any]:
    """Best-effort envelope fields of a body that may be invalid (for recording it)."""
    try:
        data = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return {}
    if not isinstance(data, dict):
        return {}
    keys = ("msg_type", "msg_id", "namespace", "sender", "timestamp", "execution_id", "run_id")
    return {k: data[k] for k in keys if k in data}

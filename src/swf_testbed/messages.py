"""The message schema: one typed model per ``msg_type``.

Every body on the broker is a JSON object validated by one of the models
below, on send (building a model validates it) and on receipt
(:func:`parse_message`). The names are those of the existing ePIC testbed, so
its agents and tools understand ours.

Receiving never raises anything but :class:`MessageError` and its subclasses,
each of which says what was wrong and where; the caller decides what to do.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
)

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
    """The dialects received: ours, and that of the existing ePIC testbed's agents (release line v28)."""

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
        description="simulation: wall seconds a worker spends on it (already scaled by the time scale); "
        "absent = the worker's own setting",
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
"""Most records one ``log_batch`` carries (with the field limits below it stays well under the body limit)."""
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
    """An agent's log records (at its configured level and above), sent in batches off the logging path.

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
    RunImminent | StartRun | PauseRun | ResumeRun | StfGen | EndRun | StfReady | ProcessingComplete | TfFileRegistered | Slice | SliceResult | RunImminentWorker | RunWorkflow | StopWorkflow | WorkflowStarted | WorkflowCompleted | WorkflowFailed | Heartbeat | DeadLetter | LogBatch,
    Field(discriminator="msg_type"),
]

MESSAGE_TYPES: dict[str, type[Message]] = {
    model.model_fields["msg_type"].default: model  # type: ignore[misc]
    for model in AnyMessage.__origin__.__args__  # type: ignore[attr-defined]
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
        errors: list[dict[str, Any]] | None = None,
    ):
        super().__init__(detail, msg_type=msg_type)
        self.errors = errors or []


class BodyTooLarge(MessageError):
    reason = "too_large"


def _describe(exc: ValidationError, msg_type: str) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        loc = ".".join(str(p) for p in err["loc"] if p != msg_type) or "(body)"
        parts.append(f"{loc}: {err['msg']}")
    return f"{msg_type}: " + "; ".join(parts)


# --------------------------------------------------------------------------- parsing


def decode_body(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    """The JSON object of a received body, with a string ``msg_type``; raises :class:`MessageError`."""
    if isinstance(body, (bytes, bytearray)):
        if len(body) > MAX_BODY_BYTES:
            raise BodyTooLarge(f"body of {len(body)} bytes exceeds the limit of {MAX_BODY_BYTES}")
        try:
            text = bytes(body).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"body is not UTF-8: {exc}") from None
    else:
        text = body
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


def parse_message(body: bytes | str | dict[str, Any]) -> Message:
    """Validate a received body against our (strict) schema and return its typed message.

    Raises a :class:`MessageError` subclass naming what is wrong, never
    anything else. :func:`parse_received` also accepts the ePIC v28 dialect.
    """
    return _validate(decode_body(body), MESSAGE_TYPES, _adapter)


# --------------------------------------------------------------------------- the ePIC v28 dialect (receipt only)
#
# What the existing ePIC testbed's agents (BaseAgent, release line v28) send:
# no msg_id or schema_version, naive local timestamps, run_id as a string of
# digits, extra fields (simulation_tick, ...), stf_gen without size/checksum/
# tf_count/start/end, end_run with only total_stf_files, slices with their
# fields under ``content`` and neither namespace nor sender. We accept it on
# receipt (normalised into the models below, which are our models with what
# v28 omits made optional and extra fields kept); we never send it.


_V28_CONFIG = ConfigDict(extra="allow", frozen=True, use_enum_values=False)


class _V28:
    """Mixin of the v28 models (each also sets ``model_config = _V28_CONFIG``: extra fields kept)."""

    dialect: ClassVar[str] = Dialect.EPIC_V28.value

    @property
    def extra_fields(self) -> dict[str, Any]:
        """Fields of the body that our schema does not have (e.g. ``simulation_tick``)."""
        return dict(self.__pydantic_extra__ or {})  # type: ignore[attr-defined]


_OptionalName = Annotated[str | None, Field(None, pattern=NAME_PATTERN)]
_V28Id = Annotated[
    str,
    Field(..., min_length=1, max_length=200, description="the broker's message-id, else a hash"),
]


class RunImminentV28(_V28, RunImminent):
    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName


class StartRunV28(_V28, StartRun):
    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName


class PauseRunV28(_V28, PauseRun):
    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName


class ResumeRunV28(_V28, ResumeRun):
    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName


class StfGenV28(_V28, StfGen):
    """No size, checksum, tf_count, start or end: unknown, not zero."""

    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName
    size_bytes: int | None = Field(None, ge=0)  # type: ignore[assignment]
    checksum: str | None = Field(None, max_length=64)  # type: ignore[assignment]
    tf_count: int | None = Field(None, ge=0)  # type: ignore[assignment]
    start: datetime | None = None  # type: ignore[assignment]
    end: datetime | None = None  # type: ignore[assignment]


class EndRunV28(_V28, EndRun):
    """Only ``total_stf_files``: the state is the run's last one, which the receiver knows."""

    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName
    state: DaqState | None = None  # type: ignore[assignment]
    substate: DaqSubstate | None = None  # type: ignore[assignment]


class StfReadyV28(_V28, StfReady):
    """On the data agent's queue: ``file_url`` (our ``url``), no ``execution_id``."""

    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName
    execution_id: str | None = Field(None, max_length=200)  # type: ignore[assignment]
    checksum: str | None = Field(None, max_length=64)  # type: ignore[assignment]
    tf_count: int | None = Field(None, ge=0)  # type: ignore[assignment]


class SliceV28(_V28, Slice):
    """From fast processing, fields under ``content``; its state/substate there are the slice's, not the DAQ's."""

    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName
    state: DaqState | None = None  # type: ignore[assignment]
    substate: DaqSubstate | None = None  # type: ignore[assignment]


class RunWorkflowV28(_V28, RunWorkflow):
    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName


class StopWorkflowV28(_V28, StopWorkflow):
    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    namespace: _OptionalName
    sender: _OptionalName
    execution_id: str | None = Field(None, max_length=200)  # type: ignore[assignment]


class StatusRequestV28(_V28, Message):
    """Asks a v28 workflow runner for its status (ours have no such message)."""

    model_config = _V28_CONFIG
    msg_id: _V28Id
    schema_version: int | None = None  # type: ignore[assignment]  # v28 has none
    msg_type: Literal["status_request"] = "status_request"
    namespace: _OptionalName
    sender: _OptionalName

    category: ClassVar[str] = "control"


AnyV28Message: TypeAlias = Annotated[
    RunImminentV28 | StartRunV28 | PauseRunV28 | ResumeRunV28 | StfGenV28 | EndRunV28 | StfReadyV28 | SliceV28 | RunWorkflowV28 | StopWorkflowV28 | StatusRequestV28,
    Field(discriminator="msg_type"),
]

V28_MESSAGE_TYPES: dict[str, type[Message]] = {
    model.model_fields["msg_type"].default: model  # type: ignore[misc]
    for model in AnyV28Message.__origin__.__args__  # type: ignore[attr-defined]
}

_v28_adapter: TypeAdapter[Message] = TypeAdapter(AnyV28Message)

_DIGITS = re.compile(r"^[0-9]{1,19}$")


def is_v28(data: dict[str, Any]) -> bool:
    """A body of the v28 dialect: ours always carry ``msg_id`` and ``schema_version``, v28 bodies neither."""
    return "msg_id" not in data and "schema_version" not in data


def body_identity(broker_message_id: str, text: str) -> str:
    """The identity of a body without a ``msg_id``: the broker's ``message-id``, else a hash of the content.

    Both are the same on every redelivery of one message, so recording stays idempotent.
    """
    if broker_message_id:
        if len(broker_message_id) <= 150:
            return "mq:" + broker_message_id
        return "mq:" + hashlib.sha256(broker_message_id.encode("utf-8", "replace")).hexdigest()
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _aware(value: Any, where: str, zone: tzinfo) -> Any:
    """An ISO time string as an aware datetime, a naive one read in ``zone``; anything else unchanged."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidMessage(f"{where}: {value[:80]!r} is not an ISO 8601 time") from None
    return parsed.replace(tzinfo=zone) if parsed.tzinfo is None else parsed


def _run_number(value: Any, where: str) -> Any:
    if isinstance(value, str):
        if not _DIGITS.match(value):
            raise InvalidMessage(
                f"{where}: {value[:80]!r} is not a run number (a string of digits)"
            )
        return int(value)
    return value


def normalise_v28(data: dict[str, Any], *, msg_id: str, zone: tzinfo) -> dict[str, Any]:
    """A v28 body as the fields of its v28 model: typed values, our names, extra fields kept.

    Naive timestamps are read in ``zone``; a slice's ``created_at`` (naive UTC in v28)
    is its timestamp. Raises :class:`InvalidMessage` naming the field that cannot be read.
    """
    out = dict(data)
    msg_type = out["msg_type"]
    out["msg_id"] = msg_id
    if msg_type == "slice":
        content = out.get("content", {})
        if not isinstance(content, dict):
            raise InvalidMessage(
                f"content: must be a JSON object, not {type(content).__name__}", msg_type=msg_type
            )
        for ours, theirs in (
            ("run_id", "run_id"),
            ("execution_id", "execution_id"),
            ("slice_id", "slice_id"),
            ("tf_filename", "tf_filename"),
            ("stf_filename", "filename"),
            ("tf_first", "start"),
            ("tf_last", "end"),
            ("tf_count", "tf_count"),
            ("retries", "retries"),
        ):
            if theirs in content and ours not in out:
                out[ours] = content[theirs]
        if "timestamp" not in out and "created_at" in out:
            out["timestamp"] = _aware(out["created_at"], "created_at", UTC)
    elif msg_type == "stf_ready" and "url" not in out and "file_url" in out:
        out["url"] = out["file_url"]
    if "run_id" in out:
        out["run_id"] = _run_number(out["run_id"], "run_id")
    if "timestamp" in out:
        out["timestamp"] = _aware(out["timestamp"], "timestamp", zone)
    return out


def parse_received(
    body: bytes | str | dict[str, Any], *, zone: tzinfo, broker_message_id: str = ""
) -> Message:
    """Validate a received body in either dialect: ours (strict), or ePIC v28 (tolerant).

    A v28 body (no ``msg_id``, no ``schema_version``) is normalised and checked
    against the v28 models; its ``msg_id`` becomes :func:`body_identity`. The
    message's ``dialect`` says which it was. Raises :class:`MessageError` only.
    """
    data = decode_body(body)
    if isinstance(body, (bytes, bytearray)):
        text = bytes(body).decode("utf-8")
    else:
        text = body if isinstance(body, str) else json.dumps(body, sort_keys=True, default=str)
    msg_type = data["msg_type"]
    if not is_v28(data) or msg_type not in V28_MESSAGE_TYPES:
        if (
            "msg_id" not in data
        ):  # a stable identity, not a new one per delivery (the model's default)
            identity = body_identity(broker_message_id, text)
            if len(identity) > 64:
                identity = "h:" + hashlib.sha256(identity.encode()).hexdigest()[:62]
            data = {**data, "msg_id": identity}
        return _validate(data, MESSAGE_TYPES, _adapter)
    try:
        normalised = normalise_v28(data, msg_id=body_identity(broker_message_id, text), zone=zone)
    except InvalidMessage as exc:
        raise InvalidMessage(f"{msg_type} (ePIC v28): {exc.detail}", msg_type=msg_type) from None
    try:
        return _v28_adapter.validate_python(normalised)
    except ValidationError as exc:
        raise InvalidMessage(
            _describe(exc, msg_type).replace(f"{msg_type}: ", f"{msg_type} (ePIC v28): ", 1),
            msg_type=msg_type,
            errors=exc.errors(include_url=False, include_context=False),
        ) from None


def to_ours(msg: Message) -> Message:
    """The message in our (strict) schema, to send on: a v28 one loses its extra fields and gets a schema version.

    Raises :class:`InvalidMessage` naming what our schema needs and the v28
    message lacks (e.g. the size of an STF): nothing is made up.
    """
    if msg.dialect == Dialect.SWF.value:
        return msg
    model = MESSAGE_TYPES.get(msg.msg_type)
    if model is None:
        raise InvalidMessage(
            f"{msg.msg_type}: no such message in our schema", msg_type=msg.msg_type
        )
    fields = {
        k: v
        for k, v in msg.model_dump(exclude=set(msg.model_extra or {})).items()
        if v is not None and k in model.model_fields
    }
    fields["schema_version"] = SCHEMA_VERSION
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise InvalidMessage(
            _describe(exc, msg.msg_type) + " (missing from the ePIC v28 message)",
            msg_type=msg.msg_type,
        ) from None


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

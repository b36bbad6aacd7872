"""The ePIC v28 dialect, on receipt only.

What the existing ePIC testbed's agents (BaseAgent, release line v28) send:
no msg_id or schema_version, naive local timestamps, run_id as a string of
digits, extra fields (simulation_tick, ...), stf_gen without size/checksum/
tf_count/start/end, end_run with only total_stf_files, slices with their
fields under ``content`` and neither namespace nor sender. We accept it on
receipt (normalised into the models below, which are our models with what
v28 omits made optional and extra fields kept); we never send it.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from swf_testbed.errors import describe
from swf_testbed.messages.schema import (
    MESSAGE_TYPES,
    NAME_PATTERN,
    SCHEMA_VERSION,
    DaqState,
    DaqSubstate,
    Dialect,
    EndRun,
    InvalidMessage,
    Message,
    PauseRun,
    ResumeRun,
    RunImminent,
    RunWorkflow,
    Slice,
    StartRun,
    StfGen,
    StfReady,
    StopWorkflow,
    decode_body,
    validate_message,
)

__all__ = [
    "V28_MESSAGE_TYPES",
    "body_identity",
    "is_v28",
    "normalise_v28",
    "parse_received",
    "to_ours",
]

_V28_CONFIG = ConfigDict(extra="allow", frozen=True, use_enum_values=False)


class _V28:
    """Mixin of the v28 models: the dialect, and the body's fields our schema lacks."""

    dialect: ClassVar[str] = Dialect.EPIC_V28.value

    @property
    def extra_fields(self) -> dict[str, Any]:
        """Fields of the body that our schema does not have (e.g. ``simulation_tick``)."""
        assert isinstance(self, BaseModel)  # every v28 model is one (see _v28)
        return dict(self.__pydantic_extra__ or {})


_OptionalName = Annotated[str | None, Field(None, pattern=NAME_PATTERN)]
_V28Id = Annotated[
    str,
    Field(..., min_length=1, max_length=200, description="the broker's message-id, else a hash"),
]

_M = TypeVar("_M", bound=Message)

_ENVELOPE: dict[str, tuple[Any, Any]] = {
    "msg_id": (_V28Id, ...),  # the broker's message-id, else a hash (body_identity)
    "schema_version": (int | None, None),  # v28 has none
    "namespace": (_OptionalName, None),
    "sender": (_OptionalName, None),
}
"""What every v28 body lacks of our envelope, or has in another form."""


def _v28(model: type[_M], doc: str = "", **fields: tuple[Any, Any]) -> type[_M]:
    """``model`` in the v28 dialect: the envelope of :data:`_ENVELOPE`, ``fields`` made tolerant.

    Each of ``fields`` is ``name=(annotation, default)``: what v28 omits or sends
    differently. Extra fields of the body are kept (``extra_fields``).
    """
    name = f"{model.__name__}V28"
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {
        "__module__": __name__,
        "__qualname__": name,
        "__doc__": doc or None,
        "model_config": _V28_CONFIG,
    }
    for field_name, (annotation, default) in {**_ENVELOPE, **fields}.items():
        annotations[field_name] = annotation
        if default is not ...:
            namespace[field_name] = default
    namespace["__annotations__"] = annotations
    metaclass: Any = type(model)  # pydantic's ModelMetaclass makes the model
    made = metaclass(name, (_V28, model), namespace)
    return cast("type[_M]", made)


class _StatusRequest(Message):
    """Asks a v28 workflow runner for its status (ours have no such message)."""

    msg_type: Literal["status_request"] = "status_request"

    category: ClassVar[str] = "control"


RunImminentV28 = _v28(RunImminent)
StartRunV28 = _v28(StartRun)
PauseRunV28 = _v28(PauseRun)
ResumeRunV28 = _v28(ResumeRun)
StfGenV28 = _v28(
    StfGen,
    "No size, checksum, tf_count, start or end: unknown, not zero.",
    size_bytes=(int | None, Field(None, ge=0)),
    checksum=(str | None, Field(None, max_length=64)),
    tf_count=(int | None, Field(None, ge=0)),
    start=(datetime | None, None),
    end=(datetime | None, None),
)
EndRunV28 = _v28(
    EndRun,
    "Only ``total_stf_files``: the state is the run's last one, which the receiver knows.",
    state=(DaqState | None, None),
    substate=(DaqSubstate | None, None),
)
StfReadyV28 = _v28(
    StfReady,
    "On the data agent's queue: ``file_url`` (our ``url``), no ``execution_id``.",
    execution_id=(str | None, Field(None, max_length=200)),
    checksum=(str | None, Field(None, max_length=64)),
    tf_count=(int | None, Field(None, ge=0)),
)
SliceV28 = _v28(
    Slice,
    "From fast processing, fields under ``content``; "
    "its state/substate there are the slice's, not the DAQ's.",
    state=(DaqState | None, None),
    substate=(DaqSubstate | None, None),
)
RunWorkflowV28 = _v28(RunWorkflow)
StopWorkflowV28 = _v28(StopWorkflow, execution_id=(str | None, Field(None, max_length=200)))
StatusRequestV28 = _v28(_StatusRequest)

V28_MODELS: tuple[type[Message], ...] = (
    RunImminentV28,
    StartRunV28,
    PauseRunV28,
    ResumeRunV28,
    StfGenV28,
    EndRunV28,
    StfReadyV28,
    SliceV28,
    RunWorkflowV28,
    StopWorkflowV28,
    StatusRequestV28,
)

V28_MESSAGE_TYPES: dict[str, type[Message]] = {
    model.model_fields["msg_type"].default: model for model in V28_MODELS
}

_ANY_V28: Any = Union[V28_MODELS]  # noqa: UP007 - a union of classes made at run time
_v28_adapter: TypeAdapter[Message] = TypeAdapter(
    Annotated[_ANY_V28, Field(discriminator="msg_type")]
)

_DIGITS = re.compile(r"^[0-9]{1,19}$")


def is_v28(data: dict[str, Any]) -> bool:
    """A body of the v28 dialect.

    Ours always carry ``msg_id`` and ``schema_version``, v28 bodies neither.
    """
    return "msg_id" not in data and "schema_version" not in data


def body_identity(broker_message_id: str, text: str) -> str:
    """The identity of a body without a ``msg_id``.

    The broker's ``message-id``, else a hash of the content.

    Both are the same on every redelivery of one message, so recording stays idempotent.
    """
    if broker_message_id:
        if len(broker_message_id) <= 150:
            return "mq:" + broker_message_id
        return "mq:" + hashlib.sha256(broker_message_id.encode("utf-8", "replace")).hexdigest()
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def _aware(value: Any, where: str, zone: tzinfo) -> Any:
    """An ISO time string as an aware datetime (a naive one read in ``zone``); else unchanged."""
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
        return validate_message(data)
    try:
        normalised = normalise_v28(data, msg_id=body_identity(broker_message_id, text), zone=zone)
    except InvalidMessage as exc:
        raise InvalidMessage(f"{msg_type} (ePIC v28): {exc.detail}", msg_type=msg_type) from None
    try:
        return _v28_adapter.validate_python(normalised)
    except ValidationError as exc:
        raise InvalidMessage(
            f"{msg_type} (ePIC v28): " + describe(exc, skip={msg_type}),
            msg_type=msg_type,
            errors=exc.errors(include_url=False, include_context=False),
        ) from None


def to_ours(msg: Message) -> Message:
    """The message in our (strict) schema, to send on.

    A v28 one loses its extra fields and gets a schema version.

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
            f"{msg.msg_type}: {describe(exc, skip={msg.msg_type})}"
            " (missing from the ePIC v28 message)",
            msg_type=msg.msg_type,
        ) from None

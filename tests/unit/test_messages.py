"""The message schema: every type builds, round-trips and rejects bad input with a clear reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from swf_testbed import messages as m

RUN = {
    "namespace": "ns1",
    "sender": "daq",
    "execution_id": "exec-1",
    "run_id": 7,
    "state": "run",
    "substate": "physics",
}
NOW = datetime(2026, 1, 1, tzinfo=UTC)

EXAMPLES: dict[str, dict] = {
    "run_imminent": {
        **RUN,
        "state": "beam",
        "substate": "not_ready",
        "run_conditions": {"beam_energy": 10},
    },
    "start_run": RUN,
    "pause_run": {**RUN, "substate": "standby", "reason": "beam loss"},
    "resume_run": RUN,
    "stf_gen": {
        **RUN,
        "filename": "swf.000007.000001.stf",
        "sequence": 1,
        "size_bytes": 2_000_000_000,
        "checksum": "0a1b2c3d",
        "tf_count": 1000,
        "start": NOW,
        "end": NOW + timedelta(seconds=0.6),
    },
    "end_run": {**RUN, "state": "beam", "substate": "not_ready", "total_stf_files": 10},
    "stf_ready": {
        **RUN,
        "filename": "f.stf",
        "url": "file:///b/f.stf",
        "sequence": 1,
        "size_bytes": 1,
        "checksum": "00000001",
    },
    "processing_complete": {
        **RUN,
        "filename": "f.stf",
        "processing_time_s": 1.5,
        "outputs": ["f.out"],
    },
    "tf_file_registered": {
        **RUN,
        "tf_filename": "f.tf",
        "stf_filename": "f.stf",
        "tf_first": 0,
        "tf_last": 149,
        "tf_count": 150,
        "size_bytes": 3,
    },
    "slice": {
        **RUN,
        "slice_id": 3,
        "tf_filename": "f.tf",
        "stf_filename": "f.stf",
        "tf_first": 0,
        "tf_last": 9,
        "tf_count": 10,
    },
    "slice_result": {
        **RUN,
        "slice_id": 3,
        "tf_filename": "f.tf",
        "worker_id": "w1",
        "status": "completed",
        "processing_time_s": 30,
    },
    "run_imminent_worker": {**RUN, "target_worker_count": 30, "rampup_time_s": 300},
    "run_workflow": {
        "namespace": "ns1",
        "sender": "cli",
        "workflow_name": "stf_datataking",
        "config": "fast_processing_default",
        "time_scale": 100,
        "params": {"stf_count": 5},
    },
    "stop_workflow": {"namespace": "ns1", "sender": "cli", "execution_id": "exec-1"},
    "workflow_started": {
        "namespace": "ns1",
        "sender": "runner",
        "workflow_name": "w",
        "execution_id": "e",
    },
    "workflow_completed": {
        "namespace": "ns1",
        "sender": "runner",
        "workflow_name": "w",
        "execution_id": "e",
        "status": "terminated",
    },
    "workflow_failed": {
        "namespace": "ns1",
        "sender": "runner",
        "workflow_name": "w",
        "error": "busy",
        "refused": True,
    },
    "heartbeat": {
        "namespace": "ns1",
        "sender": "a1",
        "agent_name": "a1",
        "agent_type": "data",
        "instance_id": "a1-h-1",
        "pid": 1,
        "hostname": "h",
        "operational_state": "READY",
        "interval_s": 30,
        "counters": {"handled": 3},
    },
    "dead_letter": {
        "namespace": "ns1",
        "sender": "a1",
        "original_destination": "/topic/x",
        "original_body": "{",
        "attempts": 1,
        "error": "invalid_json",
    },
    "log_batch": {
        "namespace": "ns1",
        "sender": "a1",
        "agent_name": "a1",
        "agent_type": "data",
        "instance_id": "a1-h-1",
        "pid": 1,
        "hostname": "h",
        "buffer_size": 1000,
        "dropped": 2,
        "dropped_total": 5,
        "records": [
            {
                "timestamp": "2026-01-01T00:00:00Z",
                "level": 30,
                "levelname": "WARNING",
                "message": "slow",
                "run_id": 7,
                "execution_id": "e1",
            }
        ],
    },
}


def test_every_message_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(m.MESSAGE_TYPES)


@pytest.mark.parametrize("msg_type", sorted(EXAMPLES))
def test_round_trip(msg_type: str) -> None:
    model = m.MESSAGE_TYPES[msg_type]
    msg = model(**EXAMPLES[msg_type])
    assert msg.msg_type == msg_type
    parsed = m.parse_message(msg.to_bytes())
    assert parsed == msg
    assert type(parsed) is model
    body = json.loads(msg.to_json())
    assert body["schema_version"] == m.SCHEMA_VERSION
    assert body["timestamp"].endswith("Z")
    assert len(body["msg_id"]) == 32


def test_msg_ids_are_unique() -> None:
    ids = {m.StartRun(**RUN).msg_id for _ in range(1000)}
    assert len(ids) == 1000


def test_timestamps_are_converted_to_utc_and_naive_ones_rejected() -> None:
    cet = timezone(timedelta(hours=1))
    msg = m.StartRun(**RUN, timestamp=datetime(2026, 1, 1, 1, 0, tzinfo=cet))
    assert msg.timestamp == datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
    with pytest.raises(ValidationError, match="UTC offset"):
        m.StartRun(**RUN, timestamp=datetime(2026, 1, 1))


def test_validated_on_send_too() -> None:
    with pytest.raises(ValidationError, match="checksum"):
        m.StfGen(**{**EXAMPLES["stf_gen"], "checksum": "XYZ"})
    with pytest.raises(ValidationError, match="extra"):
        m.StartRun(**RUN, surprise=1)


@pytest.mark.parametrize(
    ("body", "error", "fragment"),
    [
        (b"{not json", m.InvalidJson, "not JSON"),
        (b"\xff\xfe", m.InvalidJson, "UTF-8"),
        (b"[1, 2]", m.InvalidMessage, "JSON object"),
        (b'{"namespace": "x"}', m.InvalidMessage, "msg_type: missing"),
        (b'{"msg_type": "warp_drive"}', m.UnknownMessageType, "unknown msg_type 'warp_drive'"),
        (
            b'{"msg_type": "start_run", "namespace": "ns1", "sender": "s"}',
            m.InvalidMessage,
            "start_run: execution_id: Field required",
        ),
        (
            b'{"msg_type": "end_run", "namespace": "ns1", "sender": "s", "execution_id": "e", '
            b'"run_id": -1, '
            b'"state": "beam", "substate": "not_ready", "total_stf_files": 1}',
            m.InvalidMessage,
            "run_id",
        ),
        (
            b'{"msg_type": "start_run", "namespace": "<script>", "sender": "s"}',
            m.InvalidMessage,
            "namespace",
        ),
        (
            b'{"msg_type": "start_run", "namespace": "ns", "sender": "s", "execution_id": "e", '
            b'"run_id": 1, '
            b'"state": "warp", "substate": "physics"}',
            m.InvalidMessage,
            "state",
        ),
    ],
)
def test_bad_bodies_raise_typed_errors_saying_what_is_wrong(
    body: bytes, error: type, fragment: str
) -> None:
    with pytest.raises(error) as info:
        m.parse_message(body)
    assert fragment in str(info.value)
    assert isinstance(info.value, m.MessageError)
    assert info.value.reason


def test_oversized_body_rejected() -> None:
    with pytest.raises(m.BodyTooLarge):
        m.parse_message(b"{" + b" " * m.MAX_BODY_BYTES + b"}")


def test_invalid_message_errors_are_structured() -> None:
    with pytest.raises(m.InvalidMessage) as info:
        m.parse_message(
            json.dumps({**EXAMPLES["slice"], "msg_type": "slice", "tf_count": 0}).encode()
        )
    assert info.value.msg_type == "slice"
    assert [e["loc"] for e in info.value.errors] == [("slice", "tf_count")]


def test_peek_fields_of_invalid_body() -> None:
    assert m.peek_fields(b'{"msg_type": "x", "namespace": "n", "junk": 1}') == {
        "msg_type": "x",
        "namespace": "n",
    }
    assert m.peek_fields(b"nonsense") == {}

"""Receiving the ePIC v28 dialect: every message shape of the wire document, exactly as those
agents send it.

Strict on send (our models are unchanged), tolerant on receipt
(:func:`parse_received`): each v28 body becomes its v28 model, with our field
names, naive times read in the configured zone, the run number as an int and
the extra fields kept; what v28 does not send stays empty.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from swf_testbed import messages as msgs
from swf_testbed.liveness import Liveness, liveness
from swf_testbed.settings import Settings, SettingsError, get_settings

NEW_YORK = ZoneInfo("America/New_York")
TOKYO = ZoneInfo("Asia/Tokyo")
NS = "epic-user"
SENDER = "daq_simulator-agent-alice-3"
EXEC = "stf_datataking-alice-0007"


def common(msg_type: str, **fields: Any) -> dict[str, Any]:
    """The common fields of a v28 workflow-runner message (wire doc: "Messages on
    /topic/epictopic").
    """
    return {
        "msg_type": msg_type,
        "namespace": NS,
        "sender": SENDER,
        "execution_id": EXEC,
        "run_id": "100012",
        "timestamp": "2026-07-01T10:00:00.250000",
        "simulation_tick": 12.5,
        **fields,
    }


WIRE_BODIES: dict[str, dict[str, Any]] = {
    "run_imminent": common("run_imminent", state="beam", substate="not_ready"),
    "start_run": common("start_run", state="run", substate="physics"),
    "pause_run": common("pause_run", state="run", substate="standby", reason="beam loss"),
    "resume_run": common("resume_run", state="run", substate="physics"),
    "stf_gen": common(
        "stf_gen", filename="swf.100012.000001.stf", sequence=1, state="run", substate="physics"
    ),
    "end_run": common("end_run", total_stf_files=10),
    "run_workflow": {
        "msg_type": "run_workflow",
        "namespace": NS,
        "workflow_name": "stf_datataking",
        "config": "fast_processing_default",
        "realtime": True,
        "params": {"stf_count": 10},
        "timestamp": "2026-07-01T09:59:00",
        "duration": 0,
        "source": "cli",
    },
    "stop_workflow": {
        "msg_type": "stop_workflow",
        "namespace": NS,
        "timestamp": "2026-07-01T10:30:00",
        "execution_id": EXEC,
    },
    "status_request": {
        "msg_type": "status_request",
        "namespace": NS,
        "timestamp": "2026-07-01T10:31:00",
    },
    "stf_ready": {
        "msg_type": "stf_ready",
        "filename": "swf.100012.000001.stf",
        "run_id": "100012",
        "file_url": "file:///data/swf.100012.000001.stf",
        "checksum": "ad:12345678",
        "size_bytes": 2048,
        "start": "2026-07-01T10:00:00",
        "end": "2026-07-01T10:00:02",
        "state": "run",
        "substate": "physics",
        "sequence": 1,
        "simulation_tick": 13.0,
        "processed_by": "data-agent-alice-4",
        "namespace": NS,
        "sender": "data-agent-alice-4",
    },
    "slice": {
        "msg_type": "slice",
        "run_id": 100012,
        "created_at": "2026-07-01T14:00:05.500000",
        "content": {
            "run_id": 100012,
            "execution_id": EXEC,
            "req_id": "6f1c2a3e-1111-4222-8333-944455556666",
            "filename": "swf.100012.000001.stf",
            "tf_filename": "swf.100012.000001_slice_000.tf",
            "slice_id": 0,
            "start": 0,
            "end": 65,
            "tf_count": 66,
            "state": "queued",
            "substate": "new",
        },
    },
}


def parse(
    body: dict[str, Any], zone: Any = NEW_YORK, message_id: str = "ID:broker-1-1:1"
) -> msgs.Message:
    return msgs.parse_received(json.dumps(body).encode(), zone=zone, broker_message_id=message_id)


@pytest.mark.parametrize("msg_type", sorted(WIRE_BODIES))
def test_every_wire_shape_is_valid_and_marked_v28(msg_type: str) -> None:
    msg = parse(WIRE_BODIES[msg_type])
    assert msg.msg_type == msg_type
    assert msg.dialect == msgs.Dialect.EPIC_V28 == "epic-v28"
    assert msg.msg_id == "mq:ID:broker-1-1:1" and msg.schema_version is None
    assert msg.timestamp.tzinfo is not None


@pytest.mark.parametrize("msg_type", sorted(WIRE_BODIES))
def test_strict_parse_still_refuses_the_dialect(msg_type: str) -> None:
    """Our agents' schema is unchanged: the strict path names what v28 lacks."""
    with pytest.raises(msgs.MessageError):
        msgs.parse_message(json.dumps(WIRE_BODIES[msg_type]))


def test_run_lifecycle_fields_exactly() -> None:
    msg = parse(WIRE_BODIES["run_imminent"])
    assert isinstance(msg, msgs.RunImminent)
    assert (msg.namespace, msg.sender, msg.execution_id, msg.run_id) == (NS, SENDER, EXEC, 100012)
    assert (msg.state, msg.substate) == (msgs.DaqState.BEAM, msgs.DaqSubstate.NOT_READY)
    assert msg.timestamp == datetime(2026, 7, 1, 14, 0, 0, 250000, tzinfo=UTC)  # 10:00 EDT
    assert msg.extra_fields == {"simulation_tick": 12.5}
    pause = parse(WIRE_BODIES["pause_run"])
    assert pause.reason == "beam loss"  # type: ignore[attr-defined]  # a PauseRun


def test_stf_gen_without_size_checksum_counts_or_times_leaves_them_empty() -> None:
    msg = parse(WIRE_BODIES["stf_gen"])
    assert isinstance(msg, msgs.StfGen)
    assert (msg.filename, msg.sequence) == ("swf.100012.000001.stf", 1)
    assert (msg.size_bytes, msg.checksum, msg.tf_count, msg.start, msg.end) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_end_run_has_only_total_stf_files() -> None:
    msg = parse(WIRE_BODIES["end_run"])
    assert isinstance(msg, msgs.EndRun)
    assert msg.total_stf_files == 10 and msg.state is None and msg.substate is None


def test_slice_fields_come_from_content_and_created_at() -> None:
    msg = parse(WIRE_BODIES["slice"])
    assert isinstance(msg, msgs.Slice)
    assert (
        msg.namespace is None and msg.sender is None
    )  # derived later from the execution (by the monitor)
    assert (msg.run_id, msg.execution_id, msg.slice_id) == (100012, EXEC, 0)
    assert (msg.tf_filename, msg.stf_filename) == (
        "swf.100012.000001_slice_000.tf",
        "swf.100012.000001.stf",
    )
    assert (msg.tf_first, msg.tf_last, msg.tf_count) == (0, 65, 66)
    assert (
        msg.state is None and msg.substate is None
    )  # "queued"/"new" are the slice's, not DAQ states
    assert msg.timestamp == datetime(
        2026, 7, 1, 14, 0, 5, 500000, tzinfo=UTC
    )  # created_at is UTC, any zone
    assert parse(WIRE_BODIES["slice"], zone=TOKYO).timestamp == msg.timestamp
    assert msg.extra_fields["content"]["req_id"] == "6f1c2a3e-1111-4222-8333-944455556666"


def test_stf_ready_from_the_queue() -> None:
    msg = parse(WIRE_BODIES["stf_ready"])
    assert isinstance(msg, msgs.StfReady)
    assert msg.url == "file:///data/swf.100012.000001.stf" and msg.execution_id is None
    assert (msg.size_bytes, msg.checksum, msg.run_id) == (2048, "ad:12345678", 100012)
    assert msg.extra_fields["processed_by"] == "data-agent-alice-4"


def test_control_messages() -> None:
    run = parse(WIRE_BODIES["run_workflow"])
    assert (
        isinstance(run, msgs.RunWorkflow) and run.sender is None and run.params == {"stf_count": 10}
    )
    assert run.extra_fields == {"source": "cli"}
    stop = parse(WIRE_BODIES["stop_workflow"])
    assert isinstance(stop, msgs.StopWorkflow) and stop.execution_id == EXEC
    assert parse(WIRE_BODIES["status_request"]).category == "control"


def test_naive_timestamps_in_two_zones_give_the_right_utc_instants() -> None:
    body = WIRE_BODIES["start_run"]
    assert parse(body, zone=NEW_YORK).timestamp == datetime(
        2026, 7, 1, 14, 0, 0, 250000, tzinfo=UTC
    )
    assert parse(body, zone=TOKYO).timestamp == datetime(2026, 7, 1, 1, 0, 0, 250000, tzinfo=UTC)
    winter = {
        **body,
        "timestamp": "2026-01-15T10:00:00",
    }  # daylight saving time is the zone's, not a fixed offset
    assert parse(winter, zone=NEW_YORK).timestamp == datetime(2026, 1, 15, 15, 0, tzinfo=UTC)
    aware = {**body, "timestamp": "2026-07-01T10:00:00+02:00"}  # an offset, when sent, wins
    assert parse(aware, zone=TOKYO).timestamp == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)


def test_the_zone_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings(legacy_timezone="Asia/Tokyo").legacy_zone == TOKYO
    monkeypatch.setenv("SWF_LEGACY_TIMEZONE", "America/New_York")
    get_settings.cache_clear()
    try:
        assert get_settings().legacy_zone == NEW_YORK
        monkeypatch.setenv("SWF_LEGACY_TIMEZONE", "Mars/Olympus_Mons")
        get_settings.cache_clear()
        with pytest.raises(
            SettingsError, match="SWF_LEGACY_TIMEZONE: .*unknown time zone 'Mars/Olympus_Mons'"
        ):
            get_settings()
        monkeypatch.setenv("SWF_LEGACY_TIMEZONE", "")
        monkeypatch.setenv("TZ", "Asia/Tokyo")
        get_settings.cache_clear()
        assert str(get_settings().legacy_zone) == "Asia/Tokyo"  # empty: the host's zone
    finally:
        get_settings.cache_clear()


def test_identity_without_msg_id_is_the_broker_id_else_a_content_hash() -> None:
    body = json.dumps(WIRE_BODIES["start_run"])
    assert msgs.parse_received(body, zone=UTC, broker_message_id="ID:a").msg_id == "mq:ID:a"
    by_hash = msgs.parse_received(body, zone=UTC).msg_id
    assert by_hash.startswith("sha256:") and by_hash == msgs.parse_received(body, zone=UTC).msg_id
    other = json.dumps({**WIRE_BODIES["start_run"], "simulation_tick": 13.5})
    assert msgs.parse_received(other, zone=UTC).msg_id != by_hash
    long_id = "ID:" + "x" * 400
    assert len(msgs.parse_received(body, zone=UTC, broker_message_id=long_id).msg_id) <= 200


def test_ours_is_still_strict_and_unchanged() -> None:
    ours = msgs.StartRun(
        namespace=NS, sender="daq", execution_id=EXEC, run_id=7, state="run", substate="physics"
    )
    back = msgs.parse_received(ours.to_bytes(), zone=TOKYO)
    assert back == ours and back.dialect == "swf" and type(back) is msgs.StartRun
    naive = json.loads(ours.to_json()) | {"timestamp": "2026-07-01T10:00:00"}
    with pytest.raises(
        msgs.InvalidMessage, match="UTC offset"
    ):  # ours must carry an offset: no zone guessing
        msgs.parse_received(json.dumps(naive), zone=TOKYO)
    extra = json.loads(ours.to_json()) | {"simulation_tick": 1.0}
    with pytest.raises(msgs.InvalidMessage, match="simulation_tick"):
        msgs.parse_received(json.dumps(extra), zone=TOKYO)


@pytest.mark.parametrize(
    "body, where",
    [
        ({**WIRE_BODIES["slice"], "content": [1, 2]}, "content: must be a JSON object, not list"),
        ({**WIRE_BODIES["slice"], "content": "x"}, "content: must be a JSON object, not str"),
        (
            common("start_run", run_id="run-12", state="run", substate="physics"),
            "run_id: 'run-12' is not a run number",
        ),
        (
            common("start_run", run_id="-5", state="run", substate="physics"),
            "run_id: '-5' is not a run number",
        ),
        (
            common("start_run", timestamp="yesterday", state="run", substate="physics"),
            "timestamp: 'yesterday' is not",
        ),
        (common("stf_gen", state="run", substate="physics"), "filename"),
        (common("end_run"), "total_stf_files"),
    ],
)
def test_hostile_dialect_input_is_refused_with_where(body: dict[str, Any], where: str) -> None:
    with pytest.raises(msgs.InvalidMessage) as caught:
        parse(body)
    assert "(ePIC v28)" in caught.value.detail and where in caught.value.detail


def test_a_mebibyte_simulation_tick_is_too_large() -> None:
    body = json.dumps(
        common("start_run", state="run", substate="physics", simulation_tick="9" * (1 << 20))
    )
    with pytest.raises(msgs.BodyTooLarge):
        msgs.parse_received(body.encode(), zone=UTC)


def test_not_json_or_no_msg_type_stay_invalid() -> None:
    with pytest.raises(msgs.InvalidJson):
        msgs.parse_received(b"{nope", zone=UTC)
    with pytest.raises(msgs.InvalidMessage, match="msg_type: missing"):
        msgs.parse_received(json.dumps({"namespace": NS, "run_id": "1"}), zone=UTC)
    with pytest.raises(msgs.UnknownMessageType):
        msgs.parse_received(json.dumps({"msg_type": "agent_gossip", "namespace": NS}), zone=UTC)


def test_to_ours_converts_what_it_can_and_refuses_what_is_missing() -> None:
    start = msgs.to_ours(parse(WIRE_BODIES["start_run"]))
    assert type(start) is msgs.StartRun and start.schema_version == msgs.SCHEMA_VERSION
    assert "simulation_tick" not in start.to_json() and start.run_id == 100012
    with pytest.raises(msgs.InvalidMessage, match="size_bytes"):
        msgs.to_ours(parse(WIRE_BODIES["stf_gen"]))
    with pytest.raises(msgs.InvalidMessage, match="state"):
        msgs.to_ours(parse(WIRE_BODIES["end_run"]))


def test_liveness_rule() -> None:
    assert liveness(None, 10) is Liveness.UNKNOWN
    assert liveness(5, 10, exited=True) is Liveness.EXITED
    assert liveness(15, 10) is Liveness.OK and liveness(16, 10) is Liveness.LATE
    assert liveness(31, 10) is Liveness.DOWN and liveness(31, 10, slack_s=2) is Liveness.LATE
    assert liveness(599, 10, gone_after_s=600) is Liveness.DOWN
    assert liveness(601, 10, gone_after_s=600) is Liveness.GONE
    assert liveness(601, 10) is Liveness.DOWN  # without a gone threshold (the orchestrator's view)
    assert (
        liveness(700, 600, gone_after_s=600) is Liveness.OK
    )  # late or ok first: a slow interval is not gone

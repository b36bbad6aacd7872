"""The replay's plan: what is made new (execution, run numbers, file names, msg_ids), what kept."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.daq.simulator import stf_checksum
from swf_testbed.messages import (
    EndRun,
    Message,
    RunImminent,
    StfGen,
    WorkflowCompleted,
    WorkflowStarted,
)
from swf_testbed.mq.destinations import RUN_TOPIC, Destination
from swf_testbed.orchestrator.replay import (
    ReplayError,
    new_run_number,
    parse_types,
    plan_replay,
    renamed_file,
    replay,
)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("swf.001234.000007.stf", "swf.099999.000007.stf"),
        ("swf.1234.000007.stf", "swf.99999.000007.stf"),
        ("swf.20261202.034842.run.physics.stf", "swf.r99999.20261202.034842.run.physics.stf"),
        (
            "swf.000077.000007.stf",
            "swf.r99999.000077.000007.stf",
        ),  # another run's number is not this run's
        ("plain", "plain.r99999"),
    ],
)
def test_file_names_get_the_new_run(name: str, expected: str) -> None:
    assert renamed_file(name, 1234, 99999) == expected


def test_run_numbers_are_above_the_recorded_and_the_previous_one() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    seconds = int((now - datetime(2024, 1, 1, tzinfo=UTC)).total_seconds())
    assert new_run_number(5, now=now) == seconds
    assert new_run_number(seconds + 10, now=now) == seconds + 11
    assert new_run_number(5, previous=seconds, now=now) == seconds + 1


def test_types_are_a_subset_of_the_run_messages() -> None:
    assert parse_types("stf_gen, end_run") == ("stf_gen", "end_run")
    with pytest.raises(ReplayError, match="slice"):
        parse_types("stf_gen,slice")


class _Export:
    def __init__(self, messages: list[dict[str, Any]]) -> None:
        self.messages = messages
        self.execution = {
            "execution_id": "exec-R",
            "namespace": "src",
            "parameter_values": {"stf_count": 2},
        }


def _rows(t0: datetime) -> list[dict[str, Any]]:
    common: dict[str, Any] = {
        "namespace": "src",
        "sender": "runner",
        "execution_id": "exec-R",
        "run_id": 1234,
    }
    started = WorkflowStarted(
        namespace="src",
        sender="runner",
        workflow_name="stf_datataking",
        execution_id="exec-R",
        run_id=1234,
        config={"stf_count": 2},
        workflow_version="3",
        time_scale=0,
    )
    bodies: list[tuple[str, Message]] = [
        ("/topic/swf.src.replies", started),
        (
            "/topic/epictopic",
            RunImminent(
                **common,
                state="beam",
                substate="not_ready",
                timestamp=t0,
                run_conditions={"time_scale": 0},
            ),
        ),
        *[
            (
                "/topic/epictopic",
                StfGen(
                    **common,
                    state="run",
                    substate="physics",
                    timestamp=t0 + timedelta(seconds=i),
                    filename=f"swf.001234.{i:06d}.stf",
                    sequence=i,
                    size_bytes=100 + i,
                    checksum=stf_checksum(f"swf.001234.{i:06d}.stf", 100 + i),
                    tf_count=10,
                    start=t0,
                    end=t0 + timedelta(seconds=0.5),
                ),
            )
            for i in (1, 2)
        ],
        (
            "/topic/swf.src.workers",
            EndRun(**common, state="beam", substate="not_ready", total_stf_files=2),
        ),
        (
            "/topic/epictopic",
            EndRun(
                **common,
                state="beam",
                substate="not_ready",
                total_stf_files=2,
                timestamp=t0 + timedelta(seconds=3),
            ),
        ),
    ]
    rows = [{"destination": d, "body": m.to_json()} for d, m in bodies]
    rows.append(
        {
            "destination": "/topic/epictopic",
            "body": json.dumps({"msg_type": "stf_gen", "namespace": "src"}),
        }
    )
    return rows


def test_the_plan_renames_what_must_be_new_and_keeps_the_rest() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    plan = plan_replay(_Export(_rows(t0)), Path("r.jsonl"), "dst")
    assert [r.message.msg_type for r in plan.messages] == [
        "run_imminent",
        "stf_gen",
        "stf_gen",
        "end_run",
    ]
    assert plan.recorded_offsets == [0.0, 1.0, 2.0, 3.0]
    assert plan.skipped == [
        "r.jsonl:8: recorded invalid, not replayed: " + plan.skipped[0].split(": ", 2)[2]
    ]
    assert plan.execution_id.startswith("stf_datataking-dst-")
    assert plan.workflow_started.config == {"stf_count": 2, "replay_of": "exec-R"}
    assert plan.workflow_started.workflow_version == "3"

    sent: list[tuple[Destination, Message]] = []
    outcome = replay(plan, lambda dest, msg: sent.append((dest, msg)), speed=None)
    assert (outcome.sent, outcome.stf_count, outcome.interrupted) == (4, 2, False)
    assert [m.msg_type for _, m in sent] == [
        "workflow_started",
        "run_imminent",
        "stf_gen",
        "stf_gen",
        "end_run",
        "workflow_completed",
    ]
    new_run = plan.run_numbers[1234]
    for dest, msg in sent[1:-1]:
        assert dest == RUN_TOPIC
        assert (msg.namespace, msg.execution_id, msg.run_id, msg.sender) == (
            "dst",
            plan.execution_id,
            new_run,
            "replay",
        )
    gen = sent[2][1]
    assert isinstance(gen, StfGen)
    assert gen.filename == f"swf.{new_run:06d}.000001.stf" and gen.checksum == stf_checksum(
        gen.filename, 101
    )
    assert gen.end - gen.start == timedelta(seconds=0.5) and gen.start > t0
    assert isinstance(sent[1][1], RunImminent) and sent[1][1].run_conditions == {"time_scale": 0}
    recorded_ids = {json.loads(r["body"]).get("msg_id") for r in _rows(t0)}
    assert not recorded_ids & {m.msg_id for _, m in sent}
    done = sent[-1][1]
    assert isinstance(done, WorkflowCompleted)
    assert done.execution_id == plan.execution_id and done.status == "completed"


def test_an_interrupted_replay_closes_its_run_and_ends_terminated() -> None:
    import threading

    plan = plan_replay(_Export(_rows(datetime(2026, 1, 1, tzinfo=UTC))), Path("r.jsonl"), "dst")
    stop = threading.Event()
    sent: list[Message] = []

    def send(dest: Destination, msg: Message) -> None:
        sent.append(msg)
        if msg.msg_type == "stf_gen":
            stop.set()

    outcome = replay(plan, send, speed=1000.0, stop=stop)
    assert outcome.interrupted and outcome.sent == 2
    assert [m.msg_type for m in sent] == [
        "workflow_started",
        "run_imminent",
        "stf_gen",
        "end_run",
        "workflow_completed",
    ]
    assert isinstance(sent[3], EndRun) and sent[3].total_stf_files == 1
    assert sent[-1].status == "terminated"  # type: ignore[attr-defined]  # a WorkflowCompleted

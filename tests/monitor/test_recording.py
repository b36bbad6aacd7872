"""Recording and projection, in process: idempotency, bad bodies, out-of-order streams, facet
counts.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from swf_testbed.monitor.api import facets
from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.recording import Incoming
from swf_testbed.monitor.api.recording import record as record_batch

pytestmark = pytest.mark.django_db

STF = {
    "filename": "swf.000001.000001.stf",
    "sequence": 1,
    "size_bytes": 2_000_000_000,
    "checksum": "0a0b0c0d",
    "tf_count": 1000,
    "start": "2026-01-01T00:00:00Z",
    "end": "2026-01-01T00:00:01Z",
}


def test_same_message_twice_is_one_row(record: Any, make_message: Any) -> None:
    body = make_message("start_run")
    first = record(body, body)
    second = record(body)
    assert (first.stored, first.duplicates) == (1, 1)
    assert (second.stored, second.duplicates) == (0, 1)
    assert m.WorkflowMessage.objects.count() == 1
    assert m.SystemStateEvent.objects.count() == 1  # projected once


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\xff\xfe not utf-8", "invalid_json"),
        (b"{nope", "invalid_json"),
        (b"[1,2,3]", "invalid_fields"),
        (
            json.dumps({"msg_type": "warp_drive", "namespace": "ns1", "msg_id": "x1"}).encode(),
            "unknown_msg_type",
        ),
        (
            json.dumps(
                {"msg_type": "stf_gen", "namespace": "ns1", "sender": "d", "msg_id": "x2"}
            ).encode(),
            "invalid_fields",
        ),
        (
            b'{"msg_type": "heartbeat", "sender": "a\\u0000b", "msg_id": "x\\u0000y"}',
            "invalid_fields",
        ),
        (b'{"msg_type": "heartbeat"}' + b" " * (1024 * 1024 + 10), "too_large"),
    ],
)
def test_bad_bodies_are_stored_with_the_reason(record: Any, body: bytes, reason: str) -> None:
    result = record(body)
    assert result.stored == 1 and result.invalid == 1
    row = m.WorkflowMessage.objects.get()
    assert not row.is_valid and row.error_reason == reason and row.validation_error
    assert "\x00" not in row.body and "\x00" not in row.msg_id and "\x00" not in row.sender
    again = record(body)  # redelivered: still one row
    assert again.stored == 0 and m.WorkflowMessage.objects.count() == 1


def test_broker_message_id_makes_invalid_bodies_idempotent(db: None) -> None:
    batch = [
        Incoming(body=b"garbage", headers={"message-id": "ID:1"}),
        Incoming(body=b"garbage", headers={"message-id": "ID:2"}),
    ]
    assert record_batch(batch).stored == 2
    assert record_batch([Incoming(body=b"garbage", headers={"message-id": "ID:1"})]).stored == 0


def test_envelope_fields_of_invalid_messages_are_kept(record: Any) -> None:
    body = json.dumps(
        {
            "msg_type": "stf_gen",
            "msg_id": "abc",
            "namespace": "ns9",
            "sender": "daq",
            "execution_id": "e9",
            "run_id": 9,
            "timestamp": "2026-01-01T00:00:00Z",
        }
    ).encode()
    record(body)
    row = m.WorkflowMessage.objects.get(msg_id="abc")
    assert (row.msg_type, row.namespace_id, row.sender, row.execution_id, row.run_id) == (
        "stf_gen",
        "ns9",
        "daq",
        "e9",
        9,
    )
    assert row.sent_at == datetime(2026, 1, 1, tzinfo=UTC)
    assert m.Namespace.objects.filter(name="ns9").exists()


def test_run_lifecycle_projection(record: Any, make_message: Any) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    record(
        make_message(
            "run_imminent",
            state="beam",
            substate="not_ready",
            timestamp=t0,
            run_conditions={"e": 10},
        ),
        make_message("start_run", timestamp=t0 + timedelta(seconds=1)),
        make_message("stf_gen", timestamp=t0 + timedelta(seconds=2), **STF),
        make_message(
            "pause_run",
            state="run",
            substate="standby",
            reason="beam loss",
            timestamp=t0 + timedelta(seconds=3),
        ),
    )
    record(
        make_message(
            "end_run",
            state="beam",
            substate="not_ready",
            total_stf_files=1,
            timestamp=t0 + timedelta(seconds=4),
        )
    )
    run = m.Run.objects.get(run_number=1)
    assert (
        run.start_time == t0
        and run.end_time == t0 + timedelta(seconds=4)
        and run.total_stf_files == 1
    )
    assert run.execution.execution_id == "exec-1" and run.execution.status == "running"
    state = m.RunState.objects.get(run_number=1)
    assert (state.phase, state.state, state.substate) == ("ended", "beam", "not_ready")
    events = list(
        m.SystemStateEvent.objects.order_by("timestamp").values_list(
            "event_type", "state", "substate"
        )
    )
    assert events == [
        ("run_imminent", "beam", "not_ready"),
        ("start_run", "run", "physics"),
        ("pause_run", "run", "standby"),
        ("end_run", "beam", "not_ready"),
    ]
    assert m.SystemStateEvent.objects.get(event_type="pause_run").event_data == {
        "reason": "beam loss"
    }
    stf = m.StfFile.objects.get()
    assert (stf.status, stf.daq_state, stf.sequence, stf.file_size_bytes) == (
        "generated",
        "run",
        1,
        2_000_000_000,
    )


def test_out_of_order_messages_do_not_move_state_backwards(record: Any, make_message: Any) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    record(
        make_message(
            "end_run",
            state="beam",
            substate="not_ready",
            total_stf_files=0,
            timestamp=t0 + timedelta(seconds=9),
        )
    )
    record(make_message("start_run", timestamp=t0))  # arrives late
    state = m.RunState.objects.get(run_number=1)
    assert state.phase == "ended" and state.state == "beam"
    assert m.SystemStateEvent.objects.count() == 2  # history keeps both


def test_stf_ready_before_stf_gen(record: Any, make_message: Any) -> None:
    record(
        make_message(
            "stf_ready",
            filename=STF["filename"],
            url="file:///f",
            sequence=1,
            size_bytes=5,
            checksum="00000001",
        )
    )
    record(make_message("stf_gen", **STF))
    stf = m.StfFile.objects.get()
    assert stf.status == "registered" and stf.url == "file:///f" and stf.checksum == "0a0b0c0d"
    assert stf.metadata["start"].startswith("2026-01-01")


def test_fast_processing_chain_and_run_state_counters(record: Any, make_message: Any) -> None:
    record(make_message("stf_gen", **STF))
    common = {"tf_filename": "s.tf1", "stf_filename": STF["filename"]}
    record(
        make_message(
            "slice_result",
            slice_id=2,
            tf_filename="s.tf1",
            worker_id="w1",
            status="completed",
            processing_time_s=1.5,
        )
    )  # result before its slice
    record(
        make_message(
            "tf_file_registered", tf_first=0, tf_last=99, tf_count=100, size_bytes=10, **common
        ),
        *(
            make_message(
                "slice", slice_id=i, tf_first=i * 10, tf_last=i * 10 + 9, tf_count=10, **common
            )
            for i in range(1, 4)
        ),
        make_message("run_imminent_worker", target_worker_count=8, state="beam", substate="ready"),
    )
    record(
        make_message(
            "slice_result",
            slice_id=3,
            tf_filename="s.tf1",
            worker_id="w1",
            status="failed",
            processing_time_s=0.5,
            error="boom",
        )
    )
    sample = m.FastMonFile.objects.get()
    assert sample.stf_file.stf_filename == STF["filename"] and sample.tf_count == 100
    slices = {s.slice_id: s for s in m.TFSlice.objects.all()}
    assert (
        slices[2].status == "completed" and slices[2].tf_count == 10 and slices[2].sample == sample
    )
    assert (
        slices[1].status == "queued" and slices[3].status == "failed" and slices[3].error == "boom"
    )
    state = m.RunState.objects.get(run_number=1)
    assert (
        state.slices_created,
        state.slices_queued,
        state.slices_completed,
        state.slices_failed,
    ) == (3, 1, 1, 1)
    assert (
        state.stf_samples_received == 1
        and state.target_worker_count == 8
        and state.active_worker_count == 1
    )
    worker = m.Worker.objects.get(worker_id="w1")
    assert (worker.slices_completed, worker.slices_failed, worker.run_number) == (1, 1, 1)


def test_slice_retry_requeues_unless_completed(record: Any, make_message: Any) -> None:
    base = {
        "slice_id": 1,
        "tf_filename": "t",
        "stf_filename": "s",
        "tf_first": 0,
        "tf_last": 9,
        "tf_count": 10,
    }
    record(make_message("slice", **base))
    record(
        make_message(
            "slice_result",
            slice_id=1,
            tf_filename="t",
            worker_id="w",
            status="failed",
            processing_time_s=0,
        )
    )
    record(make_message("slice", retries=1, **base))
    assert m.TFSlice.objects.get().status == "queued" and m.TFSlice.objects.get().retries == 1
    record(
        make_message(
            "slice_result",
            slice_id=1,
            tf_filename="t",
            worker_id="w",
            status="completed",
            processing_time_s=0,
        )
    )
    record(
        make_message("slice", retries=1, **base)
    )  # a late duplicate of the retry (another msg_id)
    assert m.TFSlice.objects.get().status == "completed"


def test_heartbeats_project_to_agents_and_old_ones_do_not_undo_new(
    record: Any, make_message: Any
) -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    record(
        make_message(
            "heartbeat",
            operational_state="PROCESSING",
            timestamp=t0 + timedelta(seconds=30),
            counters={"handled": 5},
        )
    )
    record(make_message("heartbeat", operational_state="STARTING", timestamp=t0))
    agent = m.SystemAgent.objects.get()
    assert agent.operational_state == "PROCESSING" and agent.counters == {"handled": 5}
    assert (agent.namespace_id, agent.instance_name, agent.heartbeat_interval) == (
        "ns1",
        "tester",
        30,
    )
    assert agent.liveness(now=t0 + timedelta(seconds=40)) == "ok"
    assert agent.liveness(now=t0 + timedelta(seconds=30 + 70)) == "late"
    assert agent.liveness(now=t0 + timedelta(seconds=30 + 200)) == "down"
    record(
        make_message(
            "heartbeat",
            operational_state="EXITED",
            status="EXITED",
            timestamp=t0 + timedelta(minutes=1),
        )
    )
    assert m.SystemAgent.objects.get().liveness() == "exited"


def test_the_heartbeats_of_a_batch_are_written_together(record: Any, make_message: Any) -> None:
    """Set-wise: new and known agents in one batch, the newest beat of each, an older one ignored,
    the same name in two namespaces kept apart."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def beat(name: str, seconds: int, namespace: str = "ns1", **fields: Any) -> bytes:
        return make_message(
            "heartbeat",
            agent_name=name,
            namespace=namespace,
            timestamp=t0 + timedelta(seconds=seconds),
            **fields,
        )

    record(beat("a", 10, counters={"n": 1}), beat("b", 0))
    b_before = m.SystemAgent.objects.get(instance_name="b")
    record(
        beat("a", 5, counters={"n": 0}),  # older than what the monitor holds: ignored
        beat("b", 20, counters={"n": 2}, operational_state="PROCESSING"),
        beat("a", 0, namespace="ns2"),
        beat("c", 3, operational_state="PROCESSING"),
        beat("c", 1, operational_state="STARTING"),  # older than the other beat of c in the batch
    )
    agents = {(x.namespace_id, x.instance_name): x for x in m.SystemAgent.objects.all()}
    assert set(agents) == {("ns1", "a"), ("ns1", "b"), ("ns2", "a"), ("ns1", "c")}
    a = agents["ns1", "a"]
    assert (a.last_heartbeat, a.counters) == (t0 + timedelta(seconds=10), {"n": 1})
    b = agents["ns1", "b"]
    assert (b.last_heartbeat, b.counters, b.operational_state) == (
        t0 + timedelta(seconds=20),
        {"n": 2},
        "PROCESSING",
    )
    assert b.updated_at > b_before.updated_at and b.created_at == b_before.created_at
    assert agents["ns2", "a"].last_heartbeat == t0
    c = agents["ns1", "c"]
    assert (c.last_heartbeat, c.operational_state) == (t0 + timedelta(seconds=3), "PROCESSING")
    assert c.created_at is not None and c.updated_at is not None


def test_workflow_replies_project_to_executions(record: Any, make_message: Any) -> None:
    record(
        make_message(
            "workflow_started",
            execution_id="wf-1",
            workflow_name="stf_datataking",
            config={"stf_count": 3, "user": "alice"},
            workflow_version="1.2",
            git_commit="abc123",
        )
    )
    execution = m.WorkflowExecution.objects.get()
    assert execution.status == "running" and execution.executed_by == "alice"
    assert execution.workflow_definition.version == "1.2"
    assert execution.parameter_values["git_commit"] == "abc123"
    record(
        make_message(
            "workflow_completed", execution_id="wf-1", workflow_name="stf_datataking", stf_count=3
        )
    )
    execution.refresh_from_db()
    assert execution.status == "completed" and execution.end_time is not None
    record(
        make_message(
            "workflow_failed", execution_id="wf-2", workflow_name="x", error="nope", refused=True
        )
    )
    assert not m.WorkflowExecution.objects.filter(
        execution_id="wf-2"
    ).exists()  # refused: nothing started
    record(make_message("workflow_failed", execution_id="wf-3", workflow_name="x", error="crash"))
    assert m.WorkflowExecution.objects.get(execution_id="wf-3").status == "failed"


def test_a_failing_projection_is_recorded_and_does_not_stop_the_batch(
    record: Any, make_message: Any
) -> None:
    # a valid message (the schema has no upper bound) with a size no database column holds
    result = record(
        make_message("stf_gen", run_id=5, **{**STF, "size_bytes": 2**63 + 5}),
        make_message("start_run", run_id=6),
    )
    assert result.stored == 2 and result.projection_errors == 1
    assert m.WorkflowMessage.objects.get(msg_type="stf_gen").projection_error.startswith(
        ("OverflowError", "DataError")
    )
    assert not m.StfFile.objects.exists()
    assert m.RunState.objects.filter(run_number=6).exists()  # the rest of the batch went on


def test_facet_counts_follow_recording_and_deletion(record: Any, make_message: Any) -> None:
    record(
        *(make_message("heartbeat", sender=f"a{i % 2}", agent_name=f"a{i % 2}") for i in range(6)),
        make_message("start_run", execution_id="e1"),
        make_message("start_run", execution_id="e2"),
        b"junk",
    )
    assert facets.count_from_rollup({}) == 9
    assert facets.count_from_rollup({"msg_type": "heartbeat", "sender": "a0"}) == 3
    assert facets.count_from_rollup({"execution_id": "e1"}) == 1
    assert facets.count_from_rollup({"is_valid": False}) == 1
    counts = facets.facet_counts({"msg_type": "heartbeat"})
    assert dict(counts["sender"]) == {"a0": 3, "a1": 3}
    assert dict(counts["msg_type"])["start_run"] == 2  # a facet ignores its own filter
    m.WorkflowMessage.objects.filter(execution_id="e1").delete()
    assert facets.count_from_rollup({}) == 8
    before = sorted(m.MessageCount.objects.values_list("msg_type", "sender", "count"))
    facets.rebuild_counts()
    after = sorted(
        m.MessageCount.objects.filter(count__gt=0).values_list("msg_type", "sender", "count")
    )
    assert [row for row in before if row[2]] == after


def test_a_facet_knows_how_many_values_it_has_beyond_those_listed(
    record: Any, make_message: Any
) -> None:
    record(*(make_message("start_run", execution_id=f"e{i}") for i in range(5)))
    record(make_message("start_run", execution_id="e0"), make_message("heartbeat"))
    counted = facets.count_facets({"msg_type": "start_run"}, limit=2)
    assert counted["execution_id"].values == [("e0", 2), ("e1", 1)]
    assert counted["execution_id"].size == 5  # all five executions, two of them listed
    assert counted["msg_type"].size == 2  # a facet ignores its own filter
    m.WorkflowMessage.objects.filter(execution_id="e4").delete()  # its count drops to 0
    assert facets.count_facets({"msg_type": "start_run"}, limit=2)["execution_id"].size == 4
    assert facets.count_facets({}, limit=2)["execution_id"].size == 5  # and the heartbeat's ""
    assert facets.count_facets({"sender": "nobody"})["execution_id"] == facets.Facet([], 0)


def test_set_wise_projection_of_one_mixed_batch(record: Any, make_message: Any) -> None:
    files = [f"swf.000001.{i:06d}.stf" for i in range(3)]
    common = {"tf_filename": "s.tf", "stf_filename": files[0]}
    result = record(
        *(
            make_message("stf_gen", **{**STF, "filename": name, "sequence": i})
            for i, name in enumerate(files)
        ),
        make_message(
            "stf_ready",
            filename=files[0],
            url="file:///0",
            sequence=0,
            size_bytes=1,
            checksum="00000001",
        ),
        *(
            make_message(
                "slice_result",
                slice_id=i,
                tf_filename="s.tf",
                worker_id="w",
                processing_time_s=1,
                status="completed" if i == 1 else "failed",
            )
            for i in (1, 2)
        ),
        *(
            make_message("slice", slice_id=i, tf_first=0, tf_last=9, tf_count=10, **common)
            for i in (1, 2, 3)
        ),
        make_message(
            "tf_file_registered", tf_first=0, tf_last=29, tf_count=30, size_bytes=3, **common
        ),
    )
    assert result.stored == 10 and result.projection_errors == 0
    assert dict(m.StfFile.objects.values_list("stf_filename", "status")) == {
        files[0]: "registered",
        files[1]: "generated",
        files[2]: "generated",
    }
    slices = {s.slice_id: s for s in m.TFSlice.objects.select_related("sample")}
    assert {k: s.status for k, s in slices.items()} == {1: "completed", 2: "failed", 3: "queued"}
    assert all(s.sample is not None and s.tf_count == 10 for s in slices.values())
    worker = m.Worker.objects.get(worker_id="w")
    assert (worker.slices_completed, worker.slices_failed) == (1, 1)
    state = m.RunState.objects.get(run_number=1)
    assert (
        state.slices_created,
        state.slices_completed,
        state.slices_failed,
        state.stf_samples_received,
    ) == (3, 1, 1, 1)


def test_one_bad_message_in_a_set_fails_alone(record: Any, make_message: Any) -> None:
    bodies = [
        make_message(
            "stf_gen",
            **{
                **STF,
                "filename": f"f{i}",
                "sequence": i,
                "size_bytes": 2**63 + 5 if i == 2 else 10,
            },
        )
        for i in range(5)
    ]
    result = record(*bodies)
    assert result.stored == 5 and result.projection_errors == 1
    assert sorted(m.StfFile.objects.values_list("stf_filename", flat=True)) == [
        "f0",
        "f1",
        "f3",
        "f4",
    ]
    assert m.WorkflowMessage.objects.exclude(projection_error="").count() == 1


# --------------------------------------------------------------------------- agents' own logs


def _log_batch(make_message: Any, *, dropped: int = 0, **fields: Any) -> bytes:
    records = [
        {
            "timestamp": "2026-01-01T00:00:01Z",
            "level": 30,
            "levelname": "WARNING",
            "logger": "swf.agent",
            "message": "slow storage",
            "module": "data",
            "funcname": "on_stf",
            "lineno": 12,
            "thread": "data-h_0",
            "execution_id": "exec-1",
            "run_id": 100200,
        },
        {
            "timestamp": "2026-01-01T00:00:02Z",
            "level": 40,
            "levelname": "ERROR",
            "logger": "swf.agent",
            "message": "no such file \x00 here",
            "exception": "Traceback …\nOSError: gone",
        },
    ]
    return make_message(
        "log_batch",
        sender="data",
        agent_name="data",
        agent_type="data",
        instance_id="data-h-1",
        pid=77,
        hostname="h1",
        records=records,
        dropped=dropped,
        dropped_total=dropped + 3,
        buffer_size=50,
        **fields,
    )


def test_log_batch_becomes_log_rows_tied_to_namespace_agent_execution_and_run(
    record: Any, make_message: Any
) -> None:
    body = _log_batch(make_message)
    assert record(body, destination="/topic/swf.ns1.logs").stored == 1
    record(body)  # a redelivery adds nothing
    batch = m.WorkflowMessage.objects.get(msg_type="log_batch")
    assert batch.is_valid and not batch.projection_error
    rows = list(m.AppLog.objects.order_by("timestamp"))
    assert len(rows) == 2
    warning, error = rows
    assert (warning.namespace_id, warning.instance_name, warning.app_name) == (
        "ns1",
        "data",
        "data",
    )
    assert (warning.execution_id, warning.run_id, warning.levelname, warning.level) == (
        "exec-1",
        100200,
        "WARNING",
        30,
    )
    assert (warning.module, warning.funcname, warning.lineno, warning.process) == (
        "data",
        "on_stf",
        12,
        77,
    )
    assert warning.source_msg_id == batch.msg_id
    assert (error.execution_id, error.run_id) == ("", None)
    assert error.message == "no such file \ufffd here"
    assert error.extra_data["exception"].endswith("OSError: gone")


def test_log_batch_with_drops_says_so_in_the_log(record: Any, make_message: Any) -> None:
    record(_log_batch(make_message, dropped=7))
    gap = m.AppLog.objects.get(extra_data__logger=m.AppLog.DROPPED_LOGGER)
    assert gap.levelname == "WARNING" and gap.instance_name == "data" and gap.namespace_id == "ns1"
    assert gap.message.startswith(
        "7 log records dropped: the agent's log buffer (50 records) was full"
    )
    assert gap.extra_data["dropped_total"] == 10
    assert m.AppLog.objects.count() == 3


def test_log_batch_with_bad_record_is_recorded_invalid_and_projects_nothing(record: Any) -> None:
    body = json.dumps(
        {
            "msg_type": "log_batch",
            "msg_id": "lb-bad",
            "schema_version": 1,
            "namespace": "ns1",
            "sender": "data",
            "timestamp": "2026-01-01T00:00:00Z",
            "agent_name": "data",
            "agent_type": "data",
            "instance_id": "i",
            "pid": 1,
            "hostname": "h",
            "buffer_size": 5,
            "records": [
                {
                    "timestamp": "2026-01-01T00:00:00Z",
                    "level": 30,
                    "levelname": "WARNING",
                    "message": "m",
                    "colour": "red",
                }
            ],
        }
    ).encode()
    result = record(body)
    assert (result.stored, result.invalid) == (1, 1)
    row = m.WorkflowMessage.objects.get(msg_id="lb-bad")
    assert row.error_reason == "invalid_fields" and "records.0.colour" in row.validation_error
    assert m.AppLog.objects.count() == 0


def test_logs_page_facets_and_drop_counts(record: Any, make_message: Any, client: Any) -> None:
    record(_log_batch(make_message))
    record(
        make_message(
            "heartbeat", sender="data", agent_name="data", counters={"log_records_dropped": 4}
        )
    )
    page = client.get("/logs/?execution_id=exec-1").content.decode()
    assert "slow storage" in page and "no such file" not in page
    assert 'id="log-facets"' in page and "Agent" in page and "Execution" in page
    assert "1 log record" in page
    dropped = page.split('id="logs-dropped"', 1)[1].split("</table>", 1)[0]
    assert ">data</a>" in dropped and '<td class="num">4</td>' in dropped
    agent = m.SystemAgent.objects.get(instance_name="data")
    agent_page = client.get(f"/agents/{agent.pk}/").content.decode()
    assert (
        'id="agent-logs"' in agent_page
        and "2 log records" in agent_page
        and "slow storage" in agent_page
    )
    assert "4 dropped by its log buffer" in agent_page

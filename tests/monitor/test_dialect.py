"""The ePIC v28 dialect in the monitor, in process: recorded valid, projected like ours, merged
with REST.

Bodies are the wire document's, recorded the way the ingest records them
(:func:`record`, with the broker's ``message-id`` header); REST calls go
through the real API. The broker + ingest process variant is in
``test_dialect_ingest.py``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.recording import Incoming, record
from swf_testbed.settings import get_settings
from tests.support.v28 import ZONE, V28Run

pytestmark = pytest.mark.django_db

_serial = iter(range(1, 10**9))


@pytest.fixture(autouse=True)
def legacy_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SWF_LEGACY_TIMEZONE", ZONE)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def deliver(
    *bodies: dict[str, Any] | bytes,
    message_ids: list[str] | None = None,
    destination: str = "/topic/epictopic",
) -> Any:
    """Record bodies as deliveries from the broker (each with its own message-id unless given)."""
    ids = message_ids or [f"ID:broker-test-{next(_serial)}" for _ in bodies]
    return record(
        [
            Incoming(
                body=b if isinstance(b, bytes) else json.dumps(b).encode(),
                headers={"message-id": mid} if mid else {},
                destination=destination,
            )
            for b, mid in zip(bodies, ids, strict=True)
        ]
    )


def start_execution(api: Any, run: V28Run) -> None:
    """The v28 runner's REST calls before the run: definition, namespace, execution, run state."""
    definition = api.post(
        "/api/workflow-definitions/",
        {
            "workflow_name": "stf_datataking",
            "version": f"v-{run.execution_id}",
            "workflow_type": "simulation",
            "definition": "source",
            "parameter_values": {},
            "created_by": "alice",
            "created_at": run.time(0),
        },
        format="json",
    )
    assert definition.status_code == 201, definition.content
    assert (
        api.post(
            "/api/namespaces/ensure/", {"name": run.namespace, "owner": "alice"}, format="json"
        ).status_code
        == 200
    )
    execution = api.post(
        "/api/workflow-executions/", run.execution_payload(definition.json()["id"]), format="json"
    )
    assert execution.status_code == 201, execution.content


def post_run(api: Any, run: V28Run, expected: int) -> int:
    response = api.post("/api/runs/", run.run_payload(), format="json")
    assert response.status_code == expected, response.content
    return int(response.json()["run_id"])


def local(run: V28Run, second: int) -> datetime:
    """The UTC instant of a naive v28 time (New York, daylight saving time in July: UTC-4)."""
    return datetime.fromisoformat(run.time(second)).replace(tzinfo=UTC) + timedelta(hours=4)


def assert_projected_like_ours(run: V28Run, client: Any) -> None:
    """Every table and page a run of our agents fills."""
    row = m.Run.objects.get(run_number=run.run_number)
    assert m.Run.objects.filter(run_number=run.run_number).count() == 1
    assert row.execution_id == run.execution_id and row.namespace_id == run.namespace
    assert row.start_time == local(run, 0) and row.end_time == local(run, 2 + run.stf_count)
    assert row.total_stf_files == run.stf_count
    files = list(m.StfFile.objects.filter(run=row).order_by("sequence"))
    assert [f.stf_filename for f in files] == [run.filename(i) for i in range(1, run.stf_count + 1)]
    assert all(f.generated_at is not None and f.daq_state == "run" for f in files)
    state = m.RunState.objects.get(run_number=run.run_number)
    assert state.run_id == row.run_id and state.phase == "ended"
    assert (state.state, state.substate) == ("run", "physics")  # end_run's: the run's last state
    events = list(
        m.SystemStateEvent.objects.filter(run_number=run.run_number).order_by("timestamp")
    )
    assert [(e.event_type, e.state, e.substate) for e in events] == [
        ("run_imminent", "beam", "not_ready"),
        ("start_run", "run", "physics"),
        ("end_run", "run", "physics"),
    ]
    assert {e.namespace_id for e in events} == {run.namespace} and {
        e.execution_id for e in events
    } == {run.execution_id}
    messages = m.WorkflowMessage.objects.filter(run_id=run.run_number)
    assert messages.count() == len(run.lifecycle())
    assert all(
        msg.is_valid and msg.dialect == "epic-v28" and msg.schema_version is None
        for msg in messages
    )

    page = client.get(f"/executions/{run.execution_id}/").content.decode()
    assert f"run {run.run_number}" in page and "end_run" in page
    assert f"/runs/{run.run_number}/" in page
    listed = client.get("/api/workflow-executions/", {"execution_id": run.execution_id})
    api_row = [e for e in listed.json() if e["execution_id"] == run.execution_id][0]
    assert api_row["stf_count"] == run.stf_count
    executions = client.get("/executions/").content.decode()
    row_html = executions.split(f">{run.execution_id}</a>", 1)[1].split("</tr>", 1)[0]
    assert f'<td class="num">{run.stf_count}</td>' in row_html  # the STF column
    run_page = client.get(f"/runs/{run.run_number}/").content.decode()
    assert "messages of this run" in run_page and run.filename(1) in run_page
    listing = client.get("/messages/", {"run_id": run.run_number}).content.decode()
    assert listing.count("stf_gen") >= run.stf_count


def test_a_legacy_run_messages_first_then_rest(api: Any, client: Any) -> None:
    run = V28Run("v28-a", "stf_datataking-alice-0001", 100101)
    start_execution(api, run)
    assert api.post("/api/run-states/", run.run_state_payload(), format="json").status_code == 201
    result = deliver(*run.lifecycle())
    assert (result.stored, result.invalid, result.projection_errors) == (len(run.lifecycle()), 0, 0)
    # the data agent, behind the ingest: its run and files are those the messages made
    run_id = post_run(api, run, expected=200)
    assert run_id == m.Run.objects.get(run_number=run.run_number).run_id
    for seq in range(1, run.stf_count + 1):
        response = api.post("/api/stf-files/", run.stf_payload(run_id, seq), format="json")
        assert response.status_code == 200, response.content
        assert response.json()["file_id"] == str(
            m.StfFile.objects.get(stf_filename=run.filename(seq)).file_id
        )
    stf = m.StfFile.objects.get(stf_filename=run.filename(1))
    assert stf.status == "registered" and stf.file_size_bytes == 1001 and stf.metadata["created_by"]
    assert m.Run.objects.get(run_number=run.run_number).run_conditions == {
        "beam_energy": 18,
        "detector": "ePIC",
    }
    assert_projected_like_ours(run, client)


def test_a_legacy_run_rest_first_then_messages(api: Any, client: Any) -> None:
    run = V28Run("v28-b", "stf_datataking-alice-0002", 100102)
    start_execution(api, run)
    assert api.post("/api/run-states/", run.run_state_payload(), format="json").status_code == 201
    run_id = post_run(api, run, expected=201)
    made = m.Run.objects.get(run_id=run_id)
    # no execution in the payload: linked through the run state's metadata.execution_id
    assert made.execution_id == run.execution_id and made.namespace_id == run.namespace
    assert m.RunState.objects.get(run_number=run.run_number).run_id == run_id
    for seq in range(1, run.stf_count + 1):
        assert (
            api.post("/api/stf-files/", run.stf_payload(run_id, seq), format="json").status_code
            == 201
        )
    result = deliver(*run.lifecycle())
    assert (result.stored, result.invalid, result.projection_errors) == (len(run.lifecycle()), 0, 0)
    stf = m.StfFile.objects.get(stf_filename=run.filename(2))
    assert (
        stf.status == "registered" and stf.file_size_bytes == 1002
    )  # the message did not wipe what REST said
    assert stf.checksum == "" and stf.tf_count is None  # and made nothing up
    assert_projected_like_ours(run, client)


def test_a_run_posted_before_its_run_state_is_linked_by_the_run_state(api: Any) -> None:
    run = V28Run("v28-c", "stf_datataking-alice-0003", 100103)
    start_execution(api, run)
    run_id = post_run(api, run, expected=201)
    assert m.Run.objects.get(run_id=run_id).execution_id is None  # nothing names it yet
    assert api.post("/api/run-states/", run.run_state_payload(), format="json").status_code == 201
    linked = m.Run.objects.get(run_id=run_id)
    assert linked.execution_id == run.execution_id and linked.namespace_id == run.namespace


def test_the_runner_run_state_post_after_the_ingest_made_it_never_goes_back_in_time(
    api: Any,
) -> None:
    run = V28Run("v28-d", "stf_datataking-alice-0004", 100104)
    deliver(run.run_imminent(), run.start_run())
    late = {**run.run_state_payload(), "state_changed_at": run.time(0)}
    response = api.post("/api/run-states/", late, format="json")
    assert response.status_code == 200, response.content
    state = m.RunState.objects.get(run_number=run.run_number)
    assert (state.phase, state.state, state.substate) == ("running", "run", "physics")
    assert state.target_worker_count == 4 and state.metadata["execution_id"] == run.execution_id


def test_slices_take_the_namespace_of_their_execution(api: Any) -> None:
    run = V28Run("v28-e", "stf_datataking-alice-0005", 100105)
    deliver(run.run_imminent())
    result = deliver(
        *(run.slice(1, i) for i in range(3)), destination="/queue/panda.transformer.slices"
    )
    assert (result.stored, result.invalid, result.projection_errors) == (3, 0, 0)
    rows = m.WorkflowMessage.objects.filter(msg_type="slice", run_id=run.run_number)
    assert {(r.namespace_id, r.sender, r.execution_id, r.dialect) for r in rows} == {
        (run.namespace, "", run.execution_id, "epic-v28")
    }
    slices = m.TFSlice.objects.filter(run_number=run.run_number).order_by("slice_id")
    assert [(s.slice_id, s.tf_first, s.tf_last, s.tf_count, s.stf_filename) for s in slices] == [
        (i, i * 66, i * 66 + 65, 66, run.filename(1)) for i in range(3)
    ]
    assert m.RunState.objects.get(run_number=run.run_number).slices_created == 3
    # an execution nobody knows: the namespace stays empty, nothing is made up
    stray = V28Run("v28-e", "stf_datataking-nobody-0001", 100106)
    deliver(stray.slice(1, 0))
    assert m.WorkflowMessage.objects.get(msg_type="slice", run_id=100106).namespace_id is None


def test_end_run_without_a_known_state_leaves_it_empty() -> None:
    run = V28Run("v28-f", "stf_datataking-alice-0006", 100107)
    assert deliver(run.end_run()).projection_errors == 0
    event = m.SystemStateEvent.objects.get(run_number=run.run_number)
    assert (event.event_type, event.state, event.substate) == ("end_run", "", "")


def test_redelivery_is_idempotent_by_message_id_else_by_content() -> None:
    run = V28Run("v28-g", "stf_datataking-alice-0007", 100108)
    body = run.start_run()
    assert deliver(body, body, message_ids=["ID:same", "ID:same"]).stored == 1
    assert deliver(body, message_ids=["ID:same"]).duplicates == 1
    assert m.WorkflowMessage.objects.get(msg_id="mq:ID:same").dialect == "epic-v28"
    # without a message-id header: the content is the identity
    other = run.stf_gen(1)
    first = deliver(other, message_ids=[""])
    again = deliver(other, message_ids=[""])
    assert (first.stored, again.stored, again.duplicates) == (1, 0, 1)
    assert m.WorkflowMessage.objects.filter(msg_type="stf_gen", run_id=run.run_number).count() == 1
    assert m.StfFile.objects.filter(stf_filename=run.filename(1)).count() == 1
    assert m.SystemStateEvent.objects.filter(run_number=run.run_number).count() == 1


def test_hostile_dialect_input_is_recorded_with_a_reason_and_nothing_else_is_lost() -> None:
    run = V28Run("v28-h", "stf_datataking-alice-0008", 100109)
    hostile = [
        {**run.slice(1, 0), "content": ["not", "an", "object"]},
        {**run.start_run(), "run_id": "run-one-hundred"},
        json.dumps({**run.stf_gen(9), "simulation_tick": "7" * (1 << 20)}).encode(),
    ]
    good = run.lifecycle()
    result = deliver(good[0], *hostile, *good[1:])
    assert result.stored == len(good) + 3 and result.invalid == 3 and result.projection_errors == 0
    reasons = sorted(
        m.WorkflowMessage.objects.filter(is_valid=False).values_list(
            "error_reason", "validation_error"
        )
    )
    assert [r for r, _ in reasons] == ["invalid_fields", "invalid_fields", "too_large"]
    details = " | ".join(d for _, d in reasons)
    assert "content: must be a JSON object, not list" in details
    assert "run_id: 'run-one-hundred' is not a run number" in details
    assert all(
        d.startswith(("slice (ePIC v28)", "start_run (ePIC v28)", "body of")) for _, d in reasons
    )
    assert sorted(
        m.WorkflowMessage.objects.filter(is_valid=False).values_list("dialect", flat=True)
    ) == ["", "epic-v28", "epic-v28"]  # the too-large one was not read at all
    ours = deliver(
        json.dumps({"msg_type": "start_run", "msg_id": "ours-1", "schema_version": 1}).encode()
    )
    assert ours.invalid == 1 and m.WorkflowMessage.objects.get(msg_id="ours-1").dialect == "swf"
    huge = m.WorkflowMessage.objects.get(error_reason="too_large")
    assert huge.dialect == "" and len(huge.body) <= 1024 * 1024
    # the run itself is whole
    assert m.StfFile.objects.filter(run__run_number=run.run_number).count() == run.stf_count
    assert m.SystemStateEvent.objects.filter(run_number=run.run_number).count() == 3
    assert m.WorkflowMessage.objects.filter(is_valid=True, run_id=run.run_number).count() == len(
        good
    )


def test_message_detail_shows_the_dialect_and_the_extra_fields(client: Any) -> None:
    run = V28Run("v28-i", "stf_datataking-alice-0009", 100110)
    deliver(run.start_run(), message_ids=["ID:detail-1"])
    row = m.WorkflowMessage.objects.get(msg_id="mq:ID:detail-1")
    assert row.extra_fields() == {"simulation_tick": 1.0}
    assert row.sent_at == local(run, 1)  # the naive time, read in SWF_LEGACY_TIMEZONE
    html = client.get(f"/messages/{row.pk}/").content.decode()
    assert "ePIC v28" in html and 'id="extra-fields"' in html and "simulation_tick" in html
    api = client.get(f"/api/workflow-messages/{row.pk}/").json()
    assert api["dialect"] == "epic-v28" and api["body"]["simulation_tick"] == 1.0
    assert [
        r["msg_id"] for r in client.get("/api/workflow-messages/", {"dialect": "epic-v28"}).json()
    ] == ["mq:ID:detail-1"]


def test_an_agent_silent_past_the_gone_time_is_gone_not_down(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = timezone.now()
    runner = m.SystemAgent.objects.create(
        instance_name="workflow_runner-agent-alice-1",
        namespace=None,
        operational_state="READY",
        status="OK",
        last_heartbeat=now - timedelta(minutes=11),
    )
    crashed = m.SystemAgent.objects.create(
        instance_name="data-agent-alice-2",
        operational_state="READY",
        status="OK",
        last_heartbeat=now - timedelta(minutes=5),
    )
    assert runner.liveness(now).value == "gone" and crashed.liveness(now).value == "down"
    dashboard = client.get("/").content.decode()
    attention = dashboard.split("Agents needing attention", 1)[1].split("</table>", 1)[0]
    assert crashed.instance_name in attention and runner.instance_name not in attention
    assert "1 gone" in dashboard
    assert (
        client.get("/api/systemagents/", {"instance_name": runner.instance_name}).json()[0][
            "liveness"
        ]
        == "gone"
    )
    listed = client.get("/agents/", {"liveness": "gone"}).content.decode()
    assert runner.instance_name in listed and crashed.instance_name not in listed
    monkeypatch.setenv("SWF_AGENT_GONE_AFTER_S", "3600")
    get_settings.cache_clear()
    assert runner.liveness(now).value == "down"  # the time is a setting

"""API contract: the exact payloads existing ePIC agents send, auth, validation, paging, filters."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db

HEARTBEAT = {
    "instance_name": "processing-agent-alice-7",
    "agent_type": "PROCESSING",
    "status": "OK",
    "description": "PROCESSING agent. MQ: connected",
    "mq_connected": True,
    "pid": 4242,
    "hostname": "node1.example.org",
    "operational_state": "READY",
    "namespace": "alice-ns",
    "workflow_enabled": True,
    "current_stf_count": 2,
    "total_stf_processed": 17,
}


# --------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("post", "/api/systemagents/heartbeat/", HEARTBEAT),
        ("post", "/api/logs/", {"app_name": "a"}),
        ("post", "/api/runs/", {"run_number": 1, "start_time": "2026-01-01T00:00:00Z"}),
        ("post", "/api/state/next-run-number/", {}),
        ("post", "/api/state/next-agent-id/", {}),
        ("post", "/api/state/next-workflow-execution-id/", {"workflow_name": "w"}),
        ("post", "/api/namespaces/ensure/", {"name": "x", "owner": "y"}),
        ("post", "/api/subscribers/", {"subscriber_name": "s"}),
        ("post", "/api/run-states/5/", {"phase": "x"}),
        ("patch", "/api/runs/1/", {"end_time": "2026-01-01T00:00:00Z"}),
    ],
)
def test_anonymous_writes_are_refused(
    anon: Any, method: str, path: str, payload: dict[str, Any]
) -> None:
    # from an address outside the anonymous-log networks (loopback by default): logs are refused too
    response = getattr(anon, method)(path, payload, format="json", REMOTE_ADDR="192.0.2.7")
    assert response.status_code in (401, 403), response.content
    from swf_testbed.monitor.api import models as m

    assert (
        not m.SystemAgent.objects.exists()
        and not m.Run.objects.exists()
        and not m.Counter.objects.exists()
    )


def test_token_auth_header_is_what_authenticates(anon: Any, token: str) -> None:
    anon.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    assert anon.post("/api/systemagents/heartbeat/", HEARTBEAT, format="json").status_code == 401
    anon.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert anon.post("/api/systemagents/heartbeat/", HEARTBEAT, format="json").status_code == 201


def test_session_auth_works_for_people(anon: Any, user: Any) -> None:
    assert anon.login(username="alice", password="secret-pass-123")
    # session auth enforces CSRF for unsafe methods; DRF's test client skips the check by default
    assert anon.post("/api/state/next-agent-id/", {}, format="json").status_code == 200


def test_reads_are_open_by_default_and_can_be_closed(anon: Any) -> None:
    assert anon.get("/api/systemagents/").status_code == 200
    with override_settings(SWF_API_OPEN_READS=False):
        assert anon.get("/api/systemagents/").status_code == 401
        assert anon.get("/api/workflow-messages/").status_code == 401


# --------------------------------------------------------------------------- heartbeat


def test_heartbeat_creates_then_updates_only_fields_sent(api: Any) -> None:
    first = api.post("/api/systemagents/heartbeat/", HEARTBEAT, format="json")
    assert first.status_code == 201, first.content
    body = first.json()
    for key, value in HEARTBEAT.items():
        assert body[key] == value, key
    assert body["last_heartbeat"] and body["liveness"] == "ok"

    second = api.post(
        "/api/systemagents/heartbeat/",
        {
            "instance_name": HEARTBEAT["instance_name"],
            "namespace": "alice-ns",
            "status": "WARNING",
            "operational_state": "PROCESSING",
        },
        format="json",
    )
    assert second.status_code == 200, second.content
    body = second.json()
    assert body["id"] == first.json()["id"]
    assert body["status"] == "WARNING" and body["operational_state"] == "PROCESSING"
    # fields not sent are unchanged
    assert (
        body["pid"] == 4242
        and body["hostname"] == "node1.example.org"
        and body["total_stf_processed"] == 17
    )
    assert body["description"] == HEARTBEAT["description"]


def test_heartbeat_without_namespace_updates_the_same_agent(api: Any) -> None:
    payload = {k: v for k, v in HEARTBEAT.items() if k != "namespace"}
    assert api.post("/api/systemagents/heartbeat/", payload, format="json").status_code == 201
    again = api.post(
        "/api/systemagents/heartbeat/",
        {"instance_name": payload["instance_name"], "pid": 9},
        format="json",
    )
    assert (
        again.status_code == 200 and again.json()["pid"] == 9 and again.json()["namespace"] is None
    )


def test_heartbeat_keeps_unknown_fields_in_metadata(api: Any) -> None:
    response = api.post(
        "/api/systemagents/heartbeat/", {**HEARTBEAT, "agent_url": "http://x:1/"}, format="json"
    )
    assert response.status_code == 201
    assert response.json()["metadata"]["agent_url"] == "http://x:1/"


def test_same_agent_name_in_two_namespaces_is_two_agents(api: Any) -> None:
    a = api.post("/api/systemagents/heartbeat/", {**HEARTBEAT, "namespace": "ns-a"}, format="json")
    b = api.post("/api/systemagents/heartbeat/", {**HEARTBEAT, "namespace": "ns-b"}, format="json")
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "FINE"},  # unknown enum
        {"operational_state": "SLEEPING"},  # unknown enum
        {"pid": "four"},  # wrong type
        {"pid": -1},
        {"mq_connected": "perhaps"},
        {"instance_name": "x" * 201},  # overlong
        {"hostname": "h" * 256},
        {"namespace": "has space"},  # not a name
        {"namespace": "n" * 129},
        {"current_stf_count": 2**40},  # out of range
        {"instance_name": None},
    ],
)
@pytest.mark.slow
def test_heartbeat_bad_input_is_400(api: Any, bad: dict[str, Any]) -> None:
    response = api.post("/api/systemagents/heartbeat/", {**HEARTBEAT, **bad}, format="json")
    assert response.status_code == 400, response.content
    assert set(bad) & set(response.json())  # the error names the field


def test_heartbeat_missing_instance_name_is_400(api: Any) -> None:
    response = api.post("/api/systemagents/heartbeat/", {"agent_type": "x"}, format="json")
    assert response.status_code == 400 and "instance_name" in response.json()


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b'"text"', b"null"])
def test_malformed_bodies_are_400(api: Any, raw: bytes) -> None:
    response = api.generic(
        "POST", "/api/systemagents/heartbeat/", raw, content_type="application/json"
    )
    assert response.status_code == 400, response.content


def test_nul_characters_are_refused_or_stored_never_500(api: Any) -> None:
    response = api.post("/api/logs/", {**LOG, "message": "a\x00b"}, format="json")
    assert response.status_code == 400
    response = api.post(
        "/api/runs/",
        {"run_number": 77, "start_time": "2026-01-01T00:00:00Z", "run_conditions": {"k": "a\x00b"}},
        format="json",
    )
    assert response.status_code in (201, 400)


# --------------------------------------------------------------------------- logs

LOG = {
    "app_name": "processing_agent",
    "instance_name": "processing-agent-alice-7",
    # naive, local isoformat: what the REST log handler sends
    "timestamp": "2026-03-01T12:00:00.123456",
    "level": 20,
    "levelname": "INFO",
    "message": "Processed STF swf.000001.000003.stf",
    "module": "processing_agent",
    "funcname": "on_message",
    "lineno": 123,
    "process": 4242,
    "thread": 140245117867840,
    "extra_data": {
        "execution_id": "stf_datataking-alice-0001",
        "workflow_name": "stf_datataking",
        "run_id": 100012,
        "username": "alice",
    },
}


def test_log_post_and_filter(api: Any) -> None:
    response = api.post("/api/logs/", LOG, format="json")
    assert response.status_code == 201, response.content
    assert (
        response.json()["execution_id"] == "stf_datataking-alice-0001"
        and response.json()["run_id"] == 100012
    )
    other = api.post("/api/logs/", {**LOG, "extra_data": None, "message": "other"}, format="json")
    assert other.status_code == 201, other.content
    rows = api.get("/api/logs/", {"execution_id": "stf_datataking-alice-0001"}).json()
    assert [r["message"] for r in rows] == [LOG["message"]]
    assert len(api.get("/api/logs/", {"run_id": 100012}).json()) == 1
    assert len(api.get("/api/logs/", {"min_level": 30}).json()) == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"level": "loud"},
        {"timestamp": "yesterday"},
        {"lineno": "x"},
        {"extra_data": [1, 2]},
        {"app_name": "a" * 101},
    ],
)
def test_log_bad_input_is_400(api: Any, bad: dict[str, Any]) -> None:
    assert api.post("/api/logs/", {**LOG, **bad}, format="json").status_code == 400


# --------------------------------------------------------------------------- runs and files


def _run(api: Any, number: int = 100012) -> dict[str, Any]:
    response = api.post(
        "/api/runs/",
        {
            "run_number": number,
            "start_time": "2026-03-01T12:00:00Z",
            "run_conditions": {"beam_energy": 10, "detector": "ePIC"},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    return response.json()


def test_run_create_and_end(api: Any) -> None:
    run = _run(api)
    assert isinstance(run["run_id"], int)
    patched = api.patch(
        f"/api/runs/{run['run_id']}/", {"end_time": "2026-03-01T13:00:00Z"}, format="json"
    )
    assert patched.status_code == 200 and patched.json()["end_time"].startswith(
        "2026-03-01T13:00:00"
    )
    assert api.get("/api/runs/", {"run_number": 100012}).json()[0]["run_id"] == run["run_id"]
    again = api.post(
        "/api/runs/", {"run_number": 100012, "start_time": "2026-03-01T12:00:00Z"}, format="json"
    )
    assert (
        again.status_code == 200 and again.json()["run_id"] == run["run_id"]
    )  # the same run: merged
    assert again.json()["end_time"].startswith("2026-03-01T13:00:00")  # what it did not say is kept
    for bad in (
        {"run_number": -1},
        {"run_number": "one"},
        {"start_time": "later"},
        {"run_number": 2**70},
    ):
        payload = {"run_number": 5, "start_time": "2026-03-01T12:00:00Z", **bad}
        assert api.post("/api/runs/", payload, format="json").status_code == 400, bad


def test_stf_file_create_and_update(api: Any) -> None:
    run = _run(api)
    response = api.post(
        "/api/stf-files/",
        {
            "run": run["run_id"],
            "stf_filename": "swf.100012.000001.stf",
            "file_size_bytes": 2_000_000_000,
            "machine_state": "physics",
            "status": "registered",
            "metadata": {"sequence": 1},
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    file_id = response.json()["file_id"]
    patched = api.patch(f"/api/stf-files/{file_id}/", {"status": "processed"}, format="json")
    assert patched.status_code == 200 and patched.json()["status"] == "processed"
    assert [r["file_id"] for r in api.get("/api/stf-files/", {"run_number": 100012}).json()] == [
        file_id
    ]
    assert api.get("/api/stf-files/", {"run_number": 1}).json() == []
    for bad in (
        {"status": "lost"},
        {"stf_filename": "x" * 256},
        {"run": 999999},
        {"file_size_bytes": "big"},
    ):
        payload = {"run": run["run_id"], "stf_filename": "swf.100012.000002.stf", **bad}
        assert api.post("/api/stf-files/", payload, format="json").status_code == 400, bad


def test_fastmon_file_and_tf_slice(api: Any) -> None:
    run = _run(api)
    stf = api.post(
        "/api/stf-files/",
        {"run": run["run_id"], "stf_filename": "swf.100012.000001.stf", "status": "registered"},
        format="json",
    ).json()
    sample = api.post(
        "/api/fastmon-files/",
        {
            "stf_file": stf["file_id"],
            "tf_filename": "swf.100012.000001.tf.0001",
            "file_size_bytes": 1000,
            "status": "registered",
            "metadata": {"tf_first": 0},
        },
        format="json",
    )
    assert sample.status_code == 201, sample.content
    assert (
        api.post(
            "/api/fastmon-files/",
            {"stf_file": stf["file_id"], "tf_filename": "t2", "status": "nope"},
            format="json",
        ).status_code
        == 400
    )
    slice_payload = {
        "slice_id": 1,
        "tf_first": 0,
        "tf_last": 9,
        "tf_count": 10,
        "tf_filename": "swf.100012.000001.tf.0001",
        "stf_filename": "swf.100012.000001.stf",
        "run_number": 100012,
        "status": "queued",
        "retries": 0,
        "metadata": {},
    }
    created = api.post("/api/tf-slices/", slice_payload, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["sample"] == sample.json()["tf_file_id"]
    unsliced = api.post(
        "/api/fastmon-files/",
        {
            "stf_file": stf["file_id"],
            "tf_filename": "swf.100012.000001.tf.0002",
            "status": "registered",
        },
        format="json",
    ).json()
    assert [
        s["tf_filename"] for s in api.get("/api/fastmon-files/", {"has_slices": "true"}).json()
    ] == ["swf.100012.000001.tf.0001"]
    assert [
        s["tf_file_id"] for s in api.get("/api/fastmon-files/", {"has_slices": "false"}).json()
    ] == [unsliced["tf_file_id"]]
    done = api.patch(
        f"/api/tf-slices/{created.json()['id']}/",
        {"status": "completed", "assigned_worker": "w1"},
        format="json",
    )
    assert done.status_code == 200 and done.json()["status"] == "completed"
    assert (
        len(api.get("/api/tf-slices/", {"status": "completed", "run_number": 100012}).json()) == 1
    )
    assert api.get("/api/tf-slices/", {"status": "queued"}).json() == []
    for bad in (
        {"status": "stuck"},
        {"tf_last": -3},
        {"tf_first": 10, "tf_last": 2},
        {"slice_id": "a"},
    ):
        assert (
            api.post(
                "/api/tf-slices/", {**slice_payload, "slice_id": 2, **bad}, format="json"
            ).status_code
            == 400
        ), bad
    assert api.post("/api/tf-slices/", slice_payload, format="json").status_code == 400  # duplicate


def test_run_state_by_run_number(api: Any) -> None:
    created = api.post(
        "/api/run-states/100012/",
        {"phase": "imminent", "state": "beam", "substate": "not_ready", "target_worker_count": 4},
        format="json",
    )
    assert created.status_code == 201, created.content
    updated = api.post(
        "/api/run-states/100012/", {"phase": "running", "state": "run"}, format="json"
    )
    assert updated.status_code == 200 and updated.json()["phase"] == "running"
    assert updated.json()["target_worker_count"] == 4
    # the counters are counted from the run's slices (none here): a PATCH of one is accepted and
    # changes nothing, and what is shown is the count
    patched = api.patch(
        "/api/run-states/100012/", {"slices_completed": 3, "substate": "physics"}, format="json"
    )
    assert patched.status_code == 200, patched.content
    assert (patched.json()["slices_completed"], patched.json()["substate"]) == (0, "physics")
    fetched = api.get("/api/run-states/100012/")
    assert fetched.status_code == 200 and fetched.json()["state"] == "run"
    assert api.get("/api/run-states/999/").status_code == 404
    assert (
        api.post(
            "/api/run-states/", {"run_number": 7, "phase": "x", "state": "run"}, format="json"
        ).status_code
        == 201
    )
    bad = api.post("/api/run-states/100012/", {"target_worker_count": -1}, format="json")
    assert bad.status_code == 400 and "target_worker_count" in bad.json(), bad.content


def test_system_state_events_are_append_only(api: Any) -> None:
    event = {
        "timestamp": "2026-03-01T12:00:00Z",
        "run_number": 100012,
        "event_type": "start_run",
        "state": "run",
        "substate": "physics",
        "event_data": {"by": "daq"},
    }
    created = api.post("/api/system-state-events/", event, format="json")
    assert created.status_code == 201, created.content
    event_id = created.json()["event_id"]
    assert (
        api.patch(
            f"/api/system-state-events/{event_id}/", {"state": "beam"}, format="json"
        ).status_code
        == 405
    )
    assert api.delete(f"/api/system-state-events/{event_id}/").status_code == 405
    assert (
        len(
            api.get(
                "/api/system-state-events/", {"run_number": 100012, "event_type": "start_run"}
            ).json()
        )
        == 1
    )
    assert (
        api.post(
            "/api/system-state-events/", {**event, "timestamp": None}, format="json"
        ).status_code
        == 400
    )


def test_subscriber_duplicate_says_already_exists(api: Any) -> None:
    payload = {
        "subscriber_name": "processing-agent-alice-7-/queue/workflow_control",
        "description": "PROCESSING agent subscribing to /queue/workflow_control",
        "is_active": True,
        "fraction": 1.0,
    }
    assert api.post("/api/subscribers/", payload, format="json").status_code == 201
    again = api.post("/api/subscribers/", payload, format="json")
    # existing agents treat exactly this as "already registered"
    assert again.status_code == 400
    assert "already exists" in again.text.lower() and "subscriber" in again.text.lower()
    assert (
        api.post(
            "/api/subscribers/", {**payload, "subscriber_name": "s2", "fraction": 2}, format="json"
        ).status_code
        == 400
    )


def test_workers(api: Any) -> None:
    created = api.post(
        "/api/workers/",
        {
            "worker_id": "w-1",
            "run_number": 100012,
            "panda_job": "123",
            "location": "BNL",
            "status": "active",
            "started_at": "2026-03-01T12:00:00Z",
        },
        format="json",
    )
    assert created.status_code == 201, created.content
    assert [w["worker_id"] for w in api.get("/api/workers/", {"run_number": 100012}).json()] == [
        "w-1"
    ]
    assert (
        api.patch("/api/workers/w-1/", {"slices_completed": 5}, format="json").json()[
            "slices_completed"
        ]
        == 5
    )


# --------------------------------------------------------------------------- workflows


DEFINITION = {
    "workflow_name": "stf_datataking",
    "version": "1.0",
    "workflow_type": "daq",
    "definition": "def workflow(env): ...",
    "parameter_values": {"stf_count": 10},
    "created_by": "alice",
}


def test_workflow_definition_lookup_and_immutability(api: Any) -> None:
    created = api.post("/api/workflow-definitions/", DEFINITION, format="json")
    assert created.status_code == 201, created.content
    api.post("/api/workflow-definitions/", {**DEFINITION, "version": "2.0"}, format="json")
    found = api.get(
        "/api/workflow-definitions/", {"workflow_name": "stf_datataking", "version": "1.0"}
    ).json()
    assert [d["id"] for d in found] == [created.json()["id"]]
    assert api.get("/api/workflow-definitions/", {"workflow_name": "other"}).json() == []
    assert (
        api.post("/api/workflow-definitions/", DEFINITION, format="json").status_code == 400
    )  # same version
    assert (
        api.patch(
            f"/api/workflow-definitions/{created.json()['id']}/", {"definition": "x"}, format="json"
        ).status_code
        == 405
    )


def test_workflow_execution_lifecycle(api: Any) -> None:
    definition = api.post("/api/workflow-definitions/", DEFINITION, format="json").json()
    payload = {
        "execution_id": "stf_datataking-alice-0001",
        "workflow_definition": definition["id"],
        "namespace": "alice-ns",
        "status": "running",
        "executed_by": "alice",
        "start_time": "2026-03-01T12:00:00Z",
        "parameter_values": {"stf_count": 5, "git_version": "v0.1-3-gabc"},
    }
    created = api.post("/api/workflow-executions/", payload, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["workflow_name"] == "stf_datataking"
    done = api.patch(
        "/api/workflow-executions/stf_datataking-alice-0001/",
        {"status": "completed", "end_time": "2026-03-01T12:10:00Z"},
        format="json",
    )
    assert done.status_code == 200 and done.json()["status"] == "completed"
    listed = api.get(
        "/api/workflow-executions/", {"namespace": "alice-ns", "status": "completed"}
    ).json()
    assert [e["execution_id"] for e in listed] == ["stf_datataking-alice-0001"]
    assert listed[0]["stf_count"] == 0
    assert (
        api.patch(
            "/api/workflow-executions/stf_datataking-alice-0001/",
            {"status": "exploded"},
            format="json",
        ).status_code
        == 400
    )
    assert (
        api.post(
            "/api/workflow-executions/",
            {**payload, "execution_id": "e2", "workflow_definition": 99999},
            format="json",
        ).status_code
        == 400
    )


def test_workflow_messages_filter_by_execution(api: Any, record: Any, make_message: Any) -> None:
    record(
        make_message("start_run", execution_id="exec-A", run_id=1),
        make_message("start_run", execution_id="exec-B", run_id=2),
        make_message(
            "stf_gen",
            execution_id="exec-A",
            run_id=1,
            filename="f1",
            sequence=1,
            size_bytes=1,
            checksum="0000000a",
            tf_count=1,
            start="2026-01-01T00:00:00Z",
            end="2026-01-01T00:00:01Z",
        ),
    )
    rows = api.get("/api/workflow-messages/", {"execution_id": "exec-A"}).json()
    assert isinstance(rows, list) and len(rows) == 2
    assert {r["execution_id"] for r in rows} == {"exec-A"}
    assert {r["msg_type"] for r in rows} == {"start_run", "stf_gen"}
    assert rows[0]["message_content"]["execution_id"] == "exec-A"  # ePIC's name for the body
    assert (
        api.get("/api/workflow-messages/", {"msg_type": "stf_gen"}).json()[0]["body"]["filename"]
        == "f1"
    )
    assert len(api.get("/api/workflow-messages/", {"run_id": 2}).json()) == 1
    assert api.get("/api/workflow-messages/", {"run_id": "two"}).status_code == 400
    assert api.post("/api/workflow-messages/", {}, format="json").status_code == 405


def test_paging_plain_list_without_parameters_and_counts_with(
    api: Any, record: Any, make_message: Any
) -> None:
    record(
        *(make_message("heartbeat", sender=f"s{i % 3}", agent_name=f"s{i % 3}") for i in range(7))
    )
    plain = api.get("/api/workflow-messages/")
    assert isinstance(plain.json(), list) and len(plain.json()) == 7
    page = api.get("/api/workflow-messages/", {"limit": 2, "offset": 0}).json()
    assert page["count"] == 7 and len(page["results"]) == 2 and page["next"]
    page = api.get("/api/workflow-messages/", {"limit": 5, "sender": "s0"}).json()
    assert page["count"] == 3 and {r["sender"] for r in page["results"]} == {"s0"}
    # a filter the facet table does not answer falls back to counting rows
    page = api.get(
        "/api/workflow-messages/", {"limit": 5, "received_after": "2000-01-01T00:00:00Z"}
    ).json()
    assert page["count"] == 7
    assert api.get("/api/workflow-messages/", {"limit": "many"}).status_code in (200, 400)
    with override_settings(SWF_API_MAX_UNPAGED=5):
        capped = api.get("/api/workflow-messages/")
        assert len(capped.json()) == 5 and capped["X-Truncated"].startswith("true")


def test_ordering(api: Any, record: Any, make_message: Any) -> None:
    record(
        make_message("heartbeat", sender="b", agent_name="b"),
        make_message("heartbeat", sender="a", agent_name="a"),
    )
    assert [
        r["sender"] for r in api.get("/api/workflow-messages/", {"ordering": "sender"}).json()
    ] == ["a", "b"]
    assert [
        r["sender"] for r in api.get("/api/workflow-messages/", {"ordering": "-sender"}).json()
    ] == ["b", "a"]


# -------------------------------------------------------------------------- counters and namespaces


def test_counters(api: Any) -> None:
    first = api.post("/api/state/next-run-number/", {}, format="json").json()
    second = api.post("/api/state/next-run-number/", {}, format="json").json()
    assert first["status"] == "success" and second["run_number"] == first["run_number"] + 1
    agent = api.post("/api/state/next-agent-id/", {}, format="json").json()
    assert agent == {"status": "success", "agent_id": 1}
    seq = api.post(
        "/api/state/next-workflow-execution-id/", {"workflow_name": "stf_datataking"}, format="json"
    ).json()
    assert seq["sequence"] == 1 and seq["status"] == "success"
    assert (
        api.post(
            "/api/state/next-workflow-execution-id/", {"workflow_name": "w" * 300}, format="json"
        ).status_code
        == 400
    )


@pytest.mark.django_db(transaction=True)
def test_counters_are_atomic_under_concurrency(token: str) -> None:
    from django.db import connection
    from rest_framework.test import APIClient

    results: list[int] = []
    errors: list[str] = []

    def worker() -> None:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
        try:
            for _ in range(10):
                response = client.post("/api/state/next-agent-id/", {}, format="json")
                if response.status_code != 200:
                    errors.append(response.content.decode())
                else:
                    results.append(response.json()["agent_id"])
        finally:
            connection.close()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(results) == list(range(1, 61))


def test_ensure_namespace(api: Any) -> None:
    first = api.post("/api/namespaces/ensure/", {"name": "torre1", "owner": "torre"}, format="json")
    assert first.status_code == 200, first.content
    assert first.json() == {
        "name": "torre1",
        "owner": "torre",
        "description": "",
        "created": True,
        "status": "success",
    }
    again = api.post(
        "/api/namespaces/ensure/", {"name": "torre1", "owner": "someone"}, format="json"
    ).json()
    assert again["created"] is False and again["owner"] == "torre"
    assert (
        api.post(
            "/api/namespaces/ensure/", {"name": "bad name", "owner": "x"}, format="json"
        ).status_code
        == 400
    )
    assert api.get("/api/namespaces/torre1/").json()["owner"] == "torre"


# --------------------------------------------------------------------------- schema


def test_openapi_schema_and_docs(anon: Any) -> None:
    schema = anon.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/systemagents/heartbeat/",
        "/api/workflow-messages/",
        "/api/state/next-run-number/",
        "/api/namespaces/ensure/",
        "/api/run-states/{run_number}/",
    ):
        assert path in paths, path
    docs = anon.get("/api/docs/")
    assert docs.status_code in (200, 302)
    if docs.status_code == 200:
        assert b"cdn" not in docs.content.lower()


# --------------------------------------------------------------------------- ordering


def _list_endpoints() -> list[str]:
    """Every list endpoint the URL conf routes to a viewset's ``list`` action."""
    from drf_spectacular.generators import EndpointEnumerator

    return sorted(
        path
        for path, _regex, method, view in EndpointEnumerator().get_api_endpoints()
        if method == "GET" and getattr(view, "actions", {}).get("get") == "list"
    )


def test_an_unknown_ordering_field_is_a_400_naming_the_allowed_ones_on_every_list(
    anon: Any,
) -> None:
    endpoints = _list_endpoints()
    assert (
        len(endpoints) >= 15 and "/api/workflow-stages/" in endpoints
    )  # the enumeration itself works
    for path in endpoints:
        response = anon.get(path, {"ordering": "-no_such_field,also_unknown"})
        assert response.status_code == 400, (path, response.status_code, response.content[:300])
        message = response.json()["ordering"][0]
        assert "'-no_such_field', 'also_unknown'" in message, (path, message)
        allowed = message.split("allowed (prefix - for descending): ", 1)[1].split(", ")
        assert allowed and allowed[0], (path, message)
        for name in (
            allowed[0],
            f"-{allowed[-1]}",
            f"{allowed[0]},-{allowed[-1]}",
        ):  # the named ones work
            assert anon.get(path, {"ordering": name}).status_code == 200, (path, name)
        # one unknown among known ones is still refused
        assert anon.get(path, {"ordering": f"{allowed[0]},nope"}).status_code == 400, path


def test_system_state_event_with_a_null_substate(api: Any) -> None:
    """The v28 fast-processing agent's body: naive timestamp, state "unknown", substate null."""
    body = {
        "timestamp": "2026-03-01T12:00:00.123456",
        "run_number": 100012,
        "event_type": "slices_created",
        "state": "unknown",
        "substate": None,
        "event_data": {"slices": 15},
    }
    created = api.post("/api/system-state-events/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["substate"] == "" and created.json()["timestamp"].startswith(
        "2026-03-01T12:00:00.123456"
    )


def test_rest_slice_and_sample_writes_leave_the_run_state_counted_from_the_tables(
    api: Any, django_capture_on_commit_callbacks: Any
) -> None:
    """An agent's read-then-PATCH of a counter (as v28 fast processing does) changes nothing: the
    counters are counted from the slices and samples, and one written over REST adds its
    difference once committed. (The test runs in a transaction: its commit callbacks are run as
    each request ends.)"""
    run = _run(api)
    api.post("/api/run-states/100012/", {"phase": "running", "state": "run"}, format="json")
    stf = api.post(
        "/api/stf-files/",
        {"run": run["run_id"], "stf_filename": "swf.100012.000001.stf", "status": "registered"},
        format="json",
    ).json()
    api.patch(
        "/api/run-states/100012/",
        {"stf_samples_received": 7, "slices_created": 99, "slices_queued": 99},
        format="json",
    )  # counted by an agent from a stale read
    with django_capture_on_commit_callbacks(execute=True):
        sample = api.post(
            "/api/fastmon-files/",
            {
                "stf_file": stf["file_id"],
                "tf_filename": "swf.100012.000001.tf.0001",
                "status": "registered",
            },
            format="json",
        )
    assert sample.status_code == 201, sample.content
    state = api.get("/api/run-states/100012/").json()
    assert (state["stf_samples_received"], state["slices_created"]) == (1, 0)
    for slice_id in (1, 2, 3):
        with django_capture_on_commit_callbacks(execute=True):
            created = api.post(
                "/api/tf-slices/",
                {
                    "slice_id": slice_id,
                    "tf_first": slice_id * 10,
                    "tf_last": slice_id * 10 + 9,
                    "tf_count": 10,
                    "tf_filename": "swf.100012.000001.tf.0001",
                    "stf_filename": "swf.100012.000001.stf",
                    "run_number": 100012,
                    "status": "queued",
                    "retries": 0,
                    "metadata": {},
                },
                format="json",
            )
        assert created.status_code == 201, created.content
    with django_capture_on_commit_callbacks(execute=True):
        done = api.patch(
            f"/api/tf-slices/{created.json()['id']}/", {"status": "completed"}, format="json"
        )
    assert done.status_code == 200
    state = api.get("/api/run-states/100012/").json()
    assert (state["phase"], state["state"]) == (
        "running",
        "run",
    )  # the counters' differences write counters only
    assert (
        state["stf_samples_received"],
        state["slices_created"],
        state["slices_queued"],
        state["slices_completed"],
    ) == (1, 3, 2, 1)

"""The REST contract of the ePIC v28 agents, replayed against the live monitor over HTTP.

Every REST call of ``epic-v28-wire.md`` is made here with the exact payload
those agents send (naive ``datetime.now().isoformat()`` timestamps, a null
``substate``, an anonymous log post per record), in the order of a run, over a
real socket with :mod:`http.client` (which, like those agents, follows no
redirect: any 3xx fails). Each call checks its status and the response fields
the agents read: ``sequence``, ``run_number``, ``agent_id``, ``run_id``,
``file_id``, the stage's id, and the plain list of which they take element
``[0]``.

Also here, over real HTTP: the anonymous-log address check (a client bound to
127.0.0.2), the per-address rate limit with its 429 and counter, and
``favicon.ico``.
"""

from __future__ import annotations

import http.client
import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from django.test import override_settings

pytestmark = pytest.mark.django_db(transaction=True)

USER = "physicist"
WORKFLOW = "stf_datataking"


def naive(offset_s: float = 0.0) -> str:
    """A timestamp as v28 agents write it: local time, no UTC offset."""
    return (datetime.now() + timedelta(seconds=offset_s)).isoformat()


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Http:
    """One agent's HTTP client: plain http.client, no redirects followed, optionally from a given
    source address.
    """

    base: str
    token: str = ""
    source: str = ""

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        expect: int | tuple[int, ...] = (200, 201),
        headers: dict[str, str] | None = None,
    ) -> Answer:
        url = urlsplit(self.base)
        connection = http.client.HTTPConnection(
            url.hostname or "localhost",
            url.port,
            timeout=60,
            source_address=(self.source, 0) if self.source else None,
        )
        sent = {"Accept": "application/json", **(headers or {})}
        if self.token:
            sent["Authorization"] = f"Token {self.token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            connection.request(method, path, body=data, headers=sent)
            response = connection.getresponse()
            raw = response.read()
            answer_headers = {k.lower(): v for k, v in response.getheaders()}
        finally:
            connection.close()
        assert not 300 <= response.status < 400, (
            f"{method} {path}: a redirect ({response.status}) is an error to v28"
        )
        wanted = (expect,) if isinstance(expect, int) else expect
        assert response.status in wanted, (
            f"{method} {path} {body!r}: {response.status} {raw[:500]!r}"
        )
        parsed: Any = raw
        if answer_headers.get("content-type", "").startswith("application/json"):
            parsed = json.loads(raw)
        return Answer(response.status, parsed, answer_headers)


@pytest.fixture(autouse=True)
def _fresh_rate_windows() -> None:
    """Rate-limit windows and the refusal count live in the web process's cache: start each test
    without them.
    """
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def agent_token(db: None) -> str:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    return Token.objects.create(user=User.objects.create_user(USER)).key


def log_record(
    message: str,
    *,
    execution_id: str,
    run_id: str | int | None,
    level: int = 20,
    instance: str = "fast_processing-agent-physicist-3",
) -> dict[str, Any]:
    """One record of the v28 REST logging handler."""
    return {
        "app_name": "fast_processing",
        "instance_name": instance,
        "timestamp": naive(),
        "level": level,
        "levelname": {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR"}[level],
        "message": message,
        "module": "fast_processing_agent",
        "funcname": "on_message",
        "lineno": 212,
        "process": 4242,
        "thread": 139911234,
        "extra_data": {
            "execution_id": execution_id,
            "workflow_name": WORKFLOW,
            "run_id": run_id,
            "username": USER,
        },
    }


def test_every_v28_rest_call_in_the_order_of_a_run(live_server: Any, agent_token: str) -> None:
    from swf_testbed.monitor.api import models as m

    api = Http(f"{live_server.url}", token=agent_token)
    logs = Http(f"{live_server.url}")  # SWF_MONITOR_HTTP_URL: no token

    # --- every agent: an id, a heartbeat, its subscriber
    ids = [api.call("POST", "/api/state/next-agent-id/", expect=200).body for _ in range(2)]
    assert (
        all(isinstance(a["agent_id"], int) for a in ids)
        and ids[1]["agent_id"] == ids[0]["agent_id"] + 1
    )
    agent_name = f"processing-agent-{USER}-{ids[0]['agent_id']}"
    heartbeat = {
        "instance_name": agent_name,
        "agent_type": "PROCESSING",
        "status": "OK",
        "description": "Processing agent",
        "mq_connected": True,
        "pid": 4242,
        "hostname": "epic-node",
        "operational_state": "READY",
        "namespace": "epic-ns",
        "workflow_enabled": True,
        "current_stf_count": 0,
        "total_stf_processed": 0,
    }
    api.call("POST", "/api/systemagents/heartbeat/", heartbeat, expect=201)
    api.call(
        "POST",
        "/api/systemagents/heartbeat/",
        {**heartbeat, "operational_state": "PROCESSING"},
        expect=200,
    )
    subscriber = {
        "subscriber_name": f"{agent_name}-processing_agent",
        "description": "processing agent queue",
        "is_active": True,
        "fraction": 1.0,
    }
    api.call("POST", "/api/subscribers/", subscriber, expect=201)
    again = api.call("POST", "/api/subscribers/", subscriber, expect=400)
    assert "already exists" in json.dumps(again.body)

    # --- workflow runner
    sequence = api.call(
        "POST", "/api/state/next-workflow-execution-id/", {"workflow_name": WORKFLOW}, expect=200
    ).body["sequence"]
    assert isinstance(sequence, int)
    execution_id = f"{WORKFLOW}-{USER}-{sequence:04d}"
    query = "/api/workflow-definitions/?" + urlencode({"workflow_name": WORKFLOW, "version": "1.0"})
    assert api.call("GET", query, expect=200).body == []  # a plain list, empty before the first run
    api.call(
        "POST",
        "/api/workflow-definitions/",
        {
            "workflow_name": WORKFLOW,
            "version": "1.0",
            "workflow_type": "simulation",
            "definition": "def stf_datataking(env, config):\n    yield env.timeout(1)\n",
            "parameter_values": {"stf_count": 2, "stf_interval": 1.0},
            "created_by": USER,
            "created_at": naive(),
        },
        expect=201,
    )
    listed = api.call("GET", query, expect=200).body
    assert isinstance(listed, list) and len(listed) == 1
    definition_id = listed[0]["id"]
    api.call("POST", "/api/namespaces/ensure/", {"name": "epic-ns", "owner": USER}, expect=200)
    execution = api.call(
        "POST",
        "/api/workflow-executions/",
        {
            "execution_id": execution_id,
            "workflow_definition": definition_id,
            "namespace": "epic-ns",
            "status": "running",
            "executed_by": USER,
            "start_time": naive(),
            "parameter_values": {"stf_sampling_rate": 1.0, "slices_per_sample": 15},
        },
        expect=201,
    ).body
    assert execution["execution_id"] == execution_id
    numbered = api.call("POST", "/api/state/next-run-number/", expect=200).body
    assert numbered["status"] == "success" and numbered["run_number"] >= 100010
    run_number = numbered["run_number"]
    api.call(
        "POST",
        "/api/run-states/",
        {
            "run_number": run_number,
            "phase": "initializing",
            "state": "imminent",
            "substate": "preparing",
            "target_worker_count": 4,
            "active_worker_count": 0,
            "stf_samples_received": 0,
            "slices_created": 0,
            "slices_queued": 0,
            "slices_processing": 0,
            "slices_completed": 0,
            "slices_failed": 0,
            "state_changed_at": naive(),
            "metadata": {
                "execution_id": execution_id,
                "stf_sampling_rate": 1.0,
                "slices_per_sample": 15,
            },
        },
        expect=201,
    )

    # --- data agent
    run = api.call(
        "POST",
        "/api/runs/",
        {
            "run_number": run_number,
            "start_time": naive(),
            "run_conditions": {"beam": "on", "simulation_tick": 0.0},
        },
        expect=201,
    ).body
    run_id = run["run_id"]
    assert isinstance(run_id, int) and run["run_number"] == run_number
    stf_filename = f"swf.{run_number}.000001.stf"
    stf = api.call(
        "POST",
        "/api/stf-files/",
        {
            "run": run_id,
            "stf_filename": stf_filename,
            "file_size_bytes": 1_048_576,
            "machine_state": "physics",
            "status": "registered",
            "metadata": {
                "created_by": agent_name,
                "substate": "physics",
                "start": naive(),
                "end": naive(1),
                "sequence": 1,
            },
        },
        expect=201,
    ).body
    file_id = stf["file_id"]
    assert str(uuid.UUID(file_id)) == file_id
    processed = api.call(
        "PATCH",
        f"/api/stf-files/{file_id}/",
        {"status": "processed", "metadata": {"processed_by": agent_name, "updated_at": naive()}},
        expect=200,
    ).body
    assert processed["status"] == "processed" and processed["metadata"] == {
        "processed_by": agent_name,
        "updated_at": processed["metadata"]["updated_at"],
    }

    # --- processing agent
    stage = api.call(
        "POST",
        "/api/workflow-stages/",
        {
            "agent_name": agent_name,
            "agent_type": "processing",
            "status": "processing",
            "run_number": run_number,
            "stf_filename": stf_filename,
            "started_at": naive(),
            "metadata": {"input": "stf_ready"},
            "input_message": {"msg_type": "stf_ready", "filename": stf_filename},
        },
        expect=201,
    ).body
    assert stage["stage_id"] == stage["id"] and stage["execution_id"] == execution_id
    assert (
        stage["metadata"]["input_message"]["filename"] == stf_filename
    )  # an unknown field is kept
    done = api.call(
        "PATCH",
        f"/api/workflow-stages/{stage['id']}/",
        {"status": "completed", "completed_at": naive(2), "metadata": {"output": "processed"}},
        expect=200,
    ).body
    assert (
        done["status"] == "completed"
        and done["completed_at"]
        and done["metadata"] == {"output": "processed"}
    )

    # --- fast-processing agent
    read = api.call("GET", f"/api/workflow-executions/{execution_id}/", expect=200).body
    assert read["parameter_values"]["slices_per_sample"] == 15
    api.call(
        "PATCH",
        f"/api/run-states/{run_number}/",
        {"phase": "processing", "state": "run", "substate": "physics"},
        expect=200,
    )
    counters = api.call("GET", f"/api/run-states/{run_number}/", expect=200).body
    api.call(
        "PATCH",
        f"/api/run-states/{run_number}/",
        {
            "stf_samples_received": counters["stf_samples_received"] + 1,
            "slices_created": counters["slices_created"] + 15,
            "slices_queued": counters["slices_queued"] + 15,
            "state_changed_at": naive(),
        },
        expect=200,
    )
    tf_filename = f"{stf_filename}.tf.0001"
    for slice_id in (1, 2):
        api.call(
            "POST",
            "/api/tf-slices/",
            {
                "slice_id": slice_id,
                "tf_first": (slice_id - 1) * 67,
                "tf_last": slice_id * 67 - 1,
                "tf_count": 67,
                "tf_filename": tf_filename,
                "stf_filename": stf_filename,
                "run_number": run_number,
                "status": "queued",
                "retries": 0,
                "metadata": {"execution_id": execution_id, "created_by": "fast_processing-agent"},
            },
            expect=201,
        )
    event = api.call(
        "POST",
        "/api/system-state-events/",
        {
            "timestamp": naive(),
            "run_number": run_number,
            "event_type": "slices_created",
            "state": "unknown",
            "substate": None,
            "event_data": {"stf_filename": stf_filename, "slices": 15},
        },
        expect=201,
    ).body
    assert event["substate"] == "" and event["state"] == "unknown"

    # --- fastmon agent
    api.call(
        "POST",
        "/api/fastmon-files/",
        {
            "stf_file": file_id,
            "tf_filename": tf_filename,
            "file_size_bytes": 65_536,
            "status": "registered",
            "metadata": {"created_by": "fastmon-agent"},
        },
        expect=201,
    )

    # --- logs: anonymous, one post per record, linked from extra_data (run_id as the agents send
    # it: a string)
    logs.call(
        "POST",
        "/api/logs/",
        log_record("slices created", execution_id=execution_id, run_id=str(run_number)),
        expect=201,
    )
    logs.call(
        "POST",
        "/api/logs/",
        log_record("worker idle", execution_id=execution_id, run_id=None, level=30),
        expect=201,
    )

    # --- end of run and of execution
    ended = api.call("PATCH", f"/api/runs/{run_id}/", {"end_time": naive(3)}, expect=200).body
    assert ended["end_time"]
    finished = api.call(
        "PATCH",
        f"/api/workflow-executions/{execution_id}/",
        {"status": "completed", "end_time": naive(4)},
        expect=200,
    ).body
    assert finished["status"] == "completed"
    api.call(
        "POST",
        "/api/systemagents/heartbeat/",
        {**heartbeat, "status": "EXITED", "operational_state": "EXITED"},
        expect=200,
    )

    # what was recorded
    assert m.AppLog.objects.filter(execution_id=execution_id).count() == 2
    assert m.AppLog.objects.filter(run_id=run_number).count() == 1
    assert m.WorkflowStage.objects.get().agent.instance_name == agent_name
    page = (
        Http(live_server.url).call("GET", f"/executions/{execution_id}/", expect=200).body.decode()
    )
    assert agent_name in page and "completed" in page  # the stage
    assert "slices created" in page and "worker idle" in page  # its logs
    by_run = (
        Http(live_server.url).call("GET", f"/logs/?run_id={run_number}", expect=200).body.decode()
    )
    assert "slices created" in by_run and "worker idle" not in by_run


def test_the_stage_fields_are_all_optional(live_server: Any, agent_token: str) -> None:
    """A stage with only a status is stored; the execution and
    agent stay empty (nothing made up).
    """
    api = Http(live_server.url, token=agent_token)
    bare = api.call("POST", "/api/workflow-stages/", {"status": "received"}, expect=201).body
    assert bare["execution_id"] is None and bare["agent"] is None and bare["agent_name"] == ""
    assert (
        api.call("GET", "/api/workflow-stages/?status=received", expect=200).body[0]["id"]
        == bare["id"]
    )
    refused = api.call(
        "POST", "/api/workflow-stages/", {"execution_id": "no-such-execution"}, expect=400
    ).body
    assert "execution_id" in refused


def test_favicon_is_served_without_a_redirect(live_server: Any) -> None:
    answer = Http(live_server.url).call("GET", "/favicon.ico", expect=200)
    assert answer.headers["content-type"] in ("image/x-icon", "image/vnd.microsoft.icon")
    assert answer.body[:4] == b"\x00\x00\x01\x00"  # an ICO header
    page = Http(live_server.url).call("GET", "/", expect=200).body.decode()
    assert 'rel="icon" href="/favicon.ico"' in page


# --------------------------------------------------------------------- anonymous logs, real sockets


def _log(n: int) -> dict[str, Any]:
    return log_record(f"record {n}", execution_id="exec-rate", run_id=100010)


def test_anonymous_logs_from_an_unlisted_address_are_refused(live_server: Any) -> None:
    """With the list 127.0.0.1/32, a client bound to 127.0.0.2 is refused and one on 127.0.0.1
    accepted.
    """
    from swf_testbed.monitor.api import models as m

    listed, unlisted = (
        Http(live_server.url, source="127.0.0.1"),
        Http(live_server.url, source="127.0.0.2"),
    )
    # default (loopback): both are local
    unlisted.call("POST", "/api/logs/", _log(1), expect=201)
    with override_settings(SWF_API_ANONYMOUS_LOGS_FROM=["127.0.0.1/32"]):
        unlisted.call("POST", "/api/logs/", _log(2), expect=401)
        # a proxy header from a client that is no trusted proxy changes nothing
        unlisted.call(
            "POST", "/api/logs/", _log(3), expect=401, headers={"X-Forwarded-For": "127.0.0.1"}
        )
        listed.call("POST", "/api/logs/", _log(4), expect=201)
        # any other anonymous write stays a 401, from the listed address too
        listed.call("POST", "/api/runs/", {"run_number": 1, "start_time": naive()}, expect=401)
    assert sorted(m.AppLog.objects.values_list("message", flat=True)) == ["record 1", "record 4"]


def test_anonymous_log_flood_is_bounded_per_address(live_server: Any, agent_token: str) -> None:
    """Past the rate a 429 with Retry-After, counted on the Logs page; other addresses and token
    holders pass.
    """
    from swf_testbed.monitor.api import models as m

    flooder, other = (
        Http(live_server.url, source="127.0.0.2"),
        Http(live_server.url, source="127.0.0.3"),
    )
    with_token = Http(live_server.url, token=agent_token, source="127.0.0.2")
    with override_settings(SWF_API_ANONYMOUS_LOGS_RATE="5/h"):  # a window far longer than the test
        for n in range(5):
            flooder.call("POST", "/api/logs/", _log(n), expect=201)
        for n in range(5, 25):
            refused = flooder.call("POST", "/api/logs/", _log(n), expect=429)
            assert 1 <= int(refused.headers["retry-after"]) <= 3600
        other.call("POST", "/api/logs/", _log(100), expect=201)
        with_token.call("POST", "/api/logs/", _log(101), expect=201)
        flooder.call("GET", "/api/logs/?limit=1", expect=200)  # reads are never limited
        page = other.call("GET", "/logs/", expect=200).body.decode()
    assert m.AppLog.objects.count() == 7
    assert "since the web process started: <strong>20</strong>" in page
    assert "5/h per client address" in page


# -------------------------------------------------------------------- no redirects on the v28 paths


V28_PATHS = [
    "/api/state/next-workflow-execution-id/",
    "/api/workflow-definitions/",
    "/api/namespaces/ensure/",
    "/api/workflow-executions/",
    "/api/state/next-run-number/",
    "/api/run-states/",
    "/api/runs/",
    "/api/stf-files/",
    "/api/tf-slices/",
    "/api/system-state-events/",
    "/api/fastmon-files/",
    "/api/workflow-stages/",
    "/api/systemagents/heartbeat/",
    "/api/subscribers/",
    "/api/logs/",
    "/api/state/next-agent-id/",
]


@pytest.mark.parametrize("path", V28_PATHS)
def test_v28_paths_answer_without_a_redirect(live_server: Any, path: str) -> None:
    """Anonymous and empty: refused or invalid, but never a 3xx (the agents follow none)."""
    answer = Http(live_server.url).call("POST", path, {}, expect=(400, 401))
    assert answer.status in ((400,) if path == "/api/logs/" else (401,)), (path, answer.status)

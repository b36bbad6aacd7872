"""The existing ePIC agents (their v28 dialect), unchanged, against the real swf-testbed stack.

A 10-STF fast-processing run of the legacy-agent fixture (``tests/compat/legacy_agents``: stomp.py
and plain HTTP, nothing of ours) against a real broker and the real monitor (web and ingest as their
own processes), once on the embedded broker + SQLite and once on ActiveMQ Classic + PostgreSQL. One
run per stack; each test checks one requirement of issue 10 on it.

"""

from __future__ import annotations

import html
import json
import re
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from swf_testbed.testing.databases import create_postgres_database

from .stack import MonitorStack

pytestmark = pytest.mark.slow

STFS = 10
SLICES = 15
PAUSE_AFTER = 5
QUEUE_TYPES = {"stf_ready": "/queue/processing_agent", "slice": "/queue/panda.transformer.slices"}


@dataclass
class LegacyRun:
    stack: MonitorStack
    report: dict[str, Any] = field(repr=False)
    stdout: str = field(repr=False)

    @property
    def execution_id(self) -> str:
        return str(self.report["execution_id"])

    @property
    def run_number(self) -> int:
        return int(self.report["run_number"])

    @property
    def namespace(self) -> str:
        return str(self.report["namespace"])

    def calls(
        self, endpoint: str | None = None, *, anonymous: bool | None = None
    ) -> list[dict[str, Any]]:
        return [
            c
            for c in self.report["calls"]
            if (endpoint is None or c["endpoint"] == endpoint)
            and (anonymous is None or c["anonymous"] is anonymous)
        ]

    def sent(self, *msg_types: str) -> list[dict[str, Any]]:
        return [m for m in self.report["messages"] if not msg_types or m["msg_type"] in msg_types]

    def recorded(self) -> list[dict[str, Any]]:
        """Every message the monitor holds but the ingest probes (the
        database is this run's alone).
        """
        rows: list[dict[str, Any]] = []
        offset = 0
        while True:
            page = self.stack.api(
                "/api/workflow-messages/", limit=1000, offset=offset, ordering="id"
            )
            rows += [r for r in page["results"] if r["sender"] != "probe"]
            offset += 1000
            if offset >= page["count"]:
                return rows

    def wait_recorded(
        self, predicate: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 90.0
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        rows = self.recorded()
        while not predicate(rows):
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout:g} s waiting for {what}; recorded: "
                    f"{Counter((r['msg_type'], r['destination']) for r in rows)}"
                )
            time.sleep(0.5)
            rows = self.recorded()
        return rows


@pytest.fixture(
    scope="module",
    params=["embedded+sqlite", pytest.param("activemq+postgresql", marks=pytest.mark.activemq)],
)
def legacy_run(request: pytest.FixtureRequest) -> Iterator[LegacyRun]:
    """One paced 10-STF run (sampling 1.0, 15 slices per sample, a pause after STF 5) on a fresh
    stack.
    """
    home = Path(tempfile.mkdtemp(prefix="swf-legacy-"))
    drop: Callable[[], None] | None = None
    if request.param == "activemq+postgresql":
        broker = request.getfixturevalue("activemq_broker")
        database_url, drop = create_postgres_database(request.getfixturevalue("postgres_url"))
    else:
        broker = request.getfixturevalue("embedded_broker")
        database_url = f"sqlite:///{home / 'monitor.sqlite3'}"
    # The agents post their logs from 127.0.0.1; 127.0.0.2 stands for an address outside the list.
    stack = MonitorStack(
        broker, database_url, home, monitor_env={"SWF_API_ANONYMOUS_LOGS_FROM": "127.0.0.1/32"}
    )
    try:
        stack.start()
        namespace = f"legacy{uuid.uuid4().hex[:6]}"
        result = stack.run_legacy(
            "--stfs",
            str(STFS),
            "--sampling",
            "1.0",
            "--slices",
            str(SLICES),
            "--paced",
            "--stf-interval",
            "0.3",
            "--pause-after",
            str(PAUSE_AFTER),
            "--heartbeat-interval",
            "5",
            "--namespace",
            namespace,
            report=home / "report.json",
        )
        assert result.returncode == 0, (
            f"the legacy agents failed:\n{result.stdout}\n{result.stderr[-4000:]}"
        )
        report = json.loads((home / "report.json").read_text())
        yield LegacyRun(stack, report, result.stdout)
    finally:
        stack.stop()
        if drop is not None:
            drop()


# ---------------------------------------------------------- the fixture itself and what works today


def test_the_legacy_run_completes_and_every_call_is_answered(legacy_run: LegacyRun) -> None:
    """The fixture ran the whole chain: every agent handled end_run, every REST call got an HTTP
    answer,
    none a server error, and every one is 2xx."""
    report = legacy_run.report
    assert report["completed"], report["errors"]
    assert report["sampled"] == STFS and report["slices"] == STFS * SLICES
    unanswered = [c for c in legacy_run.calls() if c["status"] is None or c["status"] >= 500]
    assert unanswered == []
    failed = [
        (c["endpoint"], c["status"], c["error"][:200])
        for c in legacy_run.calls()
        if not 200 <= c["status"] < 300
    ]
    assert failed == []
    by_endpoint = Counter(c["endpoint"] for c in legacy_run.calls(anonymous=False))
    assert by_endpoint["POST /stf-files/"] == by_endpoint["PATCH /stf-files/{id}/"] == STFS
    assert by_endpoint["POST /fastmon-files/"] == STFS
    assert by_endpoint["POST /tf-slices/"] == STFS * SLICES
    assert by_endpoint["POST /runs/"] == by_endpoint["PATCH /runs/{id}/"] == 1


def test_what_the_rest_calls_made_is_in_the_monitor(legacy_run: LegacyRun) -> None:
    """Runs, STF files, samples, slices, run state, execution, agents: as the REST calls said."""
    api, n = legacy_run.stack.api, legacy_run.run_number
    run = api("/api/runs/", run_number=n)
    assert len(run) == 1
    stfs = api("/api/stf-files/", run=run[0]["run_id"])
    assert len(stfs) == STFS and {s["status"] for s in stfs} == {"processed"}
    assert len(api("/api/tf-slices/", run_number=n)) == STFS * SLICES
    state = api(f"/api/run-states/{n}/")
    assert (state["stf_samples_received"], state["slices_created"], state["phase"]) == (
        STFS,
        STFS * SLICES,
        "ended",
    )
    execution = api(f"/api/workflow-executions/{legacy_run.execution_id}/")
    assert (execution["status"], execution["namespace"]) == ("completed", legacy_run.namespace)
    agents = {
        a["instance_name"]: a for a in api("/api/systemagents/", namespace=legacy_run.namespace)
    }
    assert set(agents) == set(legacy_run.report["agents"].values())
    for app, name in legacy_run.report["agents"].items():  # a run-once runner never sends EXITED
        assert agents[name]["operational_state"] == (
            "READY" if app == "workflow_runner" else "EXITED"
        ), name


def test_every_topic_message_is_recorded_once_with_its_body(legacy_run: LegacyRun) -> None:
    """The run's lifecycle on /topic/epictopic reaches the monitor's messages table, each message
    once, its
    body (simulation_tick, string run_id, naive timestamp) kept as sent."""
    sent = [m for m in legacy_run.sent() if m["destination"].startswith("/topic/")]
    assert Counter(m["msg_type"] for m in sent) == {
        "run_imminent": 1,
        "start_run": 1,
        "stf_gen": STFS,
        "pause_run": 1,
        "resume_run": 1,
        "end_run": 1,
    }
    rows = legacy_run.wait_recorded(
        lambda rows: sum(r["destination"] == "/topic/epictopic" for r in rows) >= len(sent),
        "every topic message",
    )
    topic_rows = [r for r in rows if r["destination"] == "/topic/epictopic"]
    assert sorted(json.dumps(r["body"], sort_keys=True) for r in topic_rows) == sorted(
        json.dumps(m["body"], sort_keys=True) for m in sent
    )


# ---------------------------------------------------------------- needs the other parts of issue 10


def test_every_message_is_recorded_valid(legacy_run: LegacyRun) -> None:
    """Every message recorded (the topic's for sure; the queues' once mirrored, checked again below)
    is valid.
    """
    expected = sum(m["destination"].startswith("/topic/") for m in legacy_run.sent())
    rows = legacy_run.wait_recorded(
        lambda rows: sum(r["destination"].startswith("/topic/") for r in rows) >= expected,
        "the topic messages",
    )
    invalid = [
        (r["msg_type"], r["destination"], r.get("validation_error", "")[:200])
        for r in rows
        if not r["is_valid"]
    ]
    assert invalid == []


def test_queue_traffic_reaches_the_monitor(legacy_run: LegacyRun) -> None:
    """stf_ready on /queue/processing_agent (nobody consumes it) and the slices on
    /queue/panda.transformer.slices: each recorded once, whoever sent it."""
    want = Counter(m["msg_type"] for m in legacy_run.sent(*QUEUE_TYPES))
    assert want == {"stf_ready": STFS, "slice": STFS * SLICES}

    def queue_rows(rows: list[dict[str, Any]]) -> Counter[str]:
        return Counter(r["msg_type"] for r in rows if r["msg_type"] in QUEUE_TYPES)

    rows = legacy_run.wait_recorded(
        lambda rows: queue_rows(rows) >= want, "the queue messages", timeout=60
    )
    assert queue_rows(rows) == want
    assert [r["msg_type"] for r in rows if r["msg_type"] in QUEUE_TYPES and not r["is_valid"]] == []
    slice_ids = Counter(r["body"]["content"]["req_id"] for r in rows if r["msg_type"] == "slice")
    assert len(slice_ids) == STFS * SLICES and max(slice_ids.values()) == 1


def test_the_run_is_linked_to_its_execution_and_namespace(legacy_run: LegacyRun) -> None:
    """The run the data agent POSTed (no execution, no namespace) and the one run_imminent
    announced are one
    row, linked to the execution and namespace of the messages; the execution's STF count is the
    run's."""
    api = legacy_run.stack.api
    runs = api("/api/runs/", run_number=legacy_run.run_number)
    assert len(runs) == 1
    assert (runs[0]["execution"], runs[0]["namespace"]) == (
        legacy_run.execution_id,
        legacy_run.namespace,
    )
    assert [r["run_number"] for r in api("/api/runs/", execution_id=legacy_run.execution_id)] == [
        legacy_run.run_number
    ]
    assert api(f"/api/workflow-executions/{legacy_run.execution_id}/")["stf_count"] == STFS


def test_the_execution_page_shows_the_run_in_full(legacy_run: LegacyRun) -> None:
    """STF count, the run-state timeline (beam, physics, standby), the run with its STFs, its state
    events.
    """
    n = legacy_run.run_number
    page = legacy_run.stack.page(f"/executions/{legacy_run.execution_id}/")
    stf_total = re.search(r"STF files</dt>\s*<dd>(?:<a[^>]*>)?(\d+)", page)
    assert stf_total and int(stf_total.group(1)) == STFS
    assert "no state changes yet" not in page
    assert f">run {n}</text>" in page
    for state in ("beam/not_ready", "run/physics", "run/standby"):
        assert f"<title>{state} from" in page, state
    runs_table = page.split("<h2>Runs</h2>", 1)[1].split("</table>", 1)[0]
    assert f">{n}</a>" in runs_table and f'<td class="num">{STFS}</td>' in runs_table
    events = page.split("<h2>State events</h2>", 1)[1]
    for msg_type in ("run_imminent", "start_run", "pause_run", "resume_run", "end_run"):
        assert f"<td>{msg_type}</td>" in events, msg_type


def test_the_executions_list_shows_the_stf_count(legacy_run: LegacyRun) -> None:
    page = legacy_run.stack.page("/executions/", namespace=legacy_run.namespace)
    rows = [
        row for row in page.split("<tr>") if f">{html.escape(legacy_run.execution_id)}</a>" in row
    ]
    assert len(rows) == 1
    assert re.findall(r'<td class="num">([^<]*)</td>', rows[0])[-1] == str(STFS)


def test_the_run_page_links_its_execution_and_its_messages(legacy_run: LegacyRun) -> None:
    """The run page names its execution and namespace; "messages of this run" finds the run's
    messages.
    """
    n = legacy_run.run_number
    page = legacy_run.stack.page(f"/runs/{n}/")
    assert f'href="/executions/{legacy_run.execution_id}/"' in page
    assert f"<dt>Namespace</dt><dd>{legacy_run.namespace}</dd>" in page
    assert f"/messages/?run_id={n}" in page
    topic = [m for m in legacy_run.sent() if m["destination"].startswith("/topic/")]
    legacy_run.wait_recorded(
        lambda rows: sum(r["destination"].startswith("/topic/") for r in rows) >= len(topic),
        "the topic messages",
    )
    of_run = legacy_run.stack.api(
        "/api/workflow-messages/", run_id=n, destination="/topic/epictopic", limit=1
    )
    assert of_run["count"] == len(topic)
    listed = legacy_run.stack.page("/messages/", run_id=n, msg_type="stf_gen")
    assert f"{STFS} messages" in listed and listed.count("<tr data-msg-id=") == STFS


def test_state_events_with_null_substate_are_kept(legacy_run: LegacyRun) -> None:
    posts = legacy_run.calls("POST /system-state-events/")
    assert len(posts) == STFS + 2  # one per sample, run_imminent, run_ended
    assert [c["status"] for c in posts if c["status"] != 201] == []
    events = legacy_run.stack.api("/api/system-state-events/", run_number=legacy_run.run_number)
    sampled = [e for e in events if e["event_type"] == "stf_sampled"]
    assert len(sampled) == STFS and {e["state"] for e in sampled} == {"unknown"}
    assert {e["substate"] for e in sampled} <= {None, ""}


def test_every_log_record_is_kept_and_linked(legacy_run: LegacyRun) -> None:
    """About 40 anonymous log posts per STF, each 2xx (the agents never fell silent), each kept,
    linked to
    the execution and run of its extra_data, and shown on the execution page."""
    posts = legacy_run.calls("POST /logs/", anonymous=True)
    assert len(posts) >= 30 * STFS
    assert [c["status"] for c in posts if c["status"] != 201] == []
    api = legacy_run.stack.api
    kept = sum(
        api("/api/logs/", instance_name=name, limit=1)["count"]
        for name in legacy_run.report["agents"].values()
    )
    assert kept == len(posts)
    linked = api(
        "/api/logs/", execution_id=legacy_run.execution_id, run_id=legacy_run.run_number, limit=1
    )["count"]
    assert linked >= 30 * STFS
    newest = [
        log["message"]
        for log in api("/api/logs/", execution_id=legacy_run.execution_id, limit=20)["results"]
    ]
    page = html.unescape(legacy_run.stack.page(f"/executions/{legacy_run.execution_id}/"))
    assert any(message in page for message in newest), newest


def _log_body(message: str) -> dict[str, Any]:
    return {
        "app_name": "compat",
        "instance_name": "compat-agent-test-1",
        "timestamp": "2026-01-01T12:00:00",
        "level": 20,
        "levelname": "INFO",
        "message": message,
        "module": "test",
        "funcname": "test",
        "lineno": 1,
        "process": 1,
        "thread": 1,
        "extra_data": {"execution_id": "", "workflow_name": "", "run_id": "", "username": "test"},
    }


def test_anonymous_log_post_from_loopback_is_accepted(legacy_run: LegacyRun) -> None:
    marker = f"from loopback {uuid.uuid4().hex}"
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.1")) as client:
        reply = client.post(
            legacy_run.stack.url + "/api/logs/", json=_log_body(marker), follow_redirects=False
        )
    assert reply.status_code == 201, reply.text
    assert [
        r["message"]
        for r in legacy_run.stack.api("/api/logs/", instance_name="compat-agent-test-1")
    ].count(marker) == 1


def test_anonymous_log_post_from_an_unlisted_address_is_refused(legacy_run: LegacyRun) -> None:
    """The same post from 127.0.0.2 (a real socket bound there; outside the monitor's list) is a
    401, and
    nothing is kept. A token still may."""
    marker = f"from elsewhere {uuid.uuid4().hex}"
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")) as client:
        reply = client.post(
            legacy_run.stack.url + "/api/logs/", json=_log_body(marker), follow_redirects=False
        )
        assert reply.status_code == 401, reply.text
        with_token = client.post(
            legacy_run.stack.url + "/api/logs/",
            json=_log_body(marker + " token"),
            headers={"Authorization": f"Token {legacy_run.stack.token}"},
        )
        assert with_token.status_code == 201, with_token.text
    messages = [
        r["message"]
        for r in legacy_run.stack.api("/api/logs/", instance_name="compat-agent-test-1")
    ]
    assert marker not in messages and marker + " token" in messages

"""Hostile text in every field the UI shows, looked at in a real browser (Playwright + Debian's
Chromium).

The values are stored the ways they reach the monitor: messages through the
ingest's recording (valid ones with hostile free-text fields, and an invalid
one whose type, namespace, sender and nested body keys are hostile) and the REST
API over HTTP as agents call it (heartbeats, logs, namespaces, state events).
Every page that shows them is opened, and htmx's live refresh is awaited: no
script of ours may run (``window.__xss`` / ``window.__x`` stay undefined, no
dialog opens, no element with an event handler or a ``javascript:`` link
appears), and each hostile value is on the page as visible text. The partials
that htmx fetches are checked as raw HTML too.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m

from .browserlib import needs_chromium

pytestmark = [
    pytest.mark.django_db(transaction=True),
    needs_chromium,
]

_VARIANTS = [
    '<script>window.__xss="{t}"</script>',
    '"><img src=x onerror="window.__xss=\'{t}\'">',
    "</textarea></pre></title><svg onload=\"window.__xss='{t}'\">",
    "'><details open ontoggle=\"window.__xss='{t}'\">",
    'javascript:window.__xss="{t}"//<b>{t}</b>',
    '<img src=x onerror=alert("{t}")>',
]
_made: dict[str, str] = {}


def hostile(tag: str, variant: int | None = None) -> str:
    """A hostile value that names its field (so a failure says
    which field ran); variants in turn.
    """
    if tag not in _made:
        index = len(_made) % len(_VARIANTS) if variant is None else variant
        _made[tag] = _VARIANTS[index].format(t=tag)
    return _made[tag]


def short(tag: str) -> str:
    """For columns of at most 20 characters: markup that would show as bold if it were parsed."""
    value = f"<b>{tag}</b>"
    _made[tag] = value
    return value


EXEC = '<script>window.__xss="exec"</script>'  # a "/" in an id: its links must still render
_made["exec"] = EXEC
RUN = 777
NS = "xss-ns"
T0 = "2026-03-01T12:00:00Z"

# Which hostile values each page must show as text (and every value is shown somewhere).
PAGES: dict[str, list[str]] = {
    "dashboard": ["exec", "msg-type", "bad-sender"],
    "agents": ["agent", "agent-type", "host", "hb-type", "hb-host"],
    "agent": ["agent", "agent-type", "host", "agent-desc", "agent-counter"],
    "agent-from-messages": ["hb-type", "hb-host", "hb-instance", "hb-desc", "counter"],
    "namespaces": ["ns-owner"],
    "namespace": ["ns-owner", "ns-desc", "agent", "agent-type", "hb-type", "exec", "wf-name"],
    "definitions": ["wf-name"],
    "definition": ["wf-name", "exec"],
    "executions": ["exec", "wf-name"],
    "execution": ["exec", "wf-name", "wf-error", "msg-type", "ev-type", "st", "sub"],
    "messages": ["exec", "msg-type", "bad-sender"],
    "messages-filtered": ["exec", "msg-type", "bad-sender"],
    "message-invalid": [
        "msg-type",
        "bad-ns",
        "bad-sender",
        "exec",
        "body-key",
        "body-val",
        "body-deep",
    ],
    "message-started": ["exec", "wf-name", "wf-version", "cfg-key", "cfg-val", "cfg-deep"],
    "message-heartbeat": ["hb-type", "hb-host", "hb-instance", "hb-desc", "counter"],
    "runs": ["exec"],
    "run": ["exec", "stf", "ph", "cond-key", "cond-val"],
    "stf-files": ["stf"],
    "samples": ["stf", "tf"],
    "slices": ["tf", "worker", "slice-error"],
    "logs": ["exec", "log-app", "log-instance", "lvl", "log-msg", "log-module", "log-func"],
}


# --------------------------------------------------------------------------- browser


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.dialogs = []

    def on_dialog(dialog: Any) -> None:
        page.dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    yield page
    context.close()


# --------------------------------------------------------------------------- the hostile data


def _store_messages(record: Any) -> None:
    """Messages as the ingest records them: valid ones with
    hostile free text, and an invalid one.
    """
    run = {"namespace": NS, "sender": "daq", "execution_id": EXEC, "run_id": RUN}
    bodies = [
        msgs.WorkflowStarted(
            namespace=NS,
            sender="runner",
            execution_id=EXEC,
            workflow_name=hostile("wf-name"),
            workflow_version=hostile("wf-version"),
            config={
                hostile("cfg-key"): hostile("cfg-val"),
                "nested": {"deep": hostile("cfg-deep")},
            },
        ),
        msgs.RunImminent(
            **run,
            state="beam",
            substate="not_ready",
            run_conditions={hostile("cond-key"): hostile("cond-val")},
        ),
        msgs.StartRun(**run, state="run", substate="physics"),
        msgs.StfGen(
            **run,
            state="run",
            substate="physics",
            filename=hostile("stf"),
            sequence=1,
            size_bytes=1,
            checksum="0000000a",
            tf_count=2,
            start=T0,
            end=T0,
        ),
        msgs.TfFileRegistered(
            **run,
            state="run",
            substate="physics",
            tf_filename=hostile("tf"),
            stf_filename=hostile("stf"),
            tf_first=0,
            tf_last=1,
            tf_count=2,
            size_bytes=1,
        ),
        msgs.Slice(
            **run,
            state="run",
            substate="physics",
            slice_id=1,
            tf_filename=hostile("tf"),
            stf_filename=hostile("stf"),
            tf_first=0,
            tf_last=1,
            tf_count=2,
        ),
        msgs.SliceResult(
            **run,
            state="run",
            substate="physics",
            slice_id=1,
            tf_filename=hostile("tf"),
            worker_id=hostile("worker"),
            status="failed",
            processing_time_s=1.0,
            error=hostile("slice-error"),
        ),
        msgs.Heartbeat(
            namespace=NS,
            sender="xss-agent-2",
            agent_name="xss-agent-2",
            agent_type=hostile("hb-type"),
            instance_id=hostile("hb-instance"),
            pid=1,
            hostname=hostile("hb-host"),
            operational_state="READY",
            interval_s=30,
            description=hostile("hb-desc"),
            counters={hostile("counter"): 3},
        ),
        msgs.WorkflowFailed(
            namespace=NS,
            sender="runner",
            execution_id=EXEC,
            workflow_name=hostile("wf-name"),
            error=hostile("wf-error"),
        ),
    ]
    invalid = {
        "msg_type": hostile("msg-type", 0),
        "msg_id": "xss-invalid-1",
        "namespace": hostile("bad-ns"),
        "sender": hostile("bad-sender"),
        "execution_id": EXEC,
        "run_id": RUN,
        "note": {hostile("body-key"): [hostile("body-val"), {"deep": hostile("body-deep")}]},
    }
    record(*(b.to_bytes() for b in bodies), json.dumps(invalid).encode())


def _store_over_rest(base_url: str, token: str) -> None:
    """What REST agents send (the existing ePIC agents post heartbeats and logs)."""
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Token {token}"}, timeout=30
    ) as api:

        def post(path: str, payload: dict[str, Any]) -> None:
            response = api.post(path, json=payload)
            assert response.status_code in (200, 201), (path, response.text)

        post("/api/namespaces/ensure/", {"name": NS, "owner": hostile("ns-owner")})
        described = api.patch(f"/api/namespaces/{NS}/", json={"description": hostile("ns-desc")})
        assert described.status_code == 200, described.text
        post(
            "/api/systemagents/heartbeat/",
            {
                "instance_name": hostile("agent"),
                "namespace": NS,
                "agent_type": hostile("agent-type"),
                "hostname": hostile("host"),
                "description": hostile("agent-desc"),
                "status": "OK",
                "counters": {hostile("agent-counter"): 1},
            },
        )
        post(
            "/api/logs/",
            {
                "app_name": hostile("log-app"),
                "instance_name": hostile("log-instance"),
                "timestamp": T0,
                "level": 40,
                "levelname": hostile("lvl", 0),
                "message": hostile("log-msg", 2),
                "module": hostile("log-module"),
                "funcname": hostile("log-func"),
                "extra_data": {"execution_id": EXEC, "run_id": RUN},
            },
        )
        post(
            "/api/system-state-events/",
            {
                "timestamp": T0,
                "run_number": RUN,
                "namespace": NS,
                "event_type": hostile("ev-type", 0),
                "state": short("st"),
                "substate": short("sub"),
                "event_data": {"by": "rest"},
            },
        )
        post(f"/api/run-states/{RUN}/", {"phase": short("ph"), "state": "run"})
        # a namespace with a hostile name is refused outright (names are letters, digits and _ . : @
        # -)
        refused = api.post("/api/namespaces/ensure/", json={"name": "<b>ns</b>", "owner": "x"})
        assert refused.status_code == 400


@pytest.fixture
def hostile_monitor(live_server: Any, record: Any) -> str:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=User.objects.create_user("agent-owner")).key
    _store_messages(record)
    _store_over_rest(live_server.url, token)  # after the messages: the run state is the REST one
    return str(live_server.url)


# --------------------------------------------------------------------------- the checks

_NO_SCRIPT = """() => ({
    xss: typeof window.__xss === "undefined" ? null : String(window.__xss),
    x: typeof window.__x === "undefined" ? null : String(window.__x),
    handlers: document.querySelectorAll(
      "main [onerror], main [onload], main [ontoggle], main script").length,
    jslinks: [...document.querySelectorAll("a[href]")].filter(a => a.href.trim().toLowerCase()
        .startsWith("javascript:")).length,
    markup: document.querySelectorAll("main b, main img[src='x'], main details").length,
})"""


def _check_page(page: Any, url: str) -> str:
    """Opens the page, lets htmx refresh it once; returns its visible text. Fails on any sign of
    injection.
    """
    response = page.goto(url)
    assert response is not None and response.status == 200, (url, response and response.status)
    page.evaluate("""() => { window.__swaps = 0;
        document.body.addEventListener("htmx:afterSettle", () => { window.__swaps += 1; }); }""")
    found = page.evaluate(_NO_SCRIPT)
    assert found == {"xss": None, "x": None, "handlers": 0, "jslinks": 0, "markup": 0}, (url, found)
    if page.locator("#live").count():
        page.wait_for_function(
            "window.__swaps >= 1", timeout=20_000
        )  # the live part was re-rendered by htmx
        found = page.evaluate(_NO_SCRIPT)
        assert found == {"xss": None, "x": None, "handlers": 0, "jslinks": 0, "markup": 0}, (
            url,
            "after htmx",
            found,
        )
    assert page.dialogs == [], (url, page.dialogs)
    return str(page.inner_text("body"))


def _check_partial(page: Any, url: str) -> str:
    """The HTML htmx fetches and swaps in: hostile markup only ever escaped."""
    response = page.request.get(url, headers={"HX-Request": "true"})
    assert response.status == 200, (url, response.status)
    html = response.text()
    assert "<html" not in html.lower()  # really the partial
    for tag, value in _made.items():
        if "<" in value:
            assert value not in html, (url, tag)
    return str(html)


def _detail_urls(base: str) -> dict[str, str]:
    agent = m.SystemAgent.objects.get(instance_name=hostile("agent"))
    invalid = m.WorkflowMessage.objects.get(msg_id="xss-invalid-1")
    started = m.WorkflowMessage.objects.get(msg_type="workflow_started")
    heartbeat = m.WorkflowMessage.objects.get(msg_type="heartbeat")
    definition = m.WorkflowDefinition.objects.get()
    execution = m.WorkflowExecution.objects.get()
    assert execution.execution_id == EXEC
    from_messages = m.SystemAgent.objects.get(instance_name="xss-agent-2")
    from django.urls import reverse

    return {
        "dashboard": "/",
        "agents": "/agents/",
        "agent": f"/agents/{agent.pk}/",
        "agent-from-messages": f"/agents/{from_messages.pk}/",
        "namespaces": "/namespaces/",
        "namespace": f"/namespaces/{NS}/",
        "definitions": "/workflows/",
        "definition": f"/workflows/{definition.pk}/",
        "executions": "/executions/",
        "execution": reverse("front:execution", args=[EXEC]),
        "messages": "/messages/",
        "messages-filtered": "/messages/?"
        + httpx.QueryParams({"msg_type": hostile("msg-type", 0)}).__str__(),
        "message-invalid": f"/messages/{invalid.pk}/",
        "message-started": f"/messages/{started.pk}/",
        "message-heartbeat": f"/messages/{heartbeat.pk}/",
        "runs": "/runs/",
        "run": f"/runs/{RUN}/",
        "stf-files": "/stf-files/",
        "samples": "/samples/",
        "slices": "/slices/",
        "logs": "/logs/",
    }


@pytest.mark.slow
def test_hostile_values_render_as_text_on_every_page(hostile_monitor: str, page: Any) -> None:
    shown: dict[str, set[str]] = {}
    for name, path in _detail_urls(hostile_monitor).items():
        text = _check_page(page, hostile_monitor + path)
        _check_partial(page, hostile_monitor + path)
        # as typed, or JSON-escaped where the page shows a JSON document (quotes become \")
        shown[name] = {
            tag for tag, value in _made.items() if value in text or json.dumps(value)[1:-1] in text
        }
    print({k: sorted(v) for k, v in shown.items()})
    for name, tags in PAGES.items():
        assert set(tags) <= shown[name], (name, set(tags) - shown[name])
    everywhere = set().union(*shown.values())
    assert everywhere == set(_made), f"hostile values shown on no page: {set(_made) - everywhere}"

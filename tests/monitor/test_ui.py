"""UI pages through Django's test client: every page renders, filters filter, text is escaped."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from django.template import engines
from django.test import Client, override_settings

from swf_testbed.monitor.api import models as m

pytestmark = pytest.mark.django_db

STF = {
    "sequence": 1,
    "size_bytes": 2_000_000_000,
    "checksum": "0a0b0c0d",
    "tf_count": 1000,
    "start": "2026-01-01T00:00:00Z",
    "end": "2026-01-01T00:00:01Z",
}


@pytest.fixture
def seeded(record: Any, make_message: Any) -> None:
    record(
        make_message(
            "workflow_started",
            execution_id="exec-1",
            workflow_name="stf_datataking",
            config={"a": 1},
        ),
        make_message("run_imminent", state="beam", substate="not_ready"),
        make_message("start_run"),
        make_message("stf_gen", filename="swf.000001.000001.stf", **STF),
        make_message(
            "tf_file_registered",
            tf_filename="s.tf",
            stf_filename="swf.000001.000001.stf",
            tf_first=0,
            tf_last=9,
            tf_count=10,
            size_bytes=5,
        ),
        make_message(
            "slice",
            slice_id=1,
            tf_filename="s.tf",
            stf_filename="swf.000001.000001.stf",
            tf_first=0,
            tf_last=9,
            tf_count=10,
        ),
        make_message(
            "slice_result",
            slice_id=1,
            tf_filename="s.tf",
            worker_id="w1",
            status="completed",
            processing_time_s=1,
        ),
        make_message("heartbeat"),
        make_message("start_run", execution_id="exec-2", run_id=2),
        b"{broken",
    )
    m.AppLog.objects.create(
        app_name="a",
        instance_name="i",
        timestamp="2026-01-01T00:00:00Z",
        level=20,
        levelname="INFO",
        message="hello log",
        extra_data={"execution_id": "exec-1"},
    )


PAGES = [
    "/",
    "/agents/",
    "/namespaces/",
    "/namespaces/ns1/",
    "/workflows/",
    "/executions/",
    "/executions/exec-1/",
    "/messages/",
    "/runs/",
    "/runs/1/",
    "/stf-files/",
    "/samples/",
    "/slices/",
    "/logs/",
]


@pytest.mark.parametrize("path", PAGES)
def test_every_page_renders_and_its_live_part_too(client: Client, seeded: None, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200, page.content[:500]
    assert b'id="live"' in page.content and b"htmx.min.js" in page.content
    part = client.get(path, HTTP_HX_REQUEST="true")
    assert part.status_code == 200
    assert b"<html" not in part.content  # only the live part


def test_detail_pages(client: Client, seeded: None) -> None:
    agent = m.SystemAgent.objects.get()
    assert client.get(f"/agents/{agent.pk}/").status_code == 200
    definition = m.WorkflowDefinition.objects.get()
    assert b"stf_datataking" in client.get(f"/workflows/{definition.pk}/").content
    message = m.WorkflowMessage.objects.filter(msg_type="stf_gen").get()
    assert client.get(f"/messages/{message.pk}/").status_code == 200
    assert client.get("/messages/999999/").status_code == 404
    assert client.get("/executions/nope/").status_code == 404


def test_messages_filtered_by_execution_show_only_that_execution(
    client: Client, seeded: None
) -> None:
    page = client.get("/messages/", {"execution_id": "exec-2"})
    rows = page.content.decode().split('id="message-table"')[1]
    assert rows.count("data-msg-id=") == 1 and "exec-2" in rows and "exec-1" not in rows
    assert "1 message" in page.content.decode()


def test_facets_count_and_link(client: Client, seeded: None) -> None:
    html = client.get("/messages/", {"msg_type": "start_run"}).content.decode()
    assert "2 messages" in html
    assert "execution_id=exec-2" in html  # a facet link keeps the current filter and adds its own
    assert "msg_type=start_run" in html


def test_bad_filter_is_reported_not_500(client: Client, seeded: None) -> None:
    page = client.get("/messages/", {"run_id": "abc"})
    assert page.status_code == 200 and b"Bad filter" in page.content
    assert client.get("/messages/", {"page": "x"}).status_code == 200


def test_message_detail_flattens_the_body(client: Client, record: Any, make_message: Any) -> None:
    record(
        make_message(
            "workflow_started",
            execution_id="e",
            workflow_name="w",
            config={"nested": {"deep": [1, {"k": "v"}]}},
        )
    )
    message = m.WorkflowMessage.objects.get()
    html = client.get(f"/messages/{message.pk}/").content.decode()
    assert "config.nested.deep[1].k" in html and "config.nested.deep[0]" in html


def test_html_in_messages_and_names_is_shown_as_text(client: Client, record: Any) -> None:
    evil = "<script>alert(1)</script>"
    record(
        json.dumps(
            {
                "msg_type": evil,
                "msg_id": "evil-1",
                "namespace": "ns1",
                "sender": evil,
                "execution_id": evil,
                "payload": evil,
            }
        ).encode()
    )
    m.SystemAgent.objects.create(instance_name=evil, agent_type=evil, description=evil)
    message = m.WorkflowMessage.objects.get(msg_id="evil-1")
    for path in ("/messages/", f"/messages/{message.pk}/", "/agents/", "/"):
        html = client.get(path).content.decode()
        assert "<script>alert" not in html, path
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path


def test_pages_need_login_when_reads_are_closed(client: Client, seeded: None) -> None:
    with override_settings(SWF_API_OPEN_READS=False):
        response = client.get("/messages/")
        assert response.status_code == 302 and response["Location"].startswith(
            "/login/?next="
        )  # the monitor's own page


def test_static_files_are_served_without_a_cdn(client: Client) -> None:
    from django.contrib.staticfiles import finders

    assert finders.find("front/vendor/htmx.min.js")
    assert finders.find("front/style.css")


def test_dashboard_message_rate_and_chart_are_counted_in_the_database(
    client: Client, make_message: Any
) -> None:
    """The dashboard's message chart counts per 10 s bar in SQL; the last minute's rate is the last
    6 bars.
    """
    from datetime import timedelta

    from django.utils import timezone

    from swf_testbed.monitor.api.recording import Incoming, record

    now = timezone.now()
    ages_s = [5] * 6 + [35] * 3 + [125] * 4 + [599] + [700] * 2  # 700 s: outside the 10 minutes
    record(
        [
            Incoming(
                body=make_message("heartbeat", agent_name=f"a{i}"),
                received_at=now - timedelta(seconds=age),
            )
            for i, age in enumerate(ages_s)
        ]
    )
    context = client.get("/").context
    assert context["message_rate"] == pytest.approx(9 / 60.0)
    chart = context["message_chart"]
    assert len(chart.bars) == 60
    peak_rate = 6 / 10.0  # the six messages 5 s old share the last 10 s bar
    heights = [bar.h for bar in chart.bars]
    assert chart.peak == pytest.approx(peak_rate)
    assert heights[-1] == max(heights) and heights[-1] > 0
    assert heights[-4] == pytest.approx(heights[-1] / 2)  # 3 messages 35 s old: half the peak
    assert heights[47] == pytest.approx(heights[-1] * 4 / 6)  # 125 s old: bar 47 of 60
    assert heights[0] == pytest.approx(heights[-1] / 6)  # 599 s old: the first bar
    assert sum(1 for h in heights if h > 0) == 4


def test_a_sender_name_leads_to_its_agent_page(client: Client, seeded: None) -> None:
    agent = m.SystemAgent.objects.get()
    response = client.get(
        "/agents/named/", {"name": agent.instance_name, "namespace": agent.namespace_id}
    )
    assert response.status_code == 302 and response["Location"] == f"/agents/{agent.pk}/"
    assert client.get("/agents/named/", {"name": "nobody"}).status_code == 404
    assert client.get("/agents/named/", {"name": "x\x00"}).status_code == 404
    page = client.get("/messages/").content.decode()
    assert f"/agents/named/?name={agent.instance_name}&amp;namespace={agent.namespace_id}" in page


def test_hiding_heartbeats_keeps_the_counts_true(client: Client, seeded: None) -> None:
    everything = m.WorkflowMessage.objects.count()
    beats = m.WorkflowMessage.objects.filter(msg_type="heartbeat").count()
    assert beats >= 1
    page = client.get("/messages/", {"exclude_type": "heartbeat"}).content.decode()
    assert f"{everything - beats} message" in page and ">heartbeat<" not in page
    assert "show heartbeats" in page and "newest received" in page
    assert "received after" in page and "received_after " not in page
    assert '<option value="false">invalid</option>' in page
    assert ">heartbeat<" not in client.get("/").content.decode()
    assert ">heartbeat<" in client.get("/", {"heartbeats": "show"}).content.decode()


@pytest.mark.parametrize(
    "when",
    [
        datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))),
        None,
    ],
)
def test_millis_shows_what_the_date_filter_showed(when: datetime | None) -> None:
    render = (
        engines["django"]
        .from_string(
            '{% load monitor_tags %}{{ t|millis }}#{{ t|date:"Y-m-d H:i:s.u"|slice:":23" }}#'
            '{{ t|millis:"time" }}#{{ t|date:"H:i:s.u"|slice:":12" }}'
        )
        .render
    )
    ours_full, date_full, ours_time, date_time = render({"t": when}).split("#")
    assert (ours_full, ours_time) == (date_full, date_time)


def test_agent_link_quotes_and_escapes_the_name() -> None:
    render = engines["django"].from_string("{% load monitor_tags %}{% agent_link name ns %}").render
    assert render({"name": "", "ns": "x"}) == ""
    assert render({"name": "a b&<i>/c", "ns": ""}) == (
        '<a class="agent-link" href="/agents/named/?name=a%20b%26%3Ci%3E/c">a b&amp;&lt;i&gt;/c</a>'
    )
    assert render({"name": "w1", "ns": "n&1"}) == (
        '<a class="agent-link" href="/agents/named/?name=w1&amp;namespace=n%261">w1</a>'
    )

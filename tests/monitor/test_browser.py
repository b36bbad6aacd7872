"""The UI in headless Chromium (Debian's ``chromium``, driven by Playwright; never ``playwright
install``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from swf_testbed import messages as msgs
from swf_testbed.monitor.api import models as m
from swf_testbed.mq.client import BrokerClient
from swf_testbed.mq.destinations import RUN_TOPIC
from swf_testbed.testing.brokers import BrokerProcess

from .browserlib import needs_chromium
from .ingestlib import IngestProcess, wait_until_ingesting

pytestmark = [
    pytest.mark.django_db(transaction=True),
    needs_chromium,
]


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def _stf(execution_id: str, run_id: int, seq: int) -> bytes:
    return msgs.StfGen(
        namespace="ns1",
        sender="daq",
        execution_id=execution_id,
        run_id=run_id,
        state="run",
        substate="physics",
        filename=f"swf.{run_id:06d}.{seq:06d}.stf",
        sequence=seq,
        size_bytes=1,
        checksum="0000000a",
        tf_count=1,
        start="2026-01-01T00:00:00Z",
        end="2026-01-01T00:00:01Z",
    ).to_bytes()


@pytest.mark.slow
def test_dashboard_loads(live_server: Any, page: Any, record: Any, make_message: Any) -> None:
    record(
        make_message("workflow_started", execution_id="exec-live", workflow_name="stf_datataking"),
        make_message("heartbeat"),
    )
    page.goto(live_server.url + "/")
    assert "Dashboard" in page.title()
    page.get_by_text("Running executions").wait_for()
    assert page.locator("a", has_text="exec-live").count() >= 1
    assert page.evaluate("typeof htmx") == "object"  # the vendored htmx loaded (no CDN)


def test_messages_filtered_by_execution_show_only_it(
    live_server: Any, page: Any, record: Any
) -> None:
    record(*(_stf("exec-A", 1, i) for i in range(5)), *(_stf("exec-B", 2, i) for i in range(3)))
    page.goto(live_server.url + "/messages/?execution_id=exec-B")
    rows = page.locator("#message-table tr[data-msg-id]")
    rows.first.wait_for()
    assert rows.count() == 3
    texts = rows.all_inner_texts()
    assert all("exec-B" in t for t in texts) and not any("exec-A" in t for t in texts)
    assert (
        page.locator("input[name=execution_id]").input_value() == "exec-B"
    )  # the filter stays in the URL/form


def test_message_detail_shows_the_flattened_body(live_server: Any, page: Any, record: Any) -> None:
    record(_stf("exec-A", 1, 7))
    message = m.WorkflowMessage.objects.get()
    page.goto(f"{live_server.url}/messages/{message.pk}/")
    table = page.locator("#flat-body")
    table.wait_for()
    for key, value in (
        ("filename", "swf.000001.000007.stf"),
        ("checksum", "0000000a"),
        ("run_id", "1"),
    ):
        row = table.locator("tr", has=page.locator("td", has_text=key)).first
        assert value in row.inner_text()


@pytest.mark.slow
def test_a_message_published_while_the_page_is_open_appears_without_reload(
    live_server: Any, page: Any, embedded_broker: BrokerProcess
) -> None:
    ingest = IngestProcess(
        embedded_broker, "--client-id", f"browser-{uuid.uuid4().hex[:6]}"
    ).start()
    client = BrokerClient(embedded_broker.settings(), client_name="browser-test").start(wait=30)
    try:
        wait_until_ingesting(client, ingest)
        page.goto(live_server.url + "/messages/?msg_type=stf_gen")
        page.evaluate("window.__still_the_same_page = true")
        assert page.locator("#message-table tr[data-msg-id]").count() == 0
        msg = msgs.StfGen.model_validate(json.loads(_stf("exec-live", 9, 1)))
        client.send(RUN_TOPIC, msg)
        page.locator(f'#message-table tr[data-msg-id="{msg.msg_id}"]').wait_for(timeout=20_000)
        assert page.evaluate("window.__still_the_same_page") is True
    finally:
        client.close()
        ingest.kill()


def test_html_in_a_body_renders_as_text(live_server: Any, page: Any, record: Any) -> None:
    evil = "<script>window.__xss = 1</script><img src=x onerror='window.__xss = 2'>"
    record(
        json.dumps(
            {
                "msg_type": "stf_gen",
                "msg_id": "evil",
                "namespace": "ns1",
                "sender": evil,
                "note": evil,
            }
        ).encode()
    )
    message = m.WorkflowMessage.objects.get()
    for path in ("/messages/", f"/messages/{message.pk}/"):
        page.goto(live_server.url + path)
        page.get_by_text("<script>window.__xss = 1</script>", exact=False).first.wait_for()
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("main script").count() == 0


# ---------------------------------------------------------------- figures and plots of a 10-STF run


@pytest.fixture
def shots(tmp_path: Any) -> Any:
    """Where the screenshots of the plots go, for people to look at (the path is printed; run with
    -s).
    """
    directory = tmp_path / "screenshots"
    directory.mkdir()
    print(f"\nscreenshots in {directory}")
    return directory


def _check_plots(page: Any, shots: Any, prefix: str) -> int:
    """Every plot on the page: as wide as the page, a time axis with labels, bar charts with y
    values.
    """
    figures = page.locator("figure.plot")
    main_width = page.locator("main").bounding_box()["width"]
    for i in range(figures.count()):
        figure = figures.nth(i)
        box = figure.locator("svg").bounding_box()
        assert box["width"] >= 0.9 * main_width - 48, (
            f"plot {i} of {prefix} is {box['width']} px of {main_width}"
        )
        x_labels = figure.locator("text.x-tick").all_text_contents()
        assert len(x_labels) >= 3 and all(label.count(":") >= 1 for label in x_labels), x_labels
        if (
            figure.locator("rect.segment").count() == 0
        ):  # a bar chart: values on the y axis, bin width in the title
            y_labels = figure.locator("text.y-tick").all_text_contents()
            assert y_labels[0] == "0" and len(y_labels) >= 2, y_labels
            assert "bins of" in figure.locator("svg").get_attribute("aria-label")
        figure.screenshot(path=str(shots / f"{prefix}-plot-{i}.png"))
    return figures.count()


@pytest.mark.slow
def test_execution_page_of_a_10_stf_run_shows_true_figures_and_readable_plots(
    live_server: Any, page: Any, record: Any, shots: Any
) -> None:
    from . import runscenario as sc

    record(*sc.bodies())
    page.set_viewport_size({"width": 1400, "height": 1000})
    page.goto(f"{live_server.url}/executions/{sc.EXECUTION}/")
    assert page.locator("#daq-time").inner_text().startswith("10 s")  # start_run → end_run
    assert page.locator("#work-time").inner_text().startswith("15 s")  # until the last slice result
    assert " 0 s" not in page.locator("dl.fields").inner_text()
    assert _check_plots(page, shots, "execution") == 3  # run state, STF rate, slices
    timeline = page.locator("figure.plot", has=page.locator("rect.segment"))
    states = [
        timeline.locator("rect.segment").nth(i).get_attribute("data-state")
        for i in range(timeline.locator("rect.segment").count())
    ]
    assert states == ["beam/not_ready", "run/physics", "run/standby", "run/physics", "ended"]
    standby = timeline.locator('rect[data-state="run/standby"]').bounding_box()
    assert standby["width"] >= 3  # a short standby still shows
    assert "standby" in timeline.locator("figcaption").inner_text()  # the legend, outside the plot
    events = page.locator("h2:has-text('State events') + table tr").all_inner_texts()
    assert sum("end_run" in row for row in events) == 1
    run_row = page.locator("h2:has-text('Runs') + table tr", has_text=str(sc.RUN)).inner_text()
    assert "ended" in run_row and "physics" not in run_row
    page.screenshot(path=str(shots / "execution-page.png"), full_page=True)

    page.goto(f"{live_server.url}/runs/{sc.RUN}/")
    _check_plots(page, shots, "run")
    page.screenshot(path=str(shots / "run-page.png"), full_page=True)

    page.goto(f"{live_server.url}/agents/")
    for agent, counters in (("data", sc.DATA_COUNTERS), ("processing", sc.PROCESSING_COUNTERS)):
        row = (
            page.locator("tr", has=page.locator("a", has_text=agent))
            .first.locator("td.stf-counters")
            .inner_text()
        )
        own = {k.replace("_", " "): v for k, v in counters.items() if "stf" in k}
        assert row == ", ".join(f"{k} {v}" for k, v in own.items()), row
    page.screenshot(path=str(shots / "agents.png"), full_page=True)

    page.locator("a", has_text="data").first.click()
    page.locator("#stf-counters").wait_for()
    assert page.locator("#stf-counters [data-counter='stf registered']").inner_text() == str(
        sc.STF_COUNT
    )
    assert page.locator("#heartbeat-table").count() == 0  # collapsed, below the useful content
    assert "(2 recorded)" in page.locator("#heartbeat-history").inner_text()
    page.locator("#heartbeat-history-toggle").click()
    page.wait_for_url("**heartbeats=show")
    assert page.locator("#heartbeat-table tr").count() == 1 + 2

    page.goto(f"{live_server.url}/slices/")
    assert "1.2 s" in page.locator("main table").inner_text() and "1.23456" not in page.content()


@pytest.mark.slow
def test_heartbeats_hide_with_one_click_and_senders_link_to_their_agent(
    live_server: Any, page: Any, record: Any, make_message: Any, shots: Any
) -> None:
    from . import runscenario as sc

    record(*sc.bodies())
    page.goto(live_server.url + "/")
    latest = page.locator("h2:has-text('Latest messages') + table")
    latest.wait_for()
    assert "heartbeat" not in latest.inner_text()  # hidden by default on the dashboard
    page.locator("#heartbeat-toggle").click()
    page.wait_for_url("**/?heartbeats=show")
    assert "heartbeat" in page.locator("h2:has-text('Latest messages') + table").inner_text()
    _check_plots(page, shots, "dashboard")
    page.screenshot(path=str(shots / "dashboard.png"), full_page=True)

    page.goto(live_server.url + "/messages/")
    rows = page.locator("#message-table tr[data-msg-id]")
    rows.first.wait_for()
    with_heartbeats = rows.count()
    assert "heartbeat" in page.locator("#message-table").inner_text()
    page.locator("#heartbeat-toggle").click()
    page.wait_for_url("**exclude_type=heartbeat**")
    assert "heartbeat" not in page.locator("#message-table").inner_text()
    assert rows.count() == with_heartbeats - 3
    assert (
        page.locator(".pager").first.inner_text().startswith(f"{with_heartbeats - 3} messages")
    )  # counts agree
    assert "received after" in page.locator("#message-filters").inner_text()
    assert "received_after" not in page.locator("#message-filters").inner_text()
    page.screenshot(path=str(shots / "messages.png"), full_page=True)
    page.goto(live_server.url + "/messages/?msg_type=heartbeat")
    page.locator("#message-table a.agent-link", has_text="processing").first.click()
    page.wait_for_url("**/agents/*/")
    assert "Agent processing" in page.locator("h1").inner_text()


def test_a_facet_says_how_many_more_values_it_has_and_shows_them(
    live_server: Any, page: Any, record: Any, make_message: Any
) -> None:
    senders = [f"agent-{i:02d}" for i in range(22)]
    record(
        *(make_message("heartbeat", sender=name, agent_name=name) for name in senders),
        make_message("heartbeat", sender="agent-00", agent_name="agent-00"),
    )
    page.goto(live_server.url + "/messages/")
    facet = page.locator("aside.facets h3:has-text('Sender') + ul")
    facet.locator("li").first.wait_for()
    assert facet.locator("li:not(.more)").count() == 15
    more = facet.locator("li.more a")
    assert more.inner_text() == f"and {len(senders) - 15} more"
    more.click()
    page.wait_for_url("**more=sender**")
    facet = page.locator("aside.facets h3:has-text('Sender') + ul")
    items = facet.locator("li:not(.more)")
    assert items.count() == len(senders)
    assert (
        sum(int(t) for t in items.locator(".count").all_inner_texts()) == len(senders) + 1
    )  # they add up
    assert facet.locator("li.more a").inner_text() == "show fewer"

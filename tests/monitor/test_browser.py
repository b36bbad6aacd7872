"""The UI in headless Chromium (Debian's ``chromium``, driven by Playwright; never ``playwright install``)."""

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

from .browserlib import browser, needs_chromium  # noqa: F401 - browser is a fixture
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
    return msgs.StfGen(namespace="ns1", sender="daq", execution_id=execution_id, run_id=run_id, state="run",
                       substate="physics", filename=f"swf.{run_id:06d}.{seq:06d}.stf", sequence=seq, size_bytes=1,
                       checksum="0000000a", tf_count=1, start="2026-01-01T00:00:00Z",
                       end="2026-01-01T00:00:01Z").to_bytes()


def test_dashboard_loads(live_server: Any, page: Any, record: Any, make_message: Any) -> None:
    record(make_message("workflow_started", execution_id="exec-live", workflow_name="stf_datataking"),
           make_message("heartbeat"))
    page.goto(live_server.url + "/")
    assert "Dashboard" in page.title()
    page.get_by_text("Running executions").wait_for()
    assert page.locator("a", has_text="exec-live").count() >= 1
    assert page.evaluate("typeof htmx") == "object"  # the vendored htmx loaded (no CDN)


def test_messages_filtered_by_execution_show_only_it(live_server: Any, page: Any, record: Any) -> None:
    record(*(_stf("exec-A", 1, i) for i in range(5)), *(_stf("exec-B", 2, i) for i in range(3)))
    page.goto(live_server.url + "/messages/?execution_id=exec-B")
    rows = page.locator("#message-table tr[data-msg-id]")
    rows.first.wait_for()
    assert rows.count() == 3
    texts = rows.all_inner_texts()
    assert all("exec-B" in t for t in texts) and not any("exec-A" in t for t in texts)
    assert page.locator("input[name=execution_id]").input_value() == "exec-B"  # the filter stays in the URL/form


def test_message_detail_shows_the_flattened_body(live_server: Any, page: Any, record: Any) -> None:
    record(_stf("exec-A", 1, 7))
    message = m.WorkflowMessage.objects.get()
    page.goto(f"{live_server.url}/messages/{message.pk}/")
    table = page.locator("#flat-body")
    table.wait_for()
    for key, value in (("filename", "swf.000001.000007.stf"), ("checksum", "0000000a"), ("run_id", "1")):
        row = table.locator("tr", has=page.locator("td", has_text=key)).first
        assert value in row.inner_text()


def test_a_message_published_while_the_page_is_open_appears_without_reload(
    live_server: Any, page: Any, embedded_broker: BrokerProcess
) -> None:
    ingest = IngestProcess(embedded_broker, "--client-id", f"browser-{uuid.uuid4().hex[:6]}").start()
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
    record(json.dumps({"msg_type": "stf_gen", "msg_id": "evil", "namespace": "ns1", "sender": evil,
                       "note": evil}).encode())
    message = m.WorkflowMessage.objects.get()
    for path in ("/messages/", f"/messages/{message.pk}/"):
        page.goto(live_server.url + path)
        page.get_by_text("<script>window.__xss = 1</script>", exact=False).first.wait_for()
        assert page.evaluate("typeof window.__xss") == "undefined"
        assert page.locator("main script").count() == 0

"""A list (API or page) costs the same number of queries for 2 rows as for 20: no query per row.

The namespace of a message, an agent or a log record is shown from its foreign key (which holds the
name) without reading the namespace row of each object; before, a page of 50 messages made 52
queries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from swf_testbed.monitor.api import facets
from swf_testbed.monitor.api import models as m

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _fill(record: Any, make_message: Any, start: int, stop: int) -> None:
    """For each i in start..stop-1, a namespace each: a heartbeat (a message, an agent), a log."""
    for i in range(start, stop):
        ns = f"q{i}"
        record(make_message("heartbeat", namespace=ns, agent_name=f"agent{i}"))
        m.AppLog.objects.create(
            namespace_id=ns,
            app_name="test",
            instance_name=f"agent{i}",
            timestamp=T0 + timedelta(seconds=i),
            level=20,
            levelname="INFO",
            message=f"record {i}",
        )


def _queries(api: Any, path: str) -> tuple[int, int]:
    with CaptureQueriesContext(connection) as ctx:
        reply = api.get(path)
    assert reply.status_code == 200, reply.content[:300]
    body = reply.json()
    rows = body["results"] if isinstance(body, dict) else body
    return len(ctx.captured_queries), len(rows)


@pytest.mark.parametrize(
    "path",
    ["/api/workflow-messages/?limit=50", "/api/systemagents/", "/api/logs/?limit=50"],
)
def test_a_list_does_not_query_per_row(api: Any, record: Any, make_message: Any, path: str) -> None:
    _fill(record, make_message, 0, 2)
    few, rows_few = _queries(api, path)
    _fill(record, make_message, 2, 20)
    many, rows_many = _queries(api, path)
    assert rows_many >= rows_few + 18, (rows_few, rows_many)
    assert many == few, f"{path}: {few} queries for {rows_few} rows, {many} for {rows_many}"


def test_the_namespace_is_shown_by_name(api: Any, record: Any, make_message: Any) -> None:
    _fill(record, make_message, 0, 1)
    message = api.get("/api/workflow-messages/?limit=5&msg_type=heartbeat").json()["results"][0]
    agent = api.get("/api/systemagents/").json()[0]
    log = api.get("/api/logs/?limit=5").json()["results"][0]
    assert message["namespace"] == agent["namespace"] == log["namespace"] == "q0"


def _page_queries(client: Any, path: str) -> tuple[list[str], int]:
    with CaptureQueriesContext(connection) as ctx:
        page = client.get(path)
    assert page.status_code == 200
    return [q["sql"] for q in ctx.captured_queries], page.content.decode().count("<tr data-msg-id=")


@pytest.mark.parametrize("path", ["/messages/", "/messages/?msg_type=heartbeat&more=sender"])
def test_the_messages_page_does_not_query_per_row_or_per_facet_value(
    client: Any, record: Any, make_message: Any, path: str
) -> None:
    _fill(record, make_message, 0, 2)
    few, rows_few = _page_queries(client, path)
    _fill(record, make_message, 2, 20)
    many, rows_many = _page_queries(client, path)
    assert (rows_few, rows_many) == (2, 20)
    assert len(many) == len(few), f"{path}: {len(few)} queries for 2 rows, {len(many)} for 20"
    # the rows, the total, and per facet one query for its top values and its number of values
    assert len(few) == 2 + len(facets.FACETS), few

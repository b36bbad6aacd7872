"""Retention: ``prune_messages`` / ``swf-testbed monitor prune`` delete old messages and logs,
counts stay right.
"""

from __future__ import annotations

import io
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from typer.testing import CliRunner

from swf_testbed.monitor.api import facets
from swf_testbed.monitor.api import models as m

pytestmark = pytest.mark.django_db


def _counts() -> list[tuple[Any, ...]]:
    return sorted(
        m.MessageCount.objects.values_list(
            "namespace", "execution_id", "run_id", "msg_type", "sender", "is_valid", "count"
        )
    )


def _log(name: str, age: timedelta) -> m.AppLog:
    return m.AppLog.objects.create(
        app_name="app",
        instance_name=name,
        timestamp=timezone.now() - age,
        levelname="INFO",
        level=20,
        message=f"log {name}",
    )


@pytest.fixture
def stored(record: Any, make_message: Any) -> dict[str, set[str]]:
    """Old and recent messages over several facets (one old invalid
    body), and old and recent logs.
    """
    old_bodies = [
        make_message("start_run", sender="daq"),
        make_message("start_run", sender="daq", run_id=2),
        make_message("heartbeat", namespace="ns2"),
        make_message("pause_run", sender="daq", reason="test"),
        make_message("heartbeat"),
        b"{not json",
    ]
    recent_bodies = [
        make_message("start_run", sender="daq"),  # shares facet keys with old messages
        make_message("heartbeat", namespace="ns2"),
        make_message("end_run", sender="daq", total_stf_files=3),
    ]
    record(*old_bodies)
    old_ids = set(m.WorkflowMessage.objects.values_list("msg_id", flat=True))
    record(*recent_bodies)
    recent_ids = set(m.WorkflowMessage.objects.values_list("msg_id", flat=True)) - old_ids
    assert len(old_ids) == len(old_bodies) and len(recent_ids) == len(recent_bodies)
    m.WorkflowMessage.objects.filter(msg_id__in=old_ids).update(
        received_at=timezone.now() - timedelta(days=10)
    )
    # A message received just inside the window stays.
    m.WorkflowMessage.objects.filter(msg_id__in=list(recent_ids)[:1]).update(
        received_at=timezone.now() - timedelta(days=6)
    )
    for i in range(3):
        _log(f"old{i}", timedelta(days=30))
    _log("recent", timedelta(hours=1))
    return {"old": old_ids, "recent": recent_ids}


def _prune(*args: str) -> str:
    out = io.StringIO()
    call_command("prune_messages", *args, stdout=out)
    return out.getvalue()


def test_old_rows_go_recent_rows_stay_and_counts_match_a_recount(
    stored: dict[str, set[str]],
) -> None:
    before = m.WorkflowMessage.objects.count()
    output = _prune("--older-than", "7", "--batch-size", "2")  # several batches
    assert "removed 6 messages and 3 logs" in output
    assert set(m.WorkflowMessage.objects.values_list("msg_id", flat=True)) == stored["recent"]
    assert m.WorkflowMessage.objects.count() == before - 6
    assert list(m.AppLog.objects.values_list("instance_name", flat=True)) == ["recent"]
    kept = _counts()
    assert all(row[-1] > 0 for row in kept)
    facets.rebuild_counts()
    assert kept == _counts()
    assert facets.count_from_rollup({}) == len(stored["recent"])
    # Nothing left to remove.
    assert "removed 0 messages and 0 logs" in _prune("--older-than", "7")


def test_dry_run_deletes_nothing(stored: dict[str, set[str]]) -> None:
    messages, logs, counts = m.WorkflowMessage.objects.count(), m.AppLog.objects.count(), _counts()
    output = _prune("--older-than", "7", "--dry-run")
    assert "would remove 6 messages and 3 logs" in output
    assert (m.WorkflowMessage.objects.count(), m.AppLog.objects.count(), _counts()) == (
        messages,
        logs,
        counts,
    )


def test_a_larger_age_keeps_more(stored: dict[str, set[str]]) -> None:
    assert "removed 0 messages and 3 logs" in _prune("--older-than", "20")
    assert m.WorkflowMessage.objects.count() == len(stored["old"]) + len(stored["recent"])


@pytest.mark.parametrize("age", ["0", "-1", "-0.5"])
def test_an_age_of_zero_or_less_is_refused(stored: dict[str, set[str]], age: str) -> None:
    before = m.WorkflowMessage.objects.count()
    with pytest.raises(CommandError, match="more than 0 days"):
        _prune("--older-than", age)
    assert m.WorkflowMessage.objects.count() == before


def test_cli_prune(stored: dict[str, set[str]]) -> None:
    from swf_testbed.cli import app

    runner = CliRunner()
    refused = runner.invoke(app, ["monitor", "prune", "--older-than", "0"])
    assert refused.exit_code == 2
    assert "more than 0 days" in refused.output
    dry = runner.invoke(app, ["monitor", "prune", "--older-than", "7", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert m.WorkflowMessage.objects.filter(msg_id__in=stored["old"]).count() == len(stored["old"])
    done = runner.invoke(app, ["monitor", "prune", "--older-than", "7", "--batch-size", "4"])
    assert done.exit_code == 0, done.output
    assert set(m.WorkflowMessage.objects.values_list("msg_id", flat=True)) == stored["recent"]

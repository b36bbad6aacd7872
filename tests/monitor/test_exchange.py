"""``swf-testbed export`` → ``swf-testbed import`` into a fresh monitor (a database of its own), as
processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from .ingestlib import database_url_of_tests
from .test_stream import run_messages

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]
CLI = [sys.executable, "-c", "from swf_testbed.cli import main; main()"]


def cli(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(
        {
            "DATABASE_URL": database_url,
            "SWF_HOME": tempfile.mkdtemp(prefix="swf-exchange-"),
            "COLUMNS": "300",
        }
    )
    return subprocess.run(
        [*CLI, *args], env=env, capture_output=True, text=True, timeout=180, check=False
    )


def count_in(database_url: str, model: str) -> int:
    code = f"from swf_testbed.monitor.api.models import {model} as M; print(M.objects.count())"
    done = cli(database_url, "monitor", "manage", "shell", "-c", code)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip().splitlines()[-1])


@pytest.fixture
def exported(record: Any, tmp_path: Path) -> Path:
    from swf_testbed.monitor.api import models as m

    m.Namespace.objects.create(name="exch")
    definition = m.WorkflowDefinition.objects.create(
        workflow_name="stf_datataking", version="7", parameter_values={"stf_count": 3}
    )
    m.WorkflowExecution.objects.create(
        execution_id="exec-X",
        workflow_definition=definition,
        namespace_id="exch",
        status="completed",
        parameter_values={"stf_count": 3, "git": "abc"},
    )
    record(*[msg.to_bytes() for msg in run_messages("exch", "exec-X", 7401, 3)])
    record(
        json.dumps({"msg_type": "stf_gen", "execution_id": "exec-X", "namespace": "exch"}).encode()
    )  # invalid
    record(*[msg.to_bytes() for msg in run_messages("exch", "exec-other", 7402, 1)])  # not exported
    path = tmp_path / "exec-X.jsonl"
    done = cli(database_url_of_tests(), "export", "exec-X", "-o", str(path))
    assert done.returncode == 0, done.stderr
    assert "exported 7 messages" in done.stderr
    return path


def test_export_then_import_into_a_fresh_monitor_gives_identical_rows(
    exported: Path, tmp_path: Path
) -> None:
    lines = exported.read_text().splitlines()
    header = json.loads(lines[0])
    assert header["messages"] == 7 and header["execution"]["parameter_values"]["git"] == "abc"
    assert len({json.loads(line)["msg_id"] for line in lines[1:]}) == 7
    bodies = [json.loads(json.loads(line)["body"]) for line in lines[1:]]
    assert [b["msg_type"] for b in bodies] == [
        "run_imminent",
        "start_run",
        "stf_gen",
        "stf_gen",
        "stf_gen",
        "end_run",
        "stf_gen",
    ]

    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    first = cli(fresh, "import", str(exported))
    assert first.returncode == 0, first.stderr
    assert "7 messages stored, 0 already there" in first.stderr
    again = cli(fresh, "import", str(exported))
    assert again.returncode == 0 and "0 messages stored, 7 already there" in again.stderr
    assert "(the execution existed)" in again.stderr

    round_trip = tmp_path / "again.jsonl"
    done = cli(fresh, "export", "exec-X", "-o", str(round_trip))
    assert done.returncode == 0, done.stderr
    assert (
        round_trip.read_text() == exported.read_text()
    )  # the same rows, the same execution, the same order
    assert count_in(fresh, "StfFile") == 3  # and the projections the ingest would have made
    assert count_in(fresh, "WorkflowMessage") == 7


@pytest.mark.parametrize(
    "damage, words",
    [
        (
            lambda lines: lines[:-1] + [lines[-1][: len(lines[-1]) // 2]],
            ":8: the line is cut short",
        ),
        (lambda lines: lines[:3] + ['{"msg_id": "x", "body": '] + lines[4:], ":4: not JSON"),
        (lambda lines: lines[:2] + lines[3:], "announces 7 messages but 6 follow"),
        (
            lambda lines: (
                lines[:5] + [lines[5].replace('"received_at":"', '"received_at":"x')] + lines[6:]
            ),
            ":6: received_at",
        ),
        (
            lambda lines: ['{"format": "something else"}\n'] + lines[1:],
            ":1: not a swf-testbed-export",
        ),
    ],
)
def test_a_damaged_file_is_refused_naming_the_line(
    exported: Path, tmp_path: Path, damage: Any, words: str
) -> None:
    lines = exported.read_text().splitlines(keepends=True)
    damaged = tmp_path / "damaged.jsonl"
    damaged.write_text("".join(damage(lines)))
    fresh = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    done = cli(fresh, "import", str(damaged))
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    missing = cli(fresh, "export", "exec-X")
    assert missing.returncode == 1 and "no execution" in missing.stderr  # nothing was written


def test_export_of_an_unknown_execution_says_so(db: None) -> None:
    done = cli(database_url_of_tests(), "export", "no-such-exec")
    assert done.returncode == 1 and "no execution 'no-such-exec'" in done.stderr

"""`swf-testbed status` fits 80 columns and never breaks a program name."""

from __future__ import annotations

from rich.console import Console

from swf_testbed.cli.orchestrator import _health_table
from swf_testbed.orchestrator.run import ProcessHealth

NAMES = [
    ("broker", "service"),
    ("monitor-web", "service"),
    ("monitor-ingest", "service"),
    ("watch", "service"),
    ("runner", "agent"),
    ("fast_processing", "agent"),
    ("worker_00", "agent"),
    ("worker_01", "agent"),
]


def test_status_table_fits_80_columns_with_whole_names_and_full_details() -> None:
    health = [
        ProcessHealth(
            name.rsplit("_0", 1)[0],
            name,
            kind,
            "RUNNING",
            pid=4194303,
            healthy=True,
            liveness="ok",
            operational_state="PROCESSING" if kind == "agent" else "",
            heartbeat_age=10.25 if kind == "agent" else None,
        )
        for name, kind in NAMES
    ]
    detail = (
        "port 18002 answers, but from pid 4242 (python -m swf_testbed.cli monitor serve --port "
        "18002), not this testbed's monitor-web (pid 77)"
    )
    health[1].detail, health[1].liveness, health[1].healthy = detail, "down", False
    console = Console(width=80, record=True, force_terminal=False)
    console.print(_health_table(health))
    lines = console.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    rows = {
        line.split()[0]: line
        for line in lines[1:]
        if line.split() and line.split()[0] in dict(NAMES)
    }
    assert set(rows) == {name for name, _ in NAMES}  # each name whole, on its own row
    assert "10.2 s ago" in rows["fast_processing"] and "PROCESSING" in rows["fast_processing"]
    assert (
        " ".join(" ".join(lines).split()).count(detail) == 1
    )  # the detail in full, under the table

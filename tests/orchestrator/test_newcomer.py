"""A newcomer following only the docs writes, runs and sees a custom agent.

The steps are the docs' own: ``swf-testbed init`` writes a testbed.toml
(quickstart), the ``[agents.mine]`` table of docs/writing-an-agent.md is added
to it as the doc shows (only its example PYTHONPATH is replaced by where the
example really is), ``swf-testbed run`` runs it on the embedded defaults, and
the agent is then where the doc says to look: the monitor's Agents page and
``/api/systemagents/``, with its per-run counters.
"""

from __future__ import annotations

import re
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from swf_testbed.orchestrator.supervisor import runtime_paths
from swf_testbed.testing.brokers import free_port

from .conftest import REPO, ok

pytestmark = pytest.mark.slow

DOC = REPO / "docs" / "writing-an-agent.md"
STFS = 3


def doc_agent_table() -> str:
    """The ```toml block of the doc's "Add it to a testbed" section."""
    section = DOC.read_text(encoding="utf-8").split("## Add it to a testbed", 1)[1]
    m = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert m, f"{DOC.name}: no ```toml block under 'Add it to a testbed'"
    return m.group(1)


def web_log_tail(home: str, namespace: str, lines: int = 60) -> str:
    """The end of the monitor web's log: a server error's traceback is there."""
    log = runtime_paths(Path(home), namespace).log_of("monitor-web")
    if not log.is_file():
        return f"({log} not found)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def test_the_docs_agent_runs_in_a_testbed_and_shows_in_the_monitor(make_bed: Any) -> None:
    bed = make_bed("newcomer", broker=None)
    namespace = f"newcomer-{uuid.uuid4().hex[:6]}"
    bed.dir.mkdir(parents=True)
    ok(bed.cli("init", str(bed.toml), "--namespace", namespace))
    text = bed.toml.read_text()
    chosen = tomllib.loads(text)  # init moves off default ports already in use on this machine
    broker_port, monitor_port = free_port(), free_port()
    text = text.replace(f"port = {chosen['broker']['port']}", f"port = {broker_port}").replace(
        f"port = {chosen['monitor']['port']}", f"port = {monitor_port}"
    )
    assert tomllib.loads(text)["monitor"]["port"] == monitor_port, text
    text = re.sub(r"(?m)^stf_count = \d+", f"stf_count = {STFS}", text)
    table = doc_agent_table()
    assert "[agents.mine]" in table and 'module = "my_agent:StfCounter"' in table, table
    table = re.sub(r'PYTHONPATH = "[^"]*"', f'PYTHONPATH = "{REPO / "examples"}"', table)
    bed.write(text.replace("\n[broker]", f"\n{table}\n[broker]", 1))

    result = bed.cli("run", str(bed.toml), timeout=300)
    out = ok(result)
    assert f"{STFS} STFs produced" in out, out
    monitor = f"http://127.0.0.1:{monitor_port}"

    deadline = time.monotonic() + 60
    mine: dict[str, Any] = {}
    with httpx.Client(base_url=monitor, timeout=10) as api:
        while time.monotonic() < deadline:
            reply = api.get("/api/systemagents/", params={"namespace": namespace})
            assert reply.status_code == 200, (
                f"/api/systemagents/: {reply.status_code} {reply.text[:300]}\n"
                f"monitor-web.log:\n{web_log_tail(bed.env['SWF_HOME'], namespace)}"
            )
            agents = reply.json()
            rows = agents["results"] if isinstance(agents, dict) else agents
            mine = next(
                (a for a in rows if a.get("instance_name") == "mine" or a.get("name") == "mine"), {}
            )
            counters = mine.get("counters") or {}
            if counters.get("stf_ready") == STFS:
                break
            time.sleep(1.0)
        assert mine, f"agent 'mine' not in /api/systemagents/?namespace={namespace}: {rows}"
        assert mine.get("agent_type") == "stf-counter", mine
        counters = mine.get("counters") or {}
        assert counters.get("stf_ready") == STFS, counters
        assert any(
            k.startswith("run_") and k.endswith("_stfs") and v == STFS for k, v in counters.items()
        ), counters
        page = api.get("/agents/", params={"namespace": namespace})
        assert page.status_code == 200 and ">mine<" in page.text.replace(" ", ""), page.text[:2000]
    ok(bed.cli("stop", "--all", "-c", str(bed.toml)))


def test_doc_table_points_at_the_example_module() -> None:
    """The module the doc names is the example the other docs test runs."""
    assert 'module = "my_agent:StfCounter"' in doc_agent_table()
    assert (Path(REPO) / "examples" / "my_agent.py").is_file()

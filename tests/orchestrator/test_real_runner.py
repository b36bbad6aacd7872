"""`swf-testbed run` with the project's own workflow runner, data and processing agents, monitor."""

from __future__ import annotations

from typing import Any

import pytest

from swf_testbed.testing.brokers import free_port

from .conftest import Bed, ok

pytestmark = pytest.mark.slow


def chain(processing_time: float = 0.05) -> str:
    return (
        '[agents.runner]\nmodule = "swf_testbed.agents.runner:WorkflowRunner"\n'
        "heartbeat_interval = 1\n\n"
        '[agents.data]\nmodule = "swf_testbed.agents.data:DataAgent"\nheartbeat_interval = 1\n\n'
        '[agents.processing]\nmodule = "swf_testbed.agents.processing:ProcessingAgent"\n'
        "heartbeat_interval = 1\n"
        f"options = {{ processing_time = {processing_time} }}\n\n"
    )


def test_real_runner_chain_with_the_embedded_monitor(make_bed: Any) -> None:
    bed: Bed = make_bed()
    port = free_port()
    bed.write(
        '[testbed]\nnamespace = "chain"\nstart_timeout = 90\n\n'
        '[workflow]\nname = "stf_datataking"\nconfig = "stf_datataking_default"\ntime_scale = 0\n\n'
        "[parameters]\nstf_count = 4\n\n" + chain() + '[broker]\nmode = "external"\n\n'
        f'[monitor]\nmode = "embedded"\nport = {port}\n'
    )
    out = ok(bed.cli("run", timeout=180))
    assert "workflow completed: execution stf_datataking-chain-" in out and "4 STFs produced" in out
    execution_id = out.split("workflow completed: execution ")[1].split(",")[0]
    assert f"http://127.0.0.1:{port}/executions/{execution_id}/" in out

    status = bed.wait_status(
        lambda s: s["monitor"] == "monitor" and s["execution_id"] == execution_id,
        what="the monitor to know the execution",
        timeout=30,
    )
    programs = {p["process"]: p for p in status["programs"]}
    assert {"monitor-web", "monitor-ingest", "watch", "runner", "data", "processing"} <= set(
        programs
    )
    assert programs["monitor-web"]["healthy"] and programs["monitor-ingest"]["state"] == "RUNNING"
    assert status["execution"]["source"] == "monitor" and status["execution_status"] == "completed"
    assert status["monitor_url"] == f"http://127.0.0.1:{port}"

    refused = bed.cli("run", "--attach")
    assert refused.returncode == 1 and "no workflow is running" in refused.stderr

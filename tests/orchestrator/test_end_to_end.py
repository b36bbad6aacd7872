"""End to end: `swf-testbed run` with the whole agent chain, and what the monitor then holds.

Once on the embedded defaults (embedded broker, SQLite) and once on the
production stack (ActiveMQ Classic, PostgreSQL): the same testbed.toml, only
the addresses change.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from swf_testbed.testing.brokers import BrokerProcess, free_port

from .conftest import Bed, ok

pytestmark = pytest.mark.slow

STFS = 4
SLICES_PER_SAMPLE = 15


def full_chain_toml(
    namespace: str,
    monitor_port: int,
    database_url: str,
    *,
    workflow: str = "time_scale = 0",
    parameters: str = "",
    broker: str = 'mode = "external"',
    agent_extra: str = "",
) -> str:
    """testbed.toml of the whole chain; ``agent_extra``: lines added to every agent's table."""
    agents = "".join(
        f'[agents.{name}]\nmodule = "swf_testbed.agents.{module}"\nheartbeat_interval = 1\n'
        f"{extra}{agent_extra}\n"
        for name, module, extra in (
            ("runner", "runner:WorkflowRunner", ""),
            ("data", "data:DataAgent", ""),
            ("processing", "processing:ProcessingAgent", ""),
            ("fastmon", "fastmon:FastMonAgent", ""),
            ("fast_processing", "fast_processing:FastProcessingAgent", ""),
            ("worker", "worker:WorkerAgent", "instances = 2\n"),
        )
    )
    return (
        f'[testbed]\nnamespace = "{namespace}"\nstart_timeout = 120\n\n'
        f'[workflow]\nname = "stf_datataking"\nconfig = "fast_processing_default"\n{workflow}\n\n'
        f"[parameters]\nstf_sampling_rate = 1.0\nslices_per_sample = {SLICES_PER_SAMPLE}\n"
        f"{parameters or f'stf_count = {STFS}'}\n\n"
        f"{agents}"
        f"[broker]\n{broker}\n\n"
        f'[monitor]\nmode = "embedded"\nport = {monitor_port}\n\n'
        f'[database]\nurl = "{database_url}"\n'
    )


def count(api: httpx.Client, path: str, **params: Any) -> int:
    response = api.get(path, params={**params, "limit": 1})
    response.raise_for_status()
    return int(response.json()["count"])


def wait_until(predicate: Any, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last is True:
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def stack_services(
    stack: str, request: pytest.FixtureRequest, sqlite_url: str
) -> tuple[BrokerProcess, str]:
    """The broker and database URL of a stack: "embedded+sqlite" (that SQLite URL) or
    "activemq+postgresql"."""
    if stack == "activemq+postgresql":
        return request.getfixturevalue("activemq_broker"), request.getfixturevalue(
            "fresh_postgres_database"
        )
    return request.getfixturevalue("embedded_broker"), sqlite_url


@pytest.mark.parametrize("stack", ["embedded+sqlite", "activemq+postgresql"])
def test_fast_processing_run_is_recorded_completely_and_once(
    stack: str, make_bed: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broker, database_url = stack_services(
        stack, request, f"sqlite:///{tmp_path / 'monitor.sqlite3'}"
    )
    bed: Bed = make_bed(broker=broker)
    port = free_port()
    namespace = f"e2e{port}"
    bed.write(full_chain_toml(namespace, port, database_url))

    out = ok(bed.cli("run", timeout=300))
    assert f"{STFS} STFs produced, {STFS} processed" in out, out
    execution_id = out.split("workflow completed: execution ")[1].split(",")[0]

    expected = {
        "run_imminent": 1,
        "start_run": 1,
        "end_run": 2,  # the DAQ's on the run topic, and fast processing's to its workers
        "stf_gen": STFS,
        "stf_ready": STFS,
        "processing_complete": STFS,
        "tf_file_registered": STFS,  # sampling rate 1.0: one sample per STF
        "slice": STFS * SLICES_PER_SAMPLE,
        "slice_result": STFS * SLICES_PER_SAMPLE,
        "workflow_started": 1,
        "workflow_completed": 1,
    }
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10) as api:

        def messages_recorded() -> bool | dict[str, int]:
            got = {
                t: count(api, "/workflow-messages/", execution_id=execution_id, msg_type=t)
                for t in expected
            }
            return got == expected or got

        wait_until(messages_recorded, "every message of the execution in the monitor")
        # exactly once: no more than expected either, even after a while
        time.sleep(1.0)
        assert messages_recorded() is True
        assert count(api, "/workflow-messages/", execution_id=execution_id, is_valid="false") == 0

        assert count(api, "/stf-files/", execution_id=execution_id) == STFS
        assert count(api, "/fastmon-files/", execution_id=execution_id) == STFS
        runs = api.get("/runs/", params={"execution_id": execution_id}).json()
        assert len(runs) == 1 and runs[0]["end_time"] is not None
        run_number = runs[0]["run_number"]
        assert count(api, "/tf-slices/", run_number=run_number) == STFS * SLICES_PER_SAMPLE
        assert (
            count(api, "/tf-slices/", run_number=run_number, status="completed")
            == STFS * SLICES_PER_SAMPLE
        )

        state = api.get(f"/run-states/{run_number}/").json()
        assert state["phase"] == "ended", state
        assert state["slices_completed"] == STFS * SLICES_PER_SAMPLE and state["slices_failed"] == 0

        execution = api.get(f"/workflow-executions/{execution_id}/").json()
        assert execution["status"] == "completed"
        assert execution["namespace"] == namespace


def _start_chain_run(
    make_bed: Any,
    broker: BrokerProcess | None,
    tmp_path: Path,
    label: str,
    *,
    workflow: str,
    parameters: str,
    database_url: str = "",
    broker_section: str = 'mode = "external"',
    agent_extra: str = "",
    run_args: tuple[str, ...] = (),
) -> tuple[Bed, Any, str, int]:
    """The full chain (SQLite unless ``database_url``), ``swf-testbed run`` in the background.

    ``broker``: an external broker the bed points at; None with ``broker_section`` naming one
    (e.g. the embedded broker run by supervisord). Returns the bed, the run process, the
    execution id (once announced) and the monitor's port.
    """
    bed: Bed = make_bed(broker=broker)
    port = free_port()
    bed.write(
        full_chain_toml(
            f"{label}{port}",
            port,
            database_url or f"sqlite:///{tmp_path / 'm.sqlite3'}",
            workflow=workflow,
            parameters=parameters,
            broker=broker_section,
            agent_extra=agent_extra,
        )
    )
    run = bed.popen("run", *run_args)
    seen = ""
    assert run.stdout is not None
    while "execution " not in seen or ": http" not in seen:
        line = run.stdout.readline()
        assert line, f"run ended early: {seen}"
        seen += line
    execution_id = seen.split("execution ")[1].split(":")[0]
    return bed, run, execution_id, port


def test_ctrl_c_mid_run_terminates_the_execution_and_the_monitor_shows_it(
    make_bed: Any, embedded_broker: BrokerProcess, tmp_path: Path
) -> None:
    # x5 real time, a run that would take minutes: it is stopped long before its end
    _, run, execution_id, port = _start_chain_run(
        make_bed,
        embedded_broker,
        tmp_path,
        "stop",
        workflow="time_scale = 5",
        parameters="stf_count = 500",
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10) as api:
        wait_until(
            lambda: count(api, "/stf-files/", execution_id=execution_id) >= 2 or "waiting",
            "STFs recorded",
        )
        run.send_signal(signal.SIGINT)
        out, _ = run.communicate(timeout=120)
        assert run.returncode == 130, out
        assert f"workflow stopped: execution {execution_id} terminated" in out

        def closed() -> bool | str:
            execution = api.get(f"/workflow-executions/{execution_id}/").json()
            end_runs = count(
                api,
                "/workflow-messages/",
                execution_id=execution_id,
                msg_type="end_run",
                sender="runner",
            )
            return (
                execution["status"] == "terminated" and end_runs == 1
            ) or f"{execution['status']} {end_runs}"

        wait_until(closed, "the terminated execution and its end_run in the monitor")
        end_run = api.get(
            "/workflow-messages/",
            params={"execution_id": execution_id, "msg_type": "end_run", "sender": "runner"},
        ).json()[0]
        stfs = count(api, "/stf-files/", execution_id=execution_id)
        assert (
            end_run["body"]["total_stf_files"] == stfs < 500
        )  # the true count, and the run was cut short


def test_worker_killed_mid_slice_its_slice_is_done_by_another_and_recorded_once(
    make_bed: Any, embedded_broker: BrokerProcess, tmp_path: Path
) -> None:
    # slices take 30 s simulated = 3 s at x10: a worker is surely killed holding one
    bed, run, execution_id, port = _start_chain_run(
        make_bed,
        embedded_broker,
        tmp_path,
        "kill",
        workflow="time_scale = 10",
        parameters="stf_count = 2",
    )
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10) as api:
        wait_until(
            lambda: (
                count(api, "/workflow-messages/", execution_id=execution_id, msg_type="slice") >= 1
                or "no slice yet"
            ),
            "the first slices",
        )
        time.sleep(1.0)  # the workers have taken their first slice each
        victim = bed.status()["programs"]
        worker = next(p for p in victim if p["process"] == "worker_00")
        os.kill(worker["pid"], signal.SIGKILL)
        out, _ = run.communicate(timeout=300)
        assert run.returncode == 0, out
        total = 2 * SLICES_PER_SAMPLE
        assert f"{total} of {total} slices done" in out

        def all_done() -> bool | int:
            results = count(
                api, "/workflow-messages/", execution_id=execution_id, msg_type="slice_result"
            )
            return results == total or results

        wait_until(all_done, "every slice result in the monitor")
        runs = api.get("/runs/", params={"execution_id": execution_id}).json()
        run_number = runs[0]["run_number"]
        assert count(api, "/tf-slices/", run_number=run_number, status="completed") == total
        assert count(api, "/tf-slices/", run_number=run_number) == total  # none twice

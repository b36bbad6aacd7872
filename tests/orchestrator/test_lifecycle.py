"""`swf-testbed up / run / status / stop / restart` against a real supervisord and real agent
processes.

The broker is the session's embedded broker, used as an external one; one
test lets supervisord run the embedded broker itself. The workflow runner is
the small ``TinyRunner`` of ``agents.py`` (and the real one in
``test_real_runner.py``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from swf_testbed.testing.brokers import free_port

from .conftest import Bed, agent_toml, bed_toml, ok

pytestmark = pytest.mark.slow

RUNNER = agent_toml("runner", "TinyRunner")


def _pids(status: dict[str, Any]) -> dict[str, int]:
    return {p["process"]: p["pid"] for p in status["programs"]}


def test_run_from_nothing_then_again_without_restarts(make_bed: Any) -> None:
    bed: Bed = make_bed()
    bed.write(
        bed_toml("alpha", RUNNER + agent_toml("idle") + agent_toml("pool", extra="instances = 2"))
    )
    out = ok(bed.cli("run"))
    assert "starting supervisord for namespace alpha" in out
    assert "workflow completed: execution tiny-alpha-" in out and "3 STFs produced" in out
    first_id = out.split("workflow completed: execution ")[1].split(",")[0]
    assert f"/executions/{first_id}/" in out

    status = bed.status()
    assert status["healthy"] is True and status["supervisord"]["running"] is True
    agents = {p["process"]: p for p in status["programs"] if p["kind"] == "agent"}
    assert set(agents) == {"runner", "idle", "pool_00", "pool_01"}
    assert all(
        a["state"] == "RUNNING" and a["operational_state"] == "READY" and a["liveness"] == "ok"
        for a in agents.values()
    ), agents
    assert status["execution_id"] == first_id and status["execution_status"] == "completed"
    assert status["monitor_url"].startswith("http://127.0.0.1:")
    pids = _pids(status)

    out = ok(bed.cli("run"))
    assert "starting supervisord" not in out and "workflow completed" in out
    second_id = out.split("workflow completed: execution ")[1].split(",")[0]
    assert second_id != first_id
    status = bed.status()
    assert _pids(status) == pids  # nothing restarted
    assert status["execution_id"] == second_id

    text = ok(bed.cli("status"))
    assert "namespace alpha: supervisord running" in text and "pool_01" in text and "READY" in text
    logs = ok(bed.cli("logs", "runner", "--lines", "200"))
    assert "ready in namespace alpha" in logs

    out = ok(bed.cli("stop"))
    assert "stopped:" in out and "runner" in out
    stopped = bed.status()
    assert {p["process"]: p["state"] for p in stopped["programs"] if p["kind"] == "agent"} == {
        "runner": "STOPPED",
        "idle": "STOPPED",
        "pool_00": "STOPPED",
        "pool_01": "STOPPED",
    }
    assert bed.cli("status", "--json").returncode == 1  # not healthy: says so in the exit code

    ok(bed.cli("up"))  # starts the stopped agents again
    assert bed.status()["healthy"] is True
    out = ok(bed.cli("stop", "--all"))
    assert "supervisord stopped" in out
    assert bed.status()["supervisord"]["running"] is False


def test_crashing_agent_fails_fast_with_its_log_then_recovers(make_bed: Any) -> None:
    bed: Bed = make_bed()
    crash = (
        f'[agents.calib]\nscript = "{sys.executable} -c \\"import sys; '
        f"print('cannot open calibration file /nope/calib.db'); sys.exit(3)\\\"\"\n"
    )
    bed.write(bed_toml("crash", RUNNER + crash))
    result = bed.cli("run")
    assert result.returncode == 1, result.stdout + result.stderr
    # fail fast: given up on the agent's crash, not at the end of the 45 s start timeout
    assert "failed to start: calib" in result.stderr, result.stderr
    assert "not healthy after" not in result.stderr
    assert "calib" in result.stderr
    assert "BACKOFF" in result.stderr or "FATAL" in result.stderr
    assert "cannot open calibration file /nope/calib.db" in result.stderr
    assert "run_workflow sent" not in result.stdout

    bed.write(
        bed_toml("crash", RUNNER + agent_toml("calib"))
    )  # fixed: a working agent of that name
    out = ok(bed.cli("run"))
    assert "workflow completed" in out
    assert bed.programs()["calib"]["operational_state"] == "READY"


def test_kill_9_mid_run_is_restarted_and_ready_again(make_bed: Any) -> None:
    bed: Bed = make_bed()
    bed.write(
        bed_toml(
            "kill9",
            RUNNER + agent_toml("victim"),
            parameters="stf_count = 100\nstf_interval = 0.05",
        )
    )
    ok(bed.cli("up"))
    run = bed.popen("run")
    status = bed.wait_status(lambda s: s["running_execution"], what="a running execution")
    old_pid = _pids(status)["victim"]
    os.kill(old_pid, signal.SIGKILL)
    bed.wait_status(
        lambda s: (
            (p := {x["process"]: x for x in s["programs"]}["victim"])["pid"] not in (None, old_pid)
            and p["state"] == "RUNNING"
            and p["operational_state"] == "READY"
            and p["liveness"] == "ok"
        ),
        what="victim restarted and READY",
    )
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 0, out
    assert "workflow completed" in out


def test_ctrl_c_stops_the_workflow_and_leaves_agents_up(make_bed: Any) -> None:
    bed: Bed = make_bed()
    bed.write(bed_toml("sigint", RUNNER, parameters="stf_count = 100000\nstf_interval = 0.05"))
    ok(bed.cli("up"))
    run = bed.popen("run")
    status = bed.wait_status(lambda s: s["running_execution"], what="a running execution")
    running = status["running_execution"]
    pids = _pids(status)

    second = bed.cli("run")  # one already runs in the namespace: refused
    assert second.returncode == 1
    assert "already running" in second.stderr and running in second.stderr

    attach = bed.popen("run", "--attach")  # follows the running execution instead
    assert attach.stdout is not None
    seen = ""
    while "attached to execution" not in seen:
        line = attach.stdout.readline()
        assert line, f"run --attach ended early: {seen}"
        seen += line
    assert running in seen

    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 130, out
    attached_out, _ = attach.communicate(timeout=60)
    assert attach.returncode == 1  # it ended, but not because this command stopped it
    assert f"execution {running} was terminated" in seen + attached_out
    assert f"stop_workflow sent for {running}" in out
    assert "end_run" in out and f"workflow stopped: execution {running} terminated" in out
    after = bed.wait_status(
        lambda s: s["execution_status"] == "terminated", what="terminated execution"
    )
    assert after["execution_id"] == running
    assert _pids(after) == pids and after["healthy"] is True  # agents stay up


def test_ctrl_c_while_draining_says_what_is_still_in_progress(make_bed: Any) -> None:
    bed: Bed = make_bed()
    bed.write(
        bed_toml(
            "drain",
            RUNNER,
            workflow='config = "fast_processing_default"\ntime_scale = 0',
            parameters="stf_count = 2\nslices_per_sample = 3",
        )
    )  # 3 slices no one works on
    ok(bed.cli("up"))
    run = bed.popen("run")
    bed.wait_status(lambda s: s["execution_status"] == "completed", what="the run's end")
    run.send_signal(signal.SIGINT)
    out, _ = run.communicate(timeout=60)
    assert run.returncode == 130, out
    assert (
        "interrupted while 3 of 3 slices were still in progress (the workers carry on; "
        "`swf-testbed status` shows them)"
    ) in out, out
    assert "workflow completed" not in out


def test_two_namespaces_on_one_host_and_broker_do_not_cross_talk(make_bed: Any) -> None:
    one: Bed = make_bed("one")
    two: Bed = make_bed("two")
    one.write(bed_toml("ns-one", RUNNER + agent_toml("idle")))
    two.write(bed_toml("ns-two", RUNNER, parameters="stf_count = 6"))
    runs = [one.popen("run"), two.popen("run")]
    outs = [r.communicate(timeout=120)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], outs
    assert "execution tiny-ns-one-" in outs[0] and "tiny-ns-two" not in outs[0]
    assert "execution tiny-ns-two-" in outs[1] and "tiny-ns-one" not in outs[1]
    assert "3 STFs produced" in outs[0] and "6 STFs produced" in outs[1]
    s1, s2 = one.status(), two.status()
    assert s1["supervisord"]["pid"] != s2["supervisord"]["pid"]
    assert s1["supervisord"]["socket"] != s2["supervisord"]["socket"]
    assert {p["process"] for p in s1["programs"]} == {"watch", "runner", "idle"}
    assert {p["process"] for p in s2["programs"]} == {"watch", "runner"}
    assert s1["execution_id"].startswith("tiny-ns-one-") and s2["execution_id"].startswith(
        "tiny-ns-two-"
    )
    ok(one.cli("stop", "--all"))
    assert two.status()["healthy"] is True  # stopping one namespace leaves the other alone


def test_changed_testbed_toml_is_applied_on_the_next_command(make_bed: Any) -> None:
    bed: Bed = make_bed()
    port = free_port()
    bed.write(
        bed_toml(
            "change",
            agent_toml("keep") + agent_toml("old") + agent_toml("tuned"),
            monitor_port=port,
        )
    )
    ok(bed.cli("up"))
    before = _pids(bed.status())
    bed.write(
        bed_toml(
            "change",
            agent_toml("keep") + agent_toml("new") + agent_toml("tuned", interval=2),
            monitor_port=port,
        )
    )
    assert bed.status()["pending_changes"] is True
    out = ok(bed.cli("up"))
    assert "removed: old" in out and "added: new" in out
    # which program and why, in one line
    assert (
        "restarted (changed): tuned: command (1 -> 2), environment (SWF_HEARTBEAT_INTERVAL) changed"
        in out
    ), out
    after = bed.status()
    assert {p["process"] for p in after["programs"]} == {"watch", "keep", "new", "tuned"}
    assert after["pending_changes"] is False and after["healthy"] is True
    pids = _pids(after)
    assert pids["keep"] == before["keep"] and pids["watch"] == before["watch"]
    assert pids["tuned"] != before["tuned"]
    assert before["old"] not in pids.values()
    with pytest.raises(ProcessLookupError):
        os.kill(before["old"], 0)

    out = ok(bed.cli("restart", "keep"))
    assert "restarted keep" in out
    assert _pids(bed.status())["keep"] != pids["keep"]
    assert bed.cli("restart", "nope").returncode == 1


def test_embedded_broker_started_by_supervisord(make_bed: Any) -> None:
    bed: Bed = make_bed("embedded", broker=None)
    port = free_port()
    bed.write(bed_toml("emb", RUNNER, broker=f'mode = "embedded"\nport = {port}'))
    out = ok(bed.cli("run"))
    assert "workflow completed" in out
    status = bed.status()
    programs = {p["process"]: p for p in status["programs"]}
    assert programs["broker"]["state"] == "RUNNING" and programs["broker"]["healthy"] is True
    assert status["broker"] == f"127.0.0.1:{port}"
    ok(bed.cli("stop", "--all"))


@pytest.mark.activemq
def test_run_with_activemq_as_the_external_broker(make_bed: Any, activemq_broker: Any) -> None:
    bed: Bed = make_bed("amq", broker=activemq_broker)
    bed.write(bed_toml("amq", RUNNER + agent_toml("idle")))
    out = ok(bed.cli("run"))
    assert "workflow completed: execution tiny-amq-" in out
    status = bed.status()
    assert status["broker"] == f"{activemq_broker.host}:{activemq_broker.port}"
    assert status["healthy"] is True and status["execution_status"] == "completed"


def test_unreachable_broker_is_named(make_bed: Any) -> None:
    bed: Bed = make_bed("nobroker", broker=None)
    port = free_port()  # nothing listens there
    bed.write(bed_toml("nobroker", agent_toml("idle"), broker=f'mode = "external"\nport = {port}'))
    result = bed.cli("up", "--timeout", "4")
    assert result.returncode == 1
    assert f"cannot reach the broker at 127.0.0.1:{port}" in result.stderr


def test_agents_left_by_a_killed_supervisord_are_replaced_not_duplicated(make_bed: Any) -> None:
    bed: Bed = make_bed()
    bed.write(bed_toml("orphans", agent_toml("idle")))
    ok(bed.cli("up"))
    status = bed.status()
    old = _pids(status)
    os.kill(status["supervisord"]["pid"], signal.SIGKILL)  # its children live on
    os.kill(old["idle"], 0)
    out = ok(bed.cli("up"))
    assert "stopped 2 processes left by a previous supervisord" in out
    for pid in (old["idle"], old["watch"]):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"process {pid} of the killed supervisord still runs")
    new = _pids(bed.status())
    assert new["idle"] != old["idle"]


def test_the_same_testbed_from_another_directory_restarts_nothing(
    make_bed: Any, tmp_path: Any
) -> None:
    """The working directory (and how the interpreter was named) is no part of a program's
    identity."""
    bed: Bed = make_bed("here", broker=None)
    port = free_port()
    bed.write(
        bed_toml("cwd", RUNNER + agent_toml("idle"), broker=f'mode = "embedded"\nport = {port}')
    )
    ok(bed.cli("up"))
    before = _pids(bed.status())
    elsewhere = tmp_path / "elsewhere" / "deeper"
    elsewhere.mkdir(parents=True)
    python = os.path.join(
        os.path.dirname(sys.executable),
        "..",
        os.path.basename(os.path.dirname(sys.executable)),
        os.path.basename(sys.executable),
    )  # the same interpreter, named another way
    for cwd, config in (
        (elsewhere, os.path.relpath(bed.toml, elsewhere)),
        (tmp_path, str(bed.toml)),
    ):
        result = subprocess.run(
            [python, "-m", "swf_testbed.cli", "run", config],
            cwd=cwd,
            env=bed.env,
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        out = ok(result)
        assert "workflow completed" in out
        assert (
            "changed" not in out and "restarted" not in out and "starting supervisord" not in out
        ), out
        assert _pids(bed.status()) == before
    ok(bed.cli("stop", "--all"))

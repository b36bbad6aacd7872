"""``swf-testbed replay``: a recorded run published again in another namespace, where agents run.

The recording is a real run (``swf-testbed run``, the whole chain, embedded
monitor); its export is replayed into a second testbed's namespace on the same
broker, whose agents report to the same monitor. The replayed execution must
end with what the recorded one had: the same STFs, samples and slices, each
once, under new names, and the recorded execution must be left as it was.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from swf_testbed.messages import EndRun, RunImminent, StartRun, StfGen
from swf_testbed.testing.brokers import BrokerProcess, free_port

from .conftest import Bed, ok
from .test_end_to_end import (
    SLICES_PER_SAMPLE,
    STFS,
    count,
    full_chain_toml,
    stack_services,
    wait_until,
)

TYPES = (
    "run_imminent",
    "start_run",
    "stf_gen",
    "stf_ready",
    "processing_complete",
    "tf_file_registered",
    "run_imminent_worker",
    "slice",
    "slice_result",
    "end_run",
    "workflow_started",
    "workflow_completed",
)


def cli(env: dict[str, str], *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "swf_testbed.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def outcome(api: httpx.Client, execution_id: str) -> dict[str, Any]:
    """What an execution ended with, in the monitor: messages by type, STFs, samples, slices."""
    runs = api.get("/runs/", params={"execution_id": execution_id}).json()
    figures: dict[str, Any] = {
        t: count(api, "/workflow-messages/", execution_id=execution_id, msg_type=t) for t in TYPES
    }
    figures["invalid"] = count(
        api, "/workflow-messages/", execution_id=execution_id, is_valid="false"
    )
    figures["stf_files"] = count(api, "/stf-files/", execution_id=execution_id)
    figures["samples"] = count(api, "/fastmon-files/", execution_id=execution_id)
    figures["runs"] = len(runs)
    for run in runs:
        figures["slices"] = count(api, "/tf-slices/", run_number=run["run_number"])
        figures["slices_completed"] = count(
            api, "/tf-slices/", run_number=run["run_number"], status="completed"
        )
    return figures


def names(api: httpx.Client, path: str, execution_id: str, key: str) -> set[str]:
    rows = api.get(path, params={"execution_id": execution_id, "limit": 1000}).json()
    return {row[key] for row in (rows["results"] if isinstance(rows, dict) else rows)}


@pytest.mark.slow
@pytest.mark.parametrize("stack", ["embedded+sqlite", "activemq+postgresql"])
def test_a_recorded_run_replayed_into_another_namespace_ends_the_same(
    stack: str, make_bed: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    broker, database_url = stack_services(
        stack, request, f"sqlite:///{tmp_path / 'monitor.sqlite3'}"
    )
    port = free_port()
    recorded_ns, replay_ns = f"rec{port}", f"rep{port}"
    recorder: Bed = make_bed("recorder", broker=broker)
    recorder.write(
        full_chain_toml(recorded_ns, port, database_url)
    )  # sampling rate 1.0: every STF is sampled
    out = ok(recorder.cli("run", timeout=300))
    recorded = out.split("workflow completed: execution ")[1].split(",")[0]

    with httpx.Client(base_url=f"http://127.0.0.1:{port}/api", timeout=10) as api:
        expected_slices = STFS * SLICES_PER_SAMPLE
        wait_until(
            lambda: (
                outcome(api, recorded)["slice_result"] == expected_slices or outcome(api, recorded)
            ),
            "the recorded run complete in the monitor",
        )
        time.sleep(1.0)
        before = outcome(api, recorded)
        assert (
            before["stf_files"] == STFS
            and before["samples"] == STFS
            and before["slices"] == expected_slices
        )

        export = tmp_path / "recorded.jsonl"
        done = cli(
            {**recorder.env, "DATABASE_URL": database_url}, "export", recorded, "-o", str(export)
        )
        assert done.returncode == 0, done.stderr

        # a second testbed: the same chain of agents in another namespace, with the same monitor
        replayer: Bed = make_bed("replayer", broker=broker)
        toml = full_chain_toml(replay_ns, port, database_url)
        toml = toml.replace(
            f'[monitor]\nmode = "embedded"\nport = {port}\n',
            f'[monitor]\nmode = "external"\nurl = "http://127.0.0.1:{port}"\n',
        )
        replayer.write(toml.split("[database]")[0])
        ok(replayer.cli("up", timeout=300))

        done = cli(replayer.env, "replay", str(export), "--namespace", replay_ns, "--speed", "2")
        assert done.returncode == 0, done.stderr
        assert (
            f"replaying {2 + STFS + 1} messages of {recorded} into namespace {replay_ns}"
            in done.stderr
        )
        found = re.search(
            r"replay completed: execution (\S+), (\d+) messages sent, (\d+) STFs", done.stderr
        )
        assert found and int(found[2]) == 2 + STFS + 1 and int(found[3]) == STFS, done.stderr
        replayed = found[1]
        assert replayed != recorded and f"-{replay_ns}-" in replayed

        def same_outcome() -> bool | dict[str, Any]:
            got = outcome(api, replayed)
            return got == before or got

        wait_until(
            same_outcome, "the replayed execution's outcome equal to the recorded one", timeout=120
        )
        time.sleep(1.0)  # once each: nothing more arrives after a while either
        assert outcome(api, replayed) == before
        assert outcome(api, recorded) == before  # the recording untouched by the replay

        execution = api.get(f"/workflow-executions/{replayed}/").json()
        assert execution["status"] == "completed" and execution["namespace"] == replay_ns
        assert execution["parameter_values"]["replay_of"] == recorded
        old_runs = api.get("/runs/", params={"execution_id": recorded}).json()
        new_runs = api.get("/runs/", params={"execution_id": replayed}).json()
        assert (
            new_runs[0]["run_number"] > old_runs[0]["run_number"]
            and new_runs[0]["end_time"] is not None
        )
        old_stfs = names(api, "/stf-files/", recorded, "stf_filename")
        new_stfs = names(api, "/stf-files/", replayed, "stf_filename")
        assert len(new_stfs) == STFS and not old_stfs & new_stfs
        assert {n.replace(f".{new_runs[0]['run_number']:06d}.", ".") for n in new_stfs} == {
            n.replace(f".{old_runs[0]['run_number']:06d}.", ".") for n in old_stfs
        }  # same sequences
        state = api.get(f"/run-states/{new_runs[0]['run_number']}/").json()
        assert state["phase"] == "ended" and state["slices_completed"] == expected_slices


def export_lines(run_id: int = 1234) -> list[str]:
    common: dict[str, Any] = {
        "namespace": "src",
        "sender": "runner",
        "execution_id": "exec-R",
        "run_id": run_id,
    }
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    bodies = [
        RunImminent(**common, state="beam", substate="not_ready"),
        StartRun(**common, state="run", substate="physics"),
        StfGen(
            **common,
            state="run",
            substate="physics",
            filename=f"swf.{run_id:06d}.000001.stf",
            sequence=1,
            size_bytes=10,
            checksum="0000abcd",
            tf_count=10,
            start=now,
            end=now,
        ),
        EndRun(**common, state="beam", substate="not_ready", total_stf_files=1),
    ]
    header = {
        "format": "swf-testbed-export",
        "version": 1,
        "messages": len(bodies),
        "execution": {"execution_id": "exec-R", "namespace": "src", "parameter_values": {}},
    }
    rows = [
        {
            "msg_id": m.msg_id,
            "destination": "/topic/epictopic",
            "received_at": now.isoformat(),
            "headers": {},
            "body": m.to_json(),
        }
        for m in bodies
    ]
    return [json.dumps(line) + "\n" for line in [header, *rows]]


@pytest.mark.parametrize(
    "damage, args, words",
    [
        (lambda lines: lines[:-1] + [lines[-1][:40]], (), ":5: the line is cut short"),
        (lambda lines: lines[:2] + ["{not json\n"] + lines[3:], (), ":3: not JSON"),
        (lambda lines: lines, ("--types", "stf_gen,slice"), "slice; replayable are run_imminent"),
        (lambda lines: lines, ("--speed", "1", "--as-fast-as-possible"), "not both"),
        (lambda lines: lines, ("--namespace", "a:b"), "--namespace 'a:b'"),
        (
            lambda lines: [lines[0].replace('"messages": 4', '"messages": 1'), lines[1]],
            ("--types", "stf_gen"),
            "no stf_gen message on the run topic in execution exec-R: nothing to replay",
        ),
    ],
)
@pytest.mark.slow
def test_a_bad_file_or_request_is_refused_before_anything_is_sent(
    tmp_path: Path, damage: Any, args: tuple[str, ...], words: str
) -> None:
    path = tmp_path / "damaged.jsonl"
    path.write_text("".join(damage(export_lines())))
    env = {
        "PATH": "/usr/bin:/bin",
        "SWF_HOME": str(tmp_path),
        "ACTIVEMQ_PORT": str(free_port()),
        "COLUMNS": "300",
    }
    done = cli(
        env, "replay", str(path), "--namespace", "dst", *args, timeout=60
    )  # the last --namespace wins
    assert done.returncode == 2, done.stderr
    assert words in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert "replaying" not in done.stderr


def test_ctrl_c_mid_replay_closes_the_run_and_ends_the_execution_terminated(
    embedded_broker: BrokerProcess, tmp_path: Path
) -> None:
    from swf_testbed.messages import parse_message
    from swf_testbed.mq import BrokerClient
    from swf_testbed.mq.destinations import RUN_TOPIC, replies_topic

    lines = export_lines()
    stf_gen = json.loads(lines[3])
    body = json.loads(stf_gen["body"])
    body["timestamp"] = (
        "2099-01-01T00:00:00Z"  # a recorded gap of decades: the replay waits at the STF
    )
    stf_gen["body"] = json.dumps(body)
    lines[3] = json.dumps(stf_gen) + "\n"
    path = tmp_path / "slow.jsonl"
    path.write_text("".join(lines))

    heard: list[Any] = []
    with BrokerClient(embedded_broker.settings(), client_name="replay-test") as client:
        for dest in (RUN_TOPIC, replies_topic("dst")):
            client.subscribe(dest, lambda d: heard.append(parse_message(d.body)), ack="auto")
        probe = export_lines()[1]  # heard back on both: the subscriptions are in place
        client.send(RUN_TOPIC, json.loads(probe)["body"])
        client.send(replies_topic("dst"), json.loads(probe)["body"])
        wait_until(lambda: len(heard) == 2 or heard, "the probes")
        env = {
            "PATH": "/usr/bin:/bin",
            "SWF_HOME": str(tmp_path),
            "COLUMNS": "300",
            **embedded_broker.env,
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "swf_testbed.cli", "replay", str(path), "--namespace", "dst"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        try:
            wait_until(
                lambda: (
                    [m.msg_type for m in heard if m.namespace == "dst"][-1:] == ["start_run"]
                    or heard
                ),
                "the replay up to start_run",
            )
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 130, out
        assert "replay interrupted" in out and "2 messages sent, 0 STFs" in out, out
        wait_until(
            lambda: (
                [m.msg_type for m in heard if m.namespace == "dst"][-1:] == ["workflow_completed"]
                or [m.msg_type for m in heard]
            ),
            "the end of the replayed execution",
        )
    mine = [m for m in heard if m.namespace == "dst"]
    assert [m.msg_type for m in mine] == [
        "workflow_started",
        "run_imminent",
        "start_run",
        "end_run",
        "workflow_completed",
    ]
    assert mine[3].total_stf_files == 0 and mine[-1].status == "terminated"
    assert len({m.execution_id for m in mine}) == 1

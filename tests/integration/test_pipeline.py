"""The whole agent chain as real processes on a real broker (embedded and ActiveMQ Classic).

Per broker, one namespace and one set of agent processes
(``swf-testbed agent run …``): the workflow runner, data, processing,
fastmon, fast processing and three workers. The tests drive it only through
the broker (``run_workflow`` / ``stop_workflow`` on the control queue) and
check what a collector sees on the run topic, the data topic, the monitor
topic (copies of queue traffic: slices and slice results), the replies topic
and the heartbeat topic. The runner's failure path runs an in-process runner
(with a workflow registered here that fails) on the same real broker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.agents.runner import WorkflowRunner
from swf_testbed.daq.simulator import DaqSimulator
from swf_testbed.messages import Heartbeat, Message, OperationalState, RunWorkflow, StopWorkflow
from swf_testbed.mq import BrokerClient
from swf_testbed.mq.destinations import (
    HEARTBEAT_TOPIC,
    MONITOR_TOPIC,
    RUN_TOPIC,
    control_queue,
    data_topic,
    replies_topic,
    worker_topic,
)
from swf_testbed.testing.brokers import BrokerProcess
from swf_testbed.workflows.registry import WorkflowContext, WorkflowOutcome, workflow
from tests.support.collect import Collector

ROOT = Path(__file__).resolve().parents[2]
WORKERS = ("worker-1", "worker-2", "worker-3")
AGENTS = {
    "runner": ("swf_testbed.agents.runner:WorkflowRunner", []),
    "data": ("swf_testbed.agents.data:DataAgent", []),
    "processing": ("swf_testbed.agents.processing:ProcessingAgent", []),
    "fastmon": ("swf_testbed.agents.fastmon:FastMonAgent", ["--set", "seed=1"]),
    "fast-processing": ("swf_testbed.agents.fast_processing:FastProcessingAgent", []),
    **{w: ("swf_testbed.agents.worker:WorkerAgent", []) for w in WORKERS},
}


class Chain:
    """The agent processes of one namespace on one broker."""

    def __init__(self, broker: BrokerProcess) -> None:
        self.broker = broker
        self.settings = broker.settings()
        self.ns = f"pipe{uuid.uuid4().hex[:6]}"
        self.logs = Path(tempfile.mkdtemp(prefix="swf-pipeline-"))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str) -> subprocess.Popen[bytes]:
        target, extra = AGENTS[name]
        env = {**os.environ, **self.broker.env, "PYTHONPATH": str(ROOT)}
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "swf_testbed.cli",
                    "agent",
                    "run",
                    target,
                    "--name",
                    name,
                    "--namespace",
                    self.ns,
                    "--heartbeat-interval",
                    "0.5",
                    "--drain-timeout",
                    "2",
                    *extra,
                ],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs[name] = proc
        return proc

    def wait_ready(self, names: list[str], timeout: float = 90) -> None:
        watch = Collector(self.settings, HEARTBEAT_TOPIC)
        try:
            watch.wait_for(
                lambda ms: (
                    {
                        m.agent_name
                        for m in ms
                        if isinstance(m, Heartbeat)
                        and m.namespace == self.ns
                        and m.operational_state is OperationalState.READY
                    }
                    >= set(names)
                ),
                timeout=timeout,
                what=f"READY from {names}",
            )
        except AssertionError:
            raise AssertionError(f"agents not READY:\n{self.tails()}") from None
        finally:
            watch.close()

    def tails(self, lines: int = 15) -> str:
        out = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(out)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


@pytest.fixture(
    scope="module",
    params=[
        "embedded",
        pytest.param("activemq", marks=pytest.mark.activemq),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ],
)
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    broker: BrokerProcess = request.getfixturevalue(f"{request.param}_broker")
    chain = Chain(broker)
    for name in AGENTS:
        chain.start(name)
    try:
        chain.wait_ready(list(AGENTS))
        yield chain
    finally:
        chain.stop()


def collector(chain: Chain) -> Collector:
    ns = chain.ns
    return Collector(
        chain.settings,
        RUN_TOPIC,
        data_topic(ns),
        MONITOR_TOPIC,
        replies_topic(ns),
        worker_topic(ns),
        HEARTBEAT_TOPIC,
    )


def mine(ms: list[Message], ns: str, msg_type: str, execution_id: str | None = None) -> list[Any]:
    return [
        m
        for m in ms
        if m.namespace == ns
        and m.msg_type == msg_type
        and (execution_id is None or m.execution_id == execution_id)
    ]


def request(chain: Chain, msg: Message) -> None:
    with BrokerClient(chain.settings, client_name="test-control").start() as client:
        client.send(control_queue(chain.ns), msg)


def run_request(chain: Chain, time_scale: float, **params: Any) -> RunWorkflow:
    msg = RunWorkflow(
        namespace=chain.ns,
        sender="pytest",
        workflow_name="stf_datataking",
        config="fast_processing_default",
        time_scale=time_scale,
        params=params,
    )
    request(chain, msg)
    return msg


def started(watch: Collector, chain: Chain, req: Message, timeout: float = 30) -> Any:
    msgs = watch.wait_for(
        lambda ms: any(getattr(m, "in_reply_to", None) == req.msg_id for m in ms),
        timeout=timeout,
        what="a reply to run_workflow",
    )
    reply = next(m for m in msgs if getattr(m, "in_reply_to", None) == req.msg_id)
    assert reply.msg_type == "workflow_started", reply
    return reply


def finished(watch: Collector, chain: Chain, execution_id: str, timeout: float = 60) -> Any:
    def done(ms: list[Message]) -> bool:
        return any(
            m.msg_type in ("workflow_completed", "workflow_failed")
            and m.execution_id == execution_id
            for m in ms
            if m.namespace == chain.ns
        )

    try:
        msgs = watch.wait_for(done, timeout=timeout, what=f"the end of {execution_id}")
    except AssertionError:
        raise AssertionError(f"{execution_id} did not end:\n{chain.tails()}") from None
    return next(
        m
        for m in msgs
        if m.msg_type in ("workflow_completed", "workflow_failed")
        and m.execution_id == execution_id
    )


def last_beat(ms: list[Message], ns: str, agent: str) -> Any:
    beats = [
        m for m in ms if isinstance(m, Heartbeat) and m.namespace == ns and m.agent_name == agent
    ]
    return beats[-1] if beats else None


def state_of(ms: list[Message], ns: str, agent: str) -> OperationalState | None:
    beat = last_beat(ms, ns, agent)
    return beat.operational_state if beat is not None else None


# --------------------------------------------------------------------------- tests


@pytest.mark.slow
def test_fast_processing_run_end_to_end(chain: Chain) -> None:
    n, per_sample = 8, 4
    watch = collector(chain)
    try:
        req = run_request(
            chain,
            100,
            stf_count=n,
            stf_sampling_rate=1.0,
            slices_per_sample=per_sample,
            slice_processing_time=1.0,
            processing_time=1.0,
        )
        start = started(watch, chain, req)
        eid, ns = start.execution_id, chain.ns
        assert (
            start.config["fast_processing"]["stf_sampling_rate"] == 1.0 and start.time_scale == 100
        )
        assert (
            start.workflow_version
            and start.workflow_module == "swf_testbed.workflows.stf_datataking"
        )
        end = finished(watch, chain, eid)
        assert (
            end.msg_type == "workflow_completed"
            and end.status == "completed"
            and end.stf_count == n
        )
        slices = n * per_sample

        def complete(ms: list[Message]) -> bool:
            results = {
                m.slice_id for m in mine(ms, ns, "slice_result", eid) if m.status == "completed"
            }
            return (
                len(mine(ms, ns, "processing_complete", eid)) >= n
                and len(results) >= slices
                and last_beat(ms, ns, "fast-processing") is not None
                and last_beat(ms, ns, "fast-processing").counters.get("slices_completed", 0)
                >= slices
            )

        msgs = watch.wait_for(
            complete, timeout=60, what="every STF processed and every slice completed"
        )

        def processed_by_workers(ms: list[Message]) -> int:
            beats = (last_beat(ms, ns, w) for w in WORKERS)
            return sum(b.counters.get("slices_done", 0) for b in beats if b is not None)

        # Counted where the work is done: once the workers' own counts add up to every slice
        # created, nothing is left to process, and a slice processed twice would make them add
        # up to more. No waiting for a duplicate that might still come.
        msgs = watch.wait_for(
            lambda ms: processed_by_workers(ms) >= slices,
            timeout=30,
            what="the workers' heartbeats to count every slice",
        )
        assert processed_by_workers(msgs) == slices
        gen = mine(msgs, ns, "stf_gen", eid)
        assert len(gen) == n and len({m.filename for m in gen}) == n
        assert sorted(m.filename for m in mine(msgs, ns, "stf_ready", eid)) == sorted(
            m.filename for m in gen
        )
        assert sorted(m.filename for m in mine(msgs, ns, "processing_complete", eid)) == sorted(
            m.filename for m in gen
        )
        samples = mine(msgs, ns, "tf_file_registered", eid)
        assert sorted(m.stf_filename for m in samples) == sorted(m.filename for m in gen)
        sent = mine(msgs, ns, "slice", eid)
        assert sorted(m.slice_id for m in sent) == list(range(slices))
        done = Counter(
            m.slice_id for m in mine(msgs, ns, "slice_result", eid) if m.status == "completed"
        )
        assert sorted(done) == list(range(slices)) and set(done.values()) == {1}
        assert (
            len({m.worker_id for m in mine(msgs, ns, "slice_result", eid)}) >= 2
        )  # the work was shared
        ends = mine(msgs, ns, "end_run", eid)
        assert [m.total_stf_files for m in ends if m.sender == "runner"] == [n]
        assert [m.msg_type for m in mine(msgs, ns, "run_imminent_worker", eid)] == [
            "run_imminent_worker"
        ]
        fast = last_beat(msgs, ns, "fast-processing").counters
        assert fast["samples_received"] == n and fast["slices_created"] == slices
        assert fast["slices_completed"] == slices and fast.get("slice_results_duplicate", 0) == 0
        assert fast.get("slices_failed", 0) == 0
        # the runner went back to READY; the data agent closed the run with the right count
        watch.wait_for(
            lambda ms: state_of(ms, ns, "runner") is OperationalState.READY,
            timeout=10,
            what="runner READY",
        )
        data = last_beat(msgs, ns, "data")
        assert data.counters.get("stf_count_mismatches", 0) == 0
        assert watch.invalid == []
    finally:
        watch.close()


@pytest.mark.slow
def test_second_run_is_refused_and_stop_terminates_cleanly(chain: Chain) -> None:
    watch = collector(chain)
    ns = chain.ns
    try:
        req = run_request(chain, 10, stf_count=50, stf_sampling_rate=0.0)
        eid = started(watch, chain, req).execution_id
        watch.wait_for(
            lambda ms: len(mine(ms, ns, "stf_gen", eid)) >= 1, timeout=30, what="a first STF"
        )
        watch.wait_for(
            lambda ms: state_of(ms, ns, "runner") is OperationalState.PROCESSING,
            timeout=10,
            what="runner PROCESSING",
        )

        second = run_request(chain, 10, stf_count=2)
        msgs = watch.wait_for(
            lambda ms: any(getattr(m, "in_reply_to", None) == second.msg_id for m in ms),
            timeout=20,
            what="a reply to the second run_workflow",
        )
        refusal = next(m for m in msgs if getattr(m, "in_reply_to", None) == second.msg_id)
        assert refusal.msg_type == "workflow_failed" and refusal.refused is True
        assert eid in refusal.error

        stop = StopWorkflow(namespace=ns, sender="pytest", execution_id=eid, reason="test")
        request(chain, stop)
        end = finished(watch, chain, eid, timeout=30)
        assert end.msg_type == "workflow_completed" and end.status == "terminated"
        assert end.in_reply_to == stop.msg_id
        msgs = watch.wait_for(
            lambda ms: len(mine(ms, ns, "end_run", eid)) >= 1, timeout=10, what="end_run"
        )
        run_end = [m for m in mine(msgs, ns, "end_run", eid) if m.sender == "runner"]
        assert len(run_end) == 1
        announced = len(mine(msgs, ns, "stf_gen", eid))
        assert 1 <= announced < 50 and run_end[0].total_stf_files == announced == end.stf_count

        # an unknown override: failed, not refused, nothing started
        bad = run_request(chain, 0, stf_cnt=3)
        msgs = watch.wait_for(
            lambda ms: any(getattr(m, "in_reply_to", None) == bad.msg_id for m in ms),
            timeout=20,
            what="a reply to the bad run_workflow",
        )
        failure = next(m for m in msgs if getattr(m, "in_reply_to", None) == bad.msg_id)
        assert failure.msg_type == "workflow_failed" and failure.refused is False
        assert "stf_cnt" in failure.error and "stf_count" in failure.error
        assert len(mine(list(watch.messages), ns, "run_imminent")) == 1
    finally:
        watch.close()


@pytest.mark.slow
def test_worker_killed_mid_slice_has_its_slice_redelivered(chain: Chain) -> None:
    watch = collector(chain)
    ns = chain.ns
    victim: str | None = None
    try:
        # 3 slices of 2 s each, 3 workers with a prefetch of 1: every worker takes one
        req = run_request(
            chain,
            10,
            stf_count=1,
            stf_sampling_rate=1.0,
            slices_per_sample=3,
            slice_processing_time=20.0,
            processing_time=0.0,
        )
        eid = started(watch, chain, req).execution_id

        def busy_worker(ms: list[Message]) -> str | None:
            # only heartbeats after the first slice went out: the ramp-up before it is handled
            # (briefly PROCESSING) too, and with a prefetch of 1 a worker PROCESSING now holds
            # exactly one slice
            first = next(
                (i for i, m in enumerate(ms) if m.msg_type == "slice" and m.namespace == ns), None
            )
            if first is None:
                return None
            for w in WORKERS:
                if state_of(ms[first:], ns, w) is OperationalState.PROCESSING:
                    return w
            return None

        msgs = watch.wait_for(
            lambda ms: busy_worker(ms) is not None, timeout=30, what="a worker mid-slice"
        )
        victim = busy_worker(msgs)
        assert victim is not None
        victim_id = last_beat(msgs, ns, victim).instance_id
        assert not any(m.worker_id == victim_id for m in mine(msgs, ns, "slice_result", eid))
        chain.procs[victim].send_signal(signal.SIGKILL)
        chain.procs[victim].wait(10)

        msgs = watch.wait_for(
            lambda ms: (
                {m.slice_id for m in mine(ms, ns, "slice_result", eid) if m.status == "completed"}
                == {0, 1, 2}
            ),
            timeout=60,
            what="all 3 slices completed",
        )
        results = mine(msgs, ns, "slice_result", eid)
        assert all(m.worker_id != victim_id for m in results)
        assert len([m for m in results if m.status == "completed"]) == 3
        # redelivered by the broker, not re-sent by the fast-processing agent
        assert len(mine(msgs, ns, "slice", eid)) == 3
        assert finished(watch, chain, eid).status == "completed"
    finally:
        watch.close()
        if victim is not None and chain.procs[victim].poll() is not None:
            chain.start(victim)  # the chain stays whole for whatever runs next


# ----------------------------------------------------------------- failure path (in-process runner)


class Boom(RuntimeError):
    pass


@workflow("test_pipeline_fails", version="0", default_config="stf_datataking_default")
def _failing_workflow(ctx: WorkflowContext) -> WorkflowOutcome:
    """Runs the DAQ simulator and fails after the second STF."""
    stfs = 0

    def emit(msg: Message) -> None:
        nonlocal stfs
        ctx.emit(msg)
        if msg.msg_type == "stf_gen":
            stfs += 1
            if stfs == 2:
                raise Boom("the workflow broke after 2 STFs")

    sim = DaqSimulator(
        ctx.config.daq,
        emit,
        namespace=ctx.namespace,
        sender=ctx.sender,
        execution_id=ctx.execution_id,
        run_id=ctx.run_id,
    )
    summary = sim.run(time_scale=ctx.time_scale, duration=ctx.duration, pace=ctx.pace)
    return WorkflowOutcome(stf_count=summary.stf_count)


def test_failing_workflow_still_ends_its_run_and_runner_returns_to_ready(
    every_broker: BrokerProcess,
) -> None:
    settings = every_broker.settings()
    ns = f"fail{uuid.uuid4().hex[:6]}"
    watch = Collector(settings, RUN_TOPIC, replies_topic(ns), HEARTBEAT_TOPIC)
    runner = WorkflowRunner("runner", ns, broker=settings, heartbeat_interval=0.5).start()
    try:
        req = RunWorkflow(
            namespace=ns,
            sender="pytest",
            workflow_name="test_pipeline_fails",
            config="stf_datataking_default",
            time_scale=0,
            params={"stf_count": 5},
        )
        with BrokerClient(settings).start() as client:
            client.send(control_queue(ns), req)
        msgs = watch.wait_for(
            lambda ms: bool(mine(ms, ns, "workflow_failed")), timeout=30, what="workflow_failed"
        )
        failure = mine(msgs, ns, "workflow_failed")[0]
        assert failure.refused is False and "the workflow broke after 2 STFs" in failure.error
        assert failure.in_reply_to == req.msg_id
        msgs = watch.wait_for(lambda ms: bool(mine(ms, ns, "end_run")), timeout=10, what="end_run")
        assert mine(msgs, ns, "end_run")[0].total_stf_files == 2 == len(mine(msgs, ns, "stf_gen"))
        watch.wait_for(
            lambda ms: (
                state_of(ms, ns, "runner") is OperationalState.READY and runner.current is None
            ),
            timeout=10,
            what="runner READY",
        )
        assert runner.counters["workflows_failed"] == 1
    finally:
        runner.shutdown()
        watch.close()


def test_duration_limits_the_run_and_counts_as_completed(every_broker: BrokerProcess) -> None:
    settings = every_broker.settings()
    ns = f"dur{uuid.uuid4().hex[:6]}"
    watch = Collector(settings, RUN_TOPIC, replies_topic(ns))
    runner = WorkflowRunner("runner", ns, broker=settings, heartbeat_interval=0.5).start()
    try:
        # default timing: STFs every 2 simulated s from 15.1 s on; 20 simulated s leave room for
        # 2 or 3
        req = RunWorkflow(
            namespace=ns,
            sender="pytest",
            workflow_name="stf_datataking",
            config="stf_datataking_default",
            time_scale=0,
            duration=20,
            params={"stf_count": 50},
        )
        with BrokerClient(settings).start() as client:
            client.send(control_queue(ns), req)
        msgs = watch.wait_for(
            lambda ms: bool(mine(ms, ns, "workflow_completed")),
            timeout=30,
            what="workflow_completed",
        )
        done = mine(msgs, ns, "workflow_completed")[0]
        assert done.status == "completed" and done.in_reply_to == req.msg_id
        msgs = watch.wait_for(lambda ms: bool(mine(ms, ns, "end_run")), timeout=10, what="end_run")
        announced = len(mine(msgs, ns, "stf_gen"))
        assert 1 <= announced < 50
        assert mine(msgs, ns, "end_run")[0].total_stf_files == announced == done.stf_count
        started_msg = mine(msgs, ns, "workflow_started")[0]
        assert (
            started_msg.time_scale == 0
            and started_msg.run_id == mine(msgs, ns, "end_run")[0].run_id
        )
    finally:
        runner.shutdown()
        watch.close()

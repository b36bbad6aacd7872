"""Contract tests of the agent chain: each producer's real output is fed to its real consumer.

These are unit tests of the *message contracts* between the agents, not of
the transport: the agents are built but never started (no broker), their
handlers are called directly, and ``send`` is replaced by a capture that
round-trips every message through JSON and the shared schema
(:func:`~swf_testbed.messages.parse_message`), as the runtime does on
receipt. No hand-written payload stands in for a producer: the runner's
``run_workflow`` handler drives the real workflow and DAQ simulator, and what
each agent emits is what the next one gets. The same chain runs over real
brokers, as real processes, in ``tests/integration/test_pipeline.py``.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from swf_testbed.agents.data import DataAgent
from swf_testbed.agents.fast_processing import FastProcessingAgent, cut, slice_results_queue
from swf_testbed.agents.fastmon import FastMonAgent
from swf_testbed.agents.processing import ProcessingAgent
from swf_testbed.agents.runner import WorkflowRunner, new_execution_id, resolve_time_scale
from swf_testbed.agents.runtime import Agent
from swf_testbed.agents.worker import WorkerAgent
from swf_testbed.messages import Message, RunWorkflow, parse_message
from swf_testbed.mq.destinations import (
    RUN_TOPIC,
    Destination,
    data_topic,
    replies_topic,
    slice_queue,
    worker_topic,
)
from swf_testbed.settings import BrokerSettings

NS = "contract"
BROKER = BrokerSettings(host="127.0.0.1", port=9)  # never connected: the agents are not started


class Capture:
    """Stands in for ``Agent.send``: validates each message as a receiver would, and keeps it."""

    def __init__(self) -> None:
        self.sent: list[tuple[Destination, Message]] = []

    def __call__(self, destination: Destination, msg: Message, *, persistent: bool = True) -> None:
        self.sent.append((destination, parse_message(msg.to_bytes())))

    def to(self, destination: Destination, msg_type: str | None = None) -> list[Any]:
        return [
            m
            for d, m in self.sent
            if d == destination and (msg_type is None or m.msg_type == msg_type)
        ]

    def take(self) -> list[tuple[Destination, Message]]:
        out, self.sent = self.sent, []
        return out


def make(cls: type[Agent], **options: Any) -> tuple[Any, Capture]:
    agent = cls(cls.agent_type, NS, broker=BROKER, **options)
    capture = Capture()
    agent.send = capture  # type: ignore[method-assign]  # sends captured, no broker
    return agent, capture


def deliver(agent: Agent, messages: list[Any]) -> None:
    """Hand messages to the agent's handlers as the runtime would (schema-validated, by type)."""
    for msg in messages:
        parsed = parse_message(msg.to_bytes())
        assert parsed.namespace == agent.namespace
        agent.dispatch(parsed)  # a type the agent does not handle: nothing happens


def run_workflow(config: str, params: dict[str, Any]) -> tuple[list[Message], list[Message]]:
    """The real runner runs the real workflow: (run messages, replies)."""
    runner, capture = make(WorkflowRunner, pace_window=100_000)
    request = RunWorkflow(
        namespace=NS,
        sender="test",
        workflow_name="stf_datataking",
        config=config,
        time_scale=0,
        params=params,
    )
    deliver(
        runner, [request]
    )  # replies workflow_started and runs the workflow in a thread of its own
    deadline = time.monotonic() + 30
    while runner.current is not None or len(capture.to(replies_topic(NS))) < 2:
        assert time.monotonic() < deadline, "the execution did not end"
        time.sleep(0.01)
    replies = capture.to(replies_topic(NS))
    assert [r.msg_type for r in replies] == ["workflow_started", "workflow_completed"]
    assert all(r.in_reply_to == request.msg_id for r in replies)
    return capture.to(RUN_TOPIC), replies


def test_the_whole_chain_with_fast_processing() -> None:
    n = 6
    run_msgs, replies = run_workflow(
        "fast_processing_default",
        {
            "stf_count": n,
            "stf_sampling_rate": 1.0,
            "slices_per_sample": 4,
            "max_slice_retries": 2,
        },
    )
    started, completed = replies
    assert started.config["daq"]["stf_count"] == n and started.time_scale == 0
    assert started.workflow_version and started.workflow_module.endswith("stf_datataking")
    assert completed.status == "completed" and completed.stf_count == n
    types = [m.msg_type for m in run_msgs]
    assert types[0] == "run_imminent" and types[-1] == "end_run" and types.count("stf_gen") == n
    imminent = run_msgs[0]
    assert imminent.run_conditions["fast_processing"]["stf_sampling_rate"] == 1.0
    assert imminent.run_conditions["workflow"]["execution_id"] == started.execution_id
    assert {m.execution_id for m in run_msgs} == {started.execution_id}
    assert {m.run_id for m in run_msgs} == {started.run_id}
    stf_gen = [m for m in run_msgs if m.msg_type == "stf_gen"]

    # DAQ → data agent
    data, data_out = make(DataAgent)
    deliver(data, run_msgs)
    ready = data_out.to(data_topic(NS), "stf_ready")
    assert [(r.filename, r.checksum, r.size_bytes, r.sequence, r.tf_count) for r in ready] == [
        (g.filename, g.checksum, g.size_bytes, g.sequence, g.tf_count) for g in stf_gen
    ]
    assert all(r.url.endswith("/" + r.filename) for r in ready)
    assert data.mismatches == [] and data.counters["stf_registered"] == n and not data.runs

    # data agent → processing
    processing, processing_out = make(ProcessingAgent)
    deliver(processing, [run_msgs[0], *ready, run_msgs[-1]])
    done = processing_out.to(data_topic(NS), "processing_complete")
    assert sorted(d.filename for d in done) == sorted(g.filename for g in stf_gen)
    assert not processing.is_busy()

    # data agent → fastmon
    fastmon, fastmon_out = make(FastMonAgent, seed=7)
    deliver(fastmon, [run_msgs[0], *ready])
    samples = fastmon_out.to(data_topic(NS), "tf_file_registered")
    assert len(samples) == n  # sampling rate 1.0, from the run's conditions
    by_stf = {r.filename: r for r in ready}
    for s in samples:
        stf = by_stf[s.stf_filename]
        assert 0 <= s.tf_first <= s.tf_last < stf.tf_count
        assert s.tf_count == s.tf_last - s.tf_first + 1 == round(stf.tf_count * 0.15)
        assert 0 < s.size_bytes < stf.size_bytes
        assert (s.run_id, s.execution_id) == (stf.run_id, stf.execution_id)

    # fastmon → fast processing
    fast, fast_out = make(FastProcessingAgent)
    deliver(fast, [run_msgs[0], *samples, run_msgs[-1]])
    ramps = fast_out.to(worker_topic(NS))
    assert [m.msg_type for m in ramps] == ["run_imminent_worker", "end_run"]
    assert ramps[0].target_worker_count == 30 and ramps[1].total_stf_files == n
    slices = fast_out.to(slice_queue(NS), "slice")
    assert len(slices) == 4 * n and len({s.slice_id for s in slices}) == 4 * n
    for s in samples:  # the slices of a sample tile it exactly
        mine = sorted((x.tf_first, x.tf_last) for x in slices if x.tf_filename == s.tf_filename)
        assert mine[0][0] == s.tf_first and mine[-1][1] == s.tf_last
        assert all(a[1] + 1 == b[0] for a, b in zip(mine, mine[1:], strict=False))
    assert all(x.work_time_s == 0 and x.retries == 0 for x in slices)  # time scale 0
    state = fast.run_state(started.run_id)
    assert state is not None and state.samples_received == n and state.slices_queued == 4 * n
    assert fast.is_busy()

    # fast processing ⇄ workers, failures retried until settled
    worker, worker_out = make(WorkerAgent, fail_rate=0.3, seed=3)
    deliver(worker, ramps)
    assert worker.counters["rampups"] == 1 and worker.counters["rampdowns"] == 1
    fast_out.take()
    queue = list(slices)
    attempts: Counter[int] = Counter()
    while queue:
        deliver(worker, queue)
        attempts.update(s.slice_id for s in queue)
        results = worker_out.to(slice_results_queue(NS), "slice_result")
        worker_out.take()
        assert sorted(r.slice_id for r in results) == sorted(s.slice_id for s in queue)
        deliver(fast, results)
        queue = fast_out.to(slice_queue(NS), "slice")
        assert all(s.retries == attempts[s.slice_id] for s in queue)
        fast_out.take()
    state = fast.run_state(started.run_id)
    assert state is not None
    assert state.slices_completed + state.slices_failed == state.slices_created == 4 * n
    assert state.slices_retried > 0  # fail_rate 0.3 over 24+ attempts
    assert all(
        attempts[r.message.slice_id] == 3 for r in state.slices.values() if r.status == "failed"
    )
    assert state.duplicate_results == 0 and not fast.is_busy()
    assert fast.counters["slices_completed"] == state.slices_completed

    # a late duplicate result is counted, never twice
    first = next(r for r in state.slices.values() if r.status == "completed")
    worker_out.take()
    deliver(worker, [first.message])
    deliver(fast, worker_out.to(slice_results_queue(NS)))
    assert state.duplicate_results == 1 and fast.counters["slice_results_duplicate"] == 1

    # processing_complete paces the runner: its handler counts the execution's STFs
    runner, _ = make(WorkflowRunner)
    deliver(runner, done)  # no execution running: ignored, no error


def test_a_run_without_fast_processing_is_neither_sampled_nor_sliced() -> None:
    run_msgs, _ = run_workflow("stf_datataking_default", {"stf_count": 3})
    assert "fast_processing" not in run_msgs[0].run_conditions
    data, data_out = make(DataAgent)
    deliver(data, run_msgs)
    ready = data_out.to(data_topic(NS), "stf_ready")
    fastmon, fastmon_out = make(FastMonAgent)
    deliver(fastmon, [run_msgs[0], *ready])
    assert fastmon_out.sent == [] and fastmon.counters["stf_not_sampled"] == 3
    fast, fast_out = make(FastProcessingAgent)
    deliver(fast, run_msgs)
    assert fast_out.sent == [] and fast.counters["runs_without_fast_processing"] == 1


def test_sampling_is_reproducible_with_a_seed_and_follows_the_rate() -> None:
    run_msgs, _ = run_workflow(
        "fast_processing_default", {"stf_count": 200, "stf_sampling_rate": 0.25}
    )
    data, data_out = make(DataAgent)
    deliver(data, run_msgs)
    ready = data_out.to(data_topic(NS), "stf_ready")
    picks = []
    for order in (ready, list(reversed(ready))):
        fastmon, out = make(FastMonAgent, seed=42)
        deliver(fastmon, [run_msgs[0], *order])
        picks.append(sorted((s.stf_filename, s.tf_first) for s in out.to(data_topic(NS))))
    assert picks[0] == picks[1]
    assert 25 <= len(picks[0]) <= 75  # 200 × 0.25 = 50


def test_data_agent_reports_a_count_mismatch_and_announces_each_stf_once() -> None:
    run_msgs, _ = run_workflow("stf_datataking_default", {"stf_count": 3})
    stf_gen = [m for m in run_msgs if m.msg_type == "stf_gen"]
    data, out = make(DataAgent)
    deliver(data, [run_msgs[0], *stf_gen, stf_gen[0]])  # a repeated stf_gen
    deliver(data, [run_msgs[-1].model_copy(update={"total_stf_files": 4})])
    assert len(out.to(data_topic(NS), "stf_ready")) == 3
    assert data.counters["stf_duplicates"] == 1
    assert data.mismatches and "saw 3 STF files, DAQ reports 4" in data.mismatches[0]
    assert data.status.value == "WARNING"


def test_slicing_by_count_and_by_tfs_per_slice() -> None:
    assert cut(10, 19, 3) == [(10, 13), (14, 16), (17, 19)]
    assert cut(0, 1, 5) == [(0, 0), (1, 1)]
    run_msgs, _ = run_workflow(
        "fast_processing_default", {"stf_count": 1, "stf_sampling_rate": 1.0}
    )
    data, data_out = make(DataAgent)
    deliver(data, run_msgs)
    fastmon, fastmon_out = make(FastMonAgent)
    deliver(fastmon, [run_msgs[0], *data_out.to(data_topic(NS))])
    sample = fastmon_out.to(data_topic(NS))[0]
    fast, fast_out = make(FastProcessingAgent, tfs_per_slice=40)
    deliver(fast, [run_msgs[0], sample])
    slices = fast_out.to(slice_queue(NS))
    assert len(slices) == -(-sample.tf_count // 40)
    assert sum(s.tf_count for s in slices) == sample.tf_count


@pytest.mark.parametrize(
    ("realtime", "scale", "expected"),
    [(False, None, 0.0), (True, None, 1.0), (False, 50, 50.0), (True, 1, 1.0)],
)
def test_time_scale_resolution(realtime: bool, scale: float | None, expected: float) -> None:
    msg = RunWorkflow(
        namespace=NS, sender="t", workflow_name="w", config="c", realtime=realtime, time_scale=scale
    )
    assert resolve_time_scale(msg) == expected


def test_time_scale_conflict_and_ids() -> None:
    with pytest.raises(ValueError, match="realtime"):
        resolve_time_scale(
            RunWorkflow(
                namespace=NS,
                sender="t",
                workflow_name="w",
                config="c",
                realtime=True,
                time_scale=10,
            )
        )
    eid = new_execution_id("stf_datataking", "ns1")
    assert eid.startswith("stf_datataking-ns1-") and eid != new_execution_id(
        "stf_datataking", "ns1"
    )
    runner, _ = make(WorkflowRunner)
    ids = [runner.next_run_id() for _ in range(3)]
    assert ids == sorted(set(ids)) and 0 < ids[0] < 2**31

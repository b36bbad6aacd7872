"""Following a run: the state object (deadlines, drain, stop) and its renderer, on a real session.

The session is fed real messages (``observe``, as the listener would), the
clock is the test's, and the stop request goes to a real broker; the monitor
is one that does not answer (its record is only asked after a lost connection).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import typer
from rich.console import Console

from swf_testbed.cli.run_view import FollowRenderer, RunContext, report_end
from swf_testbed.messages import (
    DaqState,
    DaqSubstate,
    EndRun,
    ProcessingComplete,
    Slice,
    SliceResult,
    StfGen,
    StfReady,
    TfFileRegistered,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowStarted,
)
from swf_testbed.orchestrator.follow import DRAIN_CONFIRM_S, DRAIN_SETTLE_S, End, Follow, Tick
from swf_testbed.orchestrator.listener import Listener
from swf_testbed.orchestrator.monitor_api import MonitorApi
from swf_testbed.orchestrator.session import ProgressStatus, WorkflowSession
from swf_testbed.testing.brokers import BrokerProcess, free_port

NS = "follow-test"
EXEC = "exec-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def listener(embedded_broker: BrokerProcess) -> Iterator[Listener]:
    listener = Listener(embedded_broker.settings(), NS).start()
    assert listener.wait_connected(30)
    yield listener
    listener.close()


def _follow(session: WorkflowSession, clock: Clock, *, drain_timeout: float = 60.0) -> Follow:
    nobody = MonitorApi(f"http://127.0.0.1:{free_port()}", timeout=0.5)
    return Follow(
        session,
        nobody,
        reply_timeout=30.0,
        stop_timeout=20.0,
        drain_timeout=drain_timeout,
        clock=clock,
        tick_s=0.01,
    )


def _started(session: WorkflowSession) -> None:
    session.request_id = "req-1"
    session.observe(
        WorkflowStarted(
            namespace=NS,
            sender="runner",
            in_reply_to="req-1",
            execution_id=EXEC,
            workflow_name="stf_datataking",
        )
    )


def _end_run(n: int) -> EndRun:
    return EndRun(
        namespace=NS,
        sender="daq",
        execution_id=EXEC,
        run_id=7,
        state=DaqState.BEAM,
        substate=DaqSubstate.NOT_READY,
        total_stf_files=n,
    )


def _completed(stf_count: int) -> WorkflowCompleted:
    return WorkflowCompleted(
        namespace=NS,
        sender="runner",
        execution_id=EXEC,
        workflow_name="stf_datataking",
        stf_count=stf_count,
    )


def test_no_runner_answering_ends_at_the_reply_deadline(listener: Listener) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    assert follow.tick(False).end is None
    clock.now += 29.0
    assert follow.tick(False).end is None
    clock.now += 2.0
    tick = follow.tick(False)
    assert tick.end is End.NO_REPLY and tick.snapshot.status is ProgressStatus.REQUESTED


def test_a_run_whose_output_is_all_processed_ends_once_nothing_moved_for_a_moment(
    listener: Listener,
) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    _started(session)
    first = follow.tick(False)
    assert first.announce and first.end is None and first.snapshot.execution_id == EXEC
    assert not follow.tick(False).announce  # announced once
    session.observe(_end_run(0))
    session.observe(_completed(0))
    tick = follow.tick(False)
    assert tick.end is None  # drained by what was seen: confirmed once nothing moved a moment
    assert tick.events == ["run 7: end_run (beam/not_ready)"]
    clock.now += DRAIN_CONFIRM_S
    tick = follow.tick(False)
    assert tick.end is End.ENDED and tick.snapshot.status is ProgressStatus.COMPLETED


def _run_message(cls: type[Any], **fields: Any) -> Any:
    return cls(
        namespace=NS,
        sender="agent",
        execution_id=EXEC,
        run_id=7,
        state=DaqState.BEAM,
        substate=DaqSubstate.PHYSICS,
        **fields,
    )


def _processed(name: str) -> ProcessingComplete:
    return _run_message(ProcessingComplete, filename=name, processing_time_s=0.0)


def _sample(stf: str) -> TfFileRegistered:
    return _run_message(
        TfFileRegistered,
        tf_filename=f"{stf}.tf",
        stf_filename=stf,
        tf_first=0,
        tf_last=0,
        tf_count=1,
        size_bytes=1,
    )


def _slice_and_result(stf: str, slice_id: int) -> tuple[Slice, SliceResult]:
    made = _run_message(
        Slice,
        slice_id=slice_id,
        tf_filename=f"{stf}.tf",
        stf_filename=stf,
        tf_first=0,
        tf_last=0,
        tf_count=1,
    )
    done = _run_message(
        SliceResult,
        slice_id=slice_id,
        tf_filename=f"{stf}.tf",
        worker_id="w",
        status="completed",
        processing_time_s=0.0,
    )
    return made, done


def test_a_sample_without_its_slices_yet_keeps_the_run_from_ending(listener: Listener) -> None:
    """Every STF processed and every slice seen done, but the last STF's sample has no slice yet
    (fast monitoring sends it beside the processing, not after): not drained until it has."""
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock, drain_timeout=600.0)
    _started(session)
    for stf in ("a.stf", "b.stf"):
        session.observe(_run_message(StfGen, **_stf_gen_fields(stf)))
        session.observe(_processed(stf))
    session.observe(_sample("a.stf"))
    for m in _slice_and_result("a.stf", 0):
        session.observe(m)
    session.observe(_sample("b.stf"))  # its slices are still to come
    session.observe(_completed(2))
    for _ in range(3):
        clock.now += 10 * DRAIN_CONFIRM_S
        tick = follow.tick(False)
        assert tick.end is None, "ended with a sample not yet sliced"
    assert tick.snapshot.samples_unsliced == 1
    for m in _slice_and_result("b.stf", 0):
        session.observe(m)
    assert follow.tick(False).end is None  # it just moved: confirmed a moment later
    clock.now += DRAIN_CONFIRM_S
    tick = follow.tick(False)
    assert tick.end is End.ENDED and tick.snapshot.slices_done == 2


def _stf_gen_fields(name: str) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "filename": name,
        "sequence": 1,
        "size_bytes": 1,
        "checksum": "0000abcd",
        "tf_count": 1,
        "start": now,
        "end": now,
    }


def test_without_a_processing_chain_the_wait_ends_when_nothing_moves(listener: Listener) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    _started(session)
    session.observe(_completed(3))  # 3 STFs, nobody processing them
    assert follow.tick(False).end is None
    clock.now += DRAIN_SETTLE_S - 1
    assert follow.tick(False).end is None
    clock.now += 2
    assert follow.tick(False).end is End.ENDED


def test_with_a_chain_that_lags_the_wait_ends_at_the_drain_deadline(listener: Listener) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock, drain_timeout=60.0)
    _started(session)
    session.observe(
        StfReady(
            namespace=NS,
            sender="data",
            execution_id=EXEC,
            run_id=7,
            state=DaqState.BEAM,
            substate=DaqSubstate.PHYSICS,
            filename="a.stf",
            url="file:///a.stf",
            sequence=1,
            size_bytes=1,
            checksum="0000abcd",
        )
    )
    session.observe(_completed(3))
    assert follow.tick(False).end is None
    clock.now += DRAIN_SETTLE_S + 10  # a chain exists: settling does not apply
    assert follow.tick(False).end is None
    clock.now += 60
    tick = follow.tick(False)
    assert tick.end is End.ENDED and tick.snapshot.stf_ready == 1


def test_ctrl_c_sends_one_stop_and_gives_up_after_the_stop_timeout(listener: Listener) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    _started(session)
    tick = follow.tick(True)
    assert tick.stop_requested and tick.end is None and session.stop_sent
    assert session.snapshot().status is ProgressStatus.STOPPING
    clock.now += 10
    again = follow.tick(True)
    assert not again.stop_requested and again.end is None  # one stop only
    assert again.events == [f"stop_workflow sent for {EXEC}"]  # (the event of the last tick)
    clock.now += 11
    assert follow.tick(True).end is End.STOP_TIMEOUT


def test_a_refusal_is_the_end_and_names_the_running_execution(
    listener: Listener, capsys: pytest.CaptureFixture[str]
) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    session.request_id = "req-1"
    session.observe(
        WorkflowFailed(
            namespace=NS,
            sender="runner",
            in_reply_to="req-1",
            workflow_name="stf_datataking",
            error="busy",
            refused=True,
        )
    )
    tick = follow.tick(False)
    assert tick.end is End.ENDED and tick.snapshot.status is ProgressStatus.REFUSED
    context = RunContext(NS, "http://mon", 60.0, False, running_elsewhere="exec-0")
    with pytest.raises(typer.Exit) as exc:
        report_end(tick.snapshot, follow, context)
    assert exc.value.exit_code == 1
    err = " ".join(capsys.readouterr().err.split())
    assert "refused: busy (execution exec-0)" in err and "--attach" in err


def test_report_of_a_completed_run_and_of_one_not_drained(
    listener: Listener, capsys: pytest.CaptureFixture[str]
) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    _started(session)
    session.observe(_completed(0))
    context = RunContext(NS, "http://mon", 60.0, False)
    assert report_end(session.snapshot(), follow, context) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"workflow completed: execution {EXEC}, 0 STFs produced" in out
    assert f"http://mon/executions/{EXEC}/" in out

    lagging = WorkflowSession(listener, NS)
    _started(lagging)
    lagging.observe(_completed(3))
    lagging.progress.counts["processing_complete"] = 1  # a chain that processed 1 of 3
    with pytest.raises(typer.Exit):
        report_end(lagging.snapshot(), _follow(lagging, clock), context)
    err = " ".join(capsys.readouterr().err.split())
    assert "did not catch up within 60 s" in err and "1 of 3 STFs processed (2 missing)" in err


# --------------------------------------------------------------------------- the renderer


def _console() -> Console:
    return Console(width=200, record=True, force_terminal=False)


def test_renderer_without_a_terminal_prints_events_and_a_line_now_and_then(
    listener: Listener,
) -> None:
    session, clock = WorkflowSession(listener, NS), Clock()
    follow = _follow(session, clock)
    out = _console()
    renderer = FollowRenderer("http://mon", live=False, out=out)
    renderer.start(session.snapshot())
    _started(session)
    renderer.show(follow.tick(False), now=100.0)
    session.observe(_end_run(0))
    renderer.show(follow.tick(False), now=101.0)  # within 5 s of the last line: no new line
    renderer.show(follow.tick(True), now=106.0)
    renderer.show(follow.tick(True), now=107.0)
    renderer.stop(session.snapshot())
    lines = out.export_text().splitlines()
    assert lines[0] == f"execution {EXEC}: http://mon/executions/{EXEC}/"
    assert sum("STFs produced" in line for line in lines) == 2
    assert lines.count("run 7: end_run (beam/not_ready)") == 1
    stopping = lines.index(f"stopping execution {EXEC} (Ctrl+C again to exit now)")
    assert lines[stopping + 1 :] == [f"stop_workflow sent for {EXEC}"]


def test_renderer_on_a_terminal_keeps_a_live_view(listener: Listener) -> None:
    session = WorkflowSession(listener, NS)
    out = Console(width=120, record=True, force_terminal=True)
    renderer = FollowRenderer("http://mon", live=True, out=out)
    renderer.start(session.snapshot())
    assert renderer.live is not None
    _started(session)
    snap = session.snapshot()
    renderer.show(Tick(snap, ["an event"], announce=True, stop_requested=False))
    renderer.stop(session.snapshot())
    assert renderer.live is None
    text = out.export_text()
    assert f"execution {EXEC}: http://mon/executions/{EXEC}/" in text
    assert "an event" not in text  # the live view shows figures, not the event lines
    assert "(waiting for the runner)" in text or EXEC in text

"""The DAQ simulator, in simulated time (and once tied to a scaled wall clock)."""

from __future__ import annotations

import itertools
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from pydantic import ValidationError

from swf_testbed.daq import DaqConfig, DaqSimulator, DaqSummary, stf_checksum
from swf_testbed.daq.states import StatePair
from swf_testbed.messages import (
    DaqState,
    DaqSubstate,
    EndRun,
    Message,
    RunImminent,
    StfGen,
    parse_message,
)
from swf_testbed.workflows import load_config

S, U = DaqState, DaqSubstate
START = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
RUN_ID = 42

BN = (S.BEAM, U.NOT_READY)
RP = (S.RUN, U.PHYSICS)
RS = (S.RUN, U.STANDBY)


def ev(
    t: float, msg_type: str, state: tuple[DaqState, DaqSubstate]
) -> tuple[float, str, DaqState, DaqSubstate]:
    return (t, msg_type, *state)


DEFAULT_TIMELINE = [
    ev(5.0, "run_imminent", BN),
    ev(12.0, "start_run", RP),
    *(ev(t, "stf_gen", RP) for t in (15.1, 17.1, 19.1, 21.1, 23.1)),
    ev(24.1, "pause_run", RS),
    ev(26.1, "resume_run", RP),
    *(ev(t, "stf_gen", RP) for t in (29.2, 31.2, 33.2, 35.2, 37.2)),
    ev(38.2, "end_run", BN),
]


class Recorder:
    """An emit callback that keeps every message, optionally acting on each."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.on_message: Any = None

    def __call__(self, msg: Message) -> None:
        self.messages.append(msg)
        if self.on_message is not None:
            self.on_message(msg)

    @property
    def stfs(self) -> list[StfGen]:
        return [m for m in self.messages if isinstance(m, StfGen)]

    @property
    def end_run(self) -> EndRun:
        """The last message, taken to be the end_run (the tests check ``types`` for that)."""
        return cast(EndRun, self.messages[-1])

    @property
    def types(self) -> list[str]:
        return [m.msg_type for m in self.messages]


def make(config: DaqConfig | None = None, seed: int = 1234) -> tuple[DaqSimulator, Recorder]:
    rec = Recorder()
    sim = DaqSimulator(
        config or DaqConfig(),
        rec,
        namespace="testns",
        sender="daqsim",
        execution_id="exec-1",
        run_id=RUN_ID,
        seed=seed,
        start_time=START,
    )
    return sim, rec


def approx_events(summary: DaqSummary) -> list[tuple[float, str, DaqState, DaqSubstate]]:
    return [(round(e.sim_time, 6), e.msg_type, e.state, e.substate) for e in summary.events]


# --------------------------------------------------------------------------- full runs


def test_default_run_reproduces_the_configured_timeline() -> None:
    sim, rec = make()
    summary = sim.run()
    assert approx_events(summary) == DEFAULT_TIMELINE
    assert summary.end_reason == "completed"
    assert summary.run_started
    assert summary.stf_count == 10
    assert summary.sim_end_time == pytest.approx(43.2)
    assert summary.timings == pytest.approx(
        {
            "run_imminent": 5.0,
            "ready": 10.0,
            "start_run": 12.0,
            "first_stf": 15.1,
            "last_stf": 37.2,
            "end_run": 38.2,
            "end": 43.2,
        }
    )
    end = rec.messages[-1]
    assert isinstance(end, EndRun) and end.total_stf_files == len(rec.stfs) == 10
    assert sim.state == StatePair(S.BEAM, U.NOT_READY)
    # the messages and the summary agree
    assert rec.types == summary.msg_types
    assert [(m.state, m.substate) for m in rec.messages] == [
        (e.state, e.substate) for e in summary.events
    ]


def test_state_changes_follow_the_run_path() -> None:
    sim, _ = make()
    summary = sim.run()
    assert [(round(t.sim_time, 6), t.event) for t in summary.transitions] == [
        (5.0, "run_imminent"),
        (10.0, "ready"),
        (12.0, "start_run"),
        (24.1, "pause_run"),
        (26.1, "resume_run"),
        (38.2, "end_run"),
    ]


def test_custom_timing_hand_computed() -> None:
    cfg = DaqConfig(
        no_beam_not_ready_delay=1,
        beam_not_ready_delay=2,
        beam_ready_delay=3,
        beam_not_ready_end_delay=1,
        broadcast_delay=0.5,
        stf_interval=1.0,
        stf_generation_time=0.25,
        physics_period_duration=3.0,
        physics_period_count=3,
        standby_duration=0.5,
    )
    sim, _ = make(cfg)
    summary = sim.run()
    assert approx_events(summary) == [
        ev(1.0, "run_imminent", BN),
        ev(6.0, "start_run", RP),
        *(ev(t, "stf_gen", RP) for t in (7.75, 8.75, 9.75)),
        ev(10.25, "pause_run", RS),
        ev(10.75, "resume_run", RP),
        *(ev(t, "stf_gen", RP) for t in (12.5, 13.5, 14.5)),
        ev(15.0, "pause_run", RS),
        ev(15.5, "resume_run", RP),
        *(ev(t, "stf_gen", RP) for t in (17.25, 18.25, 19.25)),
        ev(19.75, "end_run", BN),
    ]
    assert summary.sim_end_time == pytest.approx(20.75)
    assert cfg.expected_stf_total == summary.stf_count == 9


def test_period_shorter_than_interval_still_makes_one_stf() -> None:
    cfg = DaqConfig(physics_period_duration=0.5, stf_interval=2.0, physics_period_count=1)
    assert cfg.stfs_per_period == 1
    sim, rec = make(cfg)
    sim.run()
    assert len(rec.stfs) == 1


# ------------------------------------------------------------------------ stf_count, duration, stop


@pytest.mark.parametrize(
    ("stf_count", "period_count", "pauses"),
    [(3, 2, 0), (5, 2, 0), (10, 1, 1), (12, 2, 2), (1, 0, 0), (23, 0, 4)],
)
def test_stf_count_is_exact_and_continues_periods_as_needed(
    stf_count: int, period_count: int, pauses: int
) -> None:
    sim, rec = make(DaqConfig(stf_count=stf_count, physics_period_count=period_count))
    summary = sim.run()
    assert len(rec.stfs) == stf_count == summary.stf_count
    assert rec.types.count("pause_run") == rec.types.count("resume_run") == pauses
    assert rec.types[-1] == "end_run"
    assert rec.end_run.total_stf_files == stf_count
    assert summary.end_reason == "completed"


def test_stf_count_cuts_the_last_period_short() -> None:
    sim, _ = make(DaqConfig(stf_count=3))
    summary = sim.run()
    assert approx_events(summary) == [
        ev(5.0, "run_imminent", BN),
        ev(12.0, "start_run", RP),
        *(ev(t, "stf_gen", RP) for t in (15.1, 17.1, 19.1)),
        ev(20.1, "end_run", BN),
    ]


def test_fast_processing_default_config_drives_the_simulator() -> None:
    daq = load_config("fast_processing_default").daq
    sim, rec = make(daq)
    sim.run()
    assert len(rec.stfs) == 10
    assert rec.types.count("pause_run") == 1  # 5 STFs a period, so a second period is needed


def test_duration_ends_the_run_cleanly_mid_physics() -> None:
    sim, rec = make()
    summary = sim.run(duration=20.0)
    assert approx_events(summary)[-1] == ev(20.0, "end_run", BN)
    assert summary.times_of("stf_gen") == pytest.approx([15.1, 17.1, 19.1])
    assert rec.end_run.total_stf_files == 3
    assert summary.end_reason == "duration"
    assert summary.sim_end_time == pytest.approx(20.0)


def test_duration_during_standby_ends_from_standby() -> None:
    sim, rec = make()
    summary = sim.run(duration=25.0)
    assert rec.types[-2:] == ["pause_run", "end_run"]
    assert summary.transitions[-1].from_state == StatePair(S.RUN, U.STANDBY)
    assert summary.transitions[-1].to_state == StatePair(S.BEAM, U.NOT_READY)
    assert rec.end_run.total_stf_files == 5


def test_duration_before_ready_sends_end_run_without_start() -> None:
    sim, rec = make()
    summary = sim.run(duration=11.0)  # beam/ready at 10, start_run would be at 12
    assert rec.types == ["run_imminent", "end_run"]
    assert summary.transitions[-1].event == "not_ready"
    assert rec.end_run.total_stf_files == 0


def test_duration_before_run_imminent_sends_nothing() -> None:
    sim, rec = make()
    summary = sim.run(duration=3.0)
    assert rec.messages == []
    assert not summary.run_started
    assert summary.end_reason == "duration"
    assert summary.sim_end_time == pytest.approx(3.0)


def test_unbounded_run_with_duration() -> None:
    sim, rec = make(DaqConfig(physics_period_count=0))
    summary = sim.run(duration=100.0)
    assert summary.end_reason == "duration"
    assert rec.types.count("pause_run") >= 5
    assert rec.end_run.total_stf_files == len(rec.stfs)


def test_stop_from_emit_ends_with_the_true_total() -> None:
    sim, rec = make()
    rec.on_message = lambda m: sim.stop() if isinstance(m, StfGen) and m.sequence == 3 else None
    summary = sim.run()
    assert approx_events(summary)[-2:] == [ev(19.1, "stf_gen", RP), ev(19.1, "end_run", BN)]
    assert rec.end_run.total_stf_files == 3
    assert summary.end_reason == "stopped"
    assert sim.state == StatePair(S.BEAM, U.NOT_READY)
    assert summary.sim_end_time == pytest.approx(19.1)  # no trailing beam/not_ready delay


def test_stop_before_start_ends_at_once() -> None:
    sim, rec = make()
    sim.stop()
    summary = sim.run()
    assert rec.messages == [] and summary.end_reason == "stopped"


def test_stop_is_idempotent_and_run_is_once() -> None:
    sim, rec = make(DaqConfig(stf_count=2))
    sim.stop()
    sim.stop()
    sim.run()
    with pytest.raises(RuntimeError, match="runs once"):
        sim.run()


def test_pace_is_called_before_each_stf_and_can_stop() -> None:
    sim, rec = make()
    calls: list[int] = []

    def pace() -> None:
        calls.append(len(rec.stfs))
        if len(calls) == 4:
            sim.stop()  # stop while "waiting for consumers": STF 4 is never announced

    summary = sim.run(pace=pace)
    assert calls == [0, 1, 2, 3]
    assert summary.stf_count == 3
    assert rec.types[-1] == "end_run" and rec.end_run.total_stf_files == 3


def test_stop_from_another_thread_in_fast_mode() -> None:
    sim, rec = make(DaqConfig(physics_period_count=0))
    result: list[DaqSummary] = []
    runner = threading.Thread(
        target=lambda: result.append(sim.run(pace=lambda: time.sleep(0.0005)))
    )
    runner.start()
    deadline = time.monotonic() + 10
    while len(rec.stfs) < 20 and time.monotonic() < deadline:
        time.sleep(0.005)
    sim.stop()
    runner.join(10)
    assert not runner.is_alive()
    summary = result[0]
    assert summary.end_reason == "stopped"
    assert rec.types[-1] == "end_run"
    assert rec.end_run.total_stf_files == len(rec.stfs) == summary.stf_count >= 20


# ------------------------------------------------------------------------ messages and STF metadata


def test_every_message_validates_and_carries_identity() -> None:
    sim, rec = make(DaqConfig(physics_period_count=3))
    sim.run()
    assert rec.messages
    for msg in rec.messages:
        parsed = parse_message(msg.to_bytes())
        assert parsed == msg
        assert type(parsed) is type(msg)
        assert (msg.namespace, msg.sender, msg.execution_id, msg.run_id) == (
            "testns",
            "daqsim",
            "exec-1",
            RUN_ID,
        )
    assert len({m.msg_id for m in rec.messages}) == len(rec.messages)
    imminent = cast(RunImminent, rec.messages[0])  # a run starts with its run_imminent
    assert imminent.run_conditions["expected_stf_files"] == 15


def test_stf_metadata_is_realistic_and_consistent() -> None:
    cfg = DaqConfig(physics_period_count=6)
    sim, rec = make(cfg)
    summary = sim.run()
    stfs = rec.stfs
    assert len(stfs) == 30
    names = [s.filename for s in stfs]
    assert len(set(names)) == len(names)
    assert [s.sequence for s in stfs] == list(range(1, 31))
    stf_times = summary.times_of("stf_gen")
    for stf, announced in zip(stfs, stf_times, strict=True):
        assert re.fullmatch(rf"swf\.{RUN_ID:06d}\.{stf.sequence:06d}\.stf", stf.filename)
        assert re.fullmatch(r"[0-9a-f]{8}", stf.checksum)
        assert stf.checksum == stf_checksum(stf.filename, stf.size_bytes)
        assert 0.7 * cfg.stf_size_mean_bytes < stf.size_bytes < 1.3 * cfg.stf_size_mean_bytes
        assert 900 <= stf.tf_count <= 1100
        assert stf.end - stf.start == timedelta(seconds=cfg.stf_interval)
        # the data ended generation_time before the announcement, on the simulated clock
        assert stf.end == START + timedelta(seconds=round(announced - cfg.stf_generation_time, 6))
    for prev, nxt in itertools.pairwise(stfs):
        assert prev.start < prev.end <= nxt.start < nxt.end
    assert stfs[0].start == START + timedelta(seconds=13)
    assert len({s.size_bytes for s in stfs}) > 1  # there is a spread


def test_same_seed_same_run_other_seed_other_sizes() -> None:
    def metadata(seed: int) -> list[tuple[Any, ...]]:
        sim, rec = make(seed=seed)
        sim.run()
        return [
            (s.filename, s.size_bytes, s.checksum, s.tf_count, s.start, s.end) for s in rec.stfs
        ]

    assert metadata(7) == metadata(7)
    assert [m[1] for m in metadata(7)] != [m[1] for m in metadata(8)]


def test_dated_filenames() -> None:
    sim, rec = make(DaqConfig(filename_style="dated"))
    sim.run()
    names = [s.filename for s in rec.stfs]
    assert len(set(names)) == len(names) == 10
    assert names[0] == "swf.20260301.120013.run.physics.stf"
    for name in names:
        assert re.fullmatch(r"swf\.\d{8}\.\d{6}\.run\.physics\.stf", name)


def test_dated_filenames_need_one_second_stfs() -> None:
    with pytest.raises(ValidationError, match="one-second resolution"):
        DaqConfig(filename_style="dated", stf_interval=0.5)


def test_config_rejects_unknown_and_bad_fields() -> None:
    with pytest.raises(ValidationError):
        DaqConfig(stf_intervall=1.0)  # type: ignore[call-arg]  # the misspelling is the test
    with pytest.raises(ValidationError):
        DaqConfig(stf_interval=0)
    with pytest.raises(ValidationError):
        DaqConfig(physics_period_count=-1)


def test_bad_identity_and_arguments() -> None:
    with pytest.raises(ValueError, match="namespace"):
        DaqSimulator(
            DaqConfig(), print, namespace="bad name", sender="s", execution_id="e", run_id=1
        )
    with pytest.raises(ValueError, match="time zone"):
        DaqSimulator(
            DaqConfig(),
            print,
            namespace="n",
            sender="s",
            execution_id="e",
            run_id=1,
            start_time=datetime(2026, 1, 1),
        )
    sim, _ = make()
    with pytest.raises(ValueError, match="time_scale"):
        sim.run(time_scale=-1)


# --------------------------------------------------------------------------- wall clock


def test_scaled_wall_clock_run_matches_simulated_run() -> None:
    """Same order and simulated times; wall-clock speed is not asserted."""
    sim_run, _ = make()
    simulated = sim_run.run()
    wall, rec = make()
    scaled = wall.run(time_scale=1000)
    assert approx_events(scaled) == approx_events(simulated) == DEFAULT_TIMELINE
    assert scaled.time_scale == 1000
    assert [m.filename for m in rec.stfs] == [f"swf.{RUN_ID:06d}.{i:06d}.stf" for i in range(1, 11)]


def test_stop_from_another_thread_in_wall_clock_mode() -> None:
    sim, rec = make(DaqConfig(physics_period_count=0))
    two_stfs = threading.Event()
    rec.on_message = lambda m: two_stfs.set() if isinstance(m, StfGen) and m.sequence == 2 else None
    result: list[DaqSummary] = []
    runner = threading.Thread(target=lambda: result.append(sim.run(time_scale=50)))
    runner.start()
    assert two_stfs.wait(20)
    sim.stop()
    runner.join(20)
    assert not runner.is_alive()
    assert result[0].end_reason == "stopped"
    assert rec.types[-1] == "end_run"
    assert rec.end_run.total_stf_files == len(rec.stfs) >= 2

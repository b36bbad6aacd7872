"""The DAQ simulator: a SimPy discrete-event model of one run.

The simulator is transport-agnostic: it builds the typed run messages of
:mod:`swf_testbed.messages` and hands each one to an ``emit`` callback. It
changes state only through :class:`~swf_testbed.daq.states.StateMachine`, so it
can make legal transitions only.

Timeline of a run (``t`` is simulated seconds, ``I`` = ``stf_interval``,
``G`` = ``stf_generation_time``, ``B`` = ``broadcast_delay``)::

    t = 0                          no_beam/not_ready
    + no_beam_not_ready_delay      beam/not_ready      run_imminent
    + beam_not_ready_delay         beam/ready          (no message)
    + beam_ready_delay             run/physics         start_run
    physics period (repeated):
        data starts B after start_run / resume_run, at T0
        STF k (k = 1..n) holds the data of [T0+(k-1)·I, T0+k·I]
        and is announced (stf_gen) G after its data ends, at T0+k·I+G
        n = floor(physics_period_duration / I), at least 1
    + B after the period's last STF  run/standby       pause_run
    + standby_duration             run/physics         resume_run
    ... after the last period:
    + B after the last STF         beam/not_ready      end_run
    + beam_not_ready_end_delay     the simulation ends (still beam/not_ready)

With the defaults: run_imminent at 5, start_run at 12, STFs at 15.1 … 23.1,
pause_run at 24.1, resume_run at 26.1, STFs at 29.2 … 37.2, end_run at 38.2,
end at 43.2.

The number of physics periods is ``physics_period_count`` (0 = until stopped),
unless ``stf_count`` is set (> 0): then the run produces exactly that many
STFs, as many physics periods as that takes, the last period cut short after
its last STF.

STF ``start``/``end`` are on the simulated clock: simulated time 0 is the
wall-clock ``start_time`` (UTC) given to the simulator, and simulated second
``t`` is ``start_time + t``. The message ``timestamp`` is the real time the
message was built (when it was sent), which runs ahead of or behind the
simulated clock depending on the time scale.

Stopping: :meth:`DaqSimulator.stop` (from any thread) or the ``duration``
limit cut the current wait short at once, in simulated time. An STF whose file
was not announced yet is dropped; ``end_run`` then carries the number of STFs
actually announced, and the DAQ goes back to beam/not_ready. A stop before
``run_imminent`` ends the simulation with no message at all (there is no run
to close).
"""

from __future__ import annotations

import math
import random
import re
import threading
import zlib
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

import simpy
import simpy.rt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from swf_testbed.daq.states import (
    BEAM_NOT_READY,
    BEAM_READY,
    NO_BEAM,
    RUN_PHYSICS,
    RUN_STANDBY,
    StateMachine,
    StatePair,
)
from swf_testbed.messages import (
    NAME_PATTERN,
    DaqState,
    DaqSubstate,
    EndRun,
    Message,
    PauseRun,
    ResumeRun,
    RunImminent,
    RunMessage,
    StartRun,
    StfGen,
)

__all__ = [
    "DaqConfig",
    "DaqSimulator",
    "DaqSummary",
    "EmittedEvent",
    "TransitionRecord",
    "stf_checksum",
    "stf_filename",
]

_EPS = 1e-9
_POLL_WALL_SECONDS = 0.05
"""In wall-clock mode, how often (real seconds) a stop() from another thread is looked for."""


# --------------------------------------------------------------------------- configuration


class DaqConfig(BaseModel):
    """Timing and STF parameters of the simulated DAQ (seconds, bytes)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # state machine timing
    no_beam_not_ready_delay: float = Field(5.0, ge=0, description="no_beam, then run_imminent")
    beam_not_ready_delay: float = Field(5.0, ge=0, description="beam/not_ready, then ready")
    beam_ready_delay: float = Field(2.0, ge=0, description="beam/ready, then start_run")
    beam_not_ready_end_delay: float = Field(5.0, ge=0, description="beam/not_ready after end_run")
    broadcast_delay: float = Field(
        1.0,
        ge=0,
        description="start/resume broadcast to first data; last STF to pause/end broadcast",
    )
    # STF stream
    stf_interval: float = Field(2.0, gt=0, description="seconds of data per STF")
    stf_generation_time: float = Field(0.1, ge=0, description="end of an STF's data to stf_gen")
    physics_period_duration: float = Field(10.0, gt=0, description="data seconds per period")
    # upper bounds on counts and sizes: beyond them a value is a typo (and would overflow the
    # monitor's columns)
    physics_period_count: int = Field(
        2, ge=0, le=1_000_000, description="physics periods; 0 = until stopped"
    )
    standby_duration: float = Field(2.0, ge=0, description="run/standby between physics periods")
    stf_count: int = Field(
        0, ge=0, le=1_000_000, description="exact STFs per run (periods as needed); 0 = unset"
    )
    # STF metadata
    stf_size_mean_bytes: int = Field(2_000_000_000, gt=0, le=10**13)
    stf_size_sigma_fraction: float = Field(0.05, ge=0, le=1, description="spread / mean")
    tf_per_stf: int = Field(1000, ge=1, le=10**9, description="mean number of time frames per STF")
    tf_per_stf_sigma_fraction: float = Field(0.01, ge=0, le=1, description="spread / mean")
    filename_style: Literal["run", "dated"] = Field(
        "run",
        description="run: swf.<run>.<seq>.stf; dated: swf.<date>.<time>.<state>.<substate>.stf",
    )

    @model_validator(mode="after")
    def _dated_names_unique(self) -> DaqConfig:
        if self.filename_style == "dated" and self.stf_interval < 1.0:
            raise ValueError(
                "filename_style 'dated' has one-second resolution and needs stf_interval >= 1 "
                f"(got {self.stf_interval}); use filename_style 'run'"
            )
        return self

    @property
    def stfs_per_period(self) -> int:
        """Whole STFs in one physics period (at least one)."""
        return max(1, math.floor(self.physics_period_duration / self.stf_interval + _EPS))

    @property
    def expected_stf_total(self) -> int | None:
        """STFs a run produces when not stopped early; None when it runs until stopped."""
        if self.stf_count > 0:
            return self.stf_count
        if self.physics_period_count > 0:
            return self.stfs_per_period * self.physics_period_count
        return None


# --------------------------------------------------------------------------- STF metadata


def stf_filename(
    style: str,
    *,
    run_id: int,
    sequence: int,
    start: datetime,
    state: DaqState | str,
    substate: DaqSubstate | str,
) -> str:
    """The STF file name: ``swf.<run:06d>.<seq:06d>.stf`` or the dated form."""
    if style == "run":
        return f"swf.{run_id:06d}.{sequence:06d}.stf"
    if style == "dated":
        s = state.value if isinstance(state, DaqState) else state
        u = substate.value if isinstance(substate, DaqSubstate) else substate
        return f"swf.{start.astimezone(UTC):%Y%m%d.%H%M%S}.{s}.{u}.stf"
    raise ValueError(f"unknown STF filename style {style!r}; known: run, dated")


def stf_checksum(filename: str, size_bytes: int) -> str:
    """adler32 (8 lowercase hex digits) of the simulated file's content.

    No bytes are written, so the content stands in as ``<filename>:<size>``:
    deterministic, so any agent can recompute and check it.
    """
    return f"{zlib.adler32(f'{filename}:{size_bytes}'.encode()) & 0xFFFFFFFF:08x}"


# --------------------------------------------------------------------------- summary


class EmittedEvent(NamedTuple):
    """One emitted message, as the simulation saw it."""

    sim_time: float
    msg_type: str
    state: DaqState
    substate: DaqSubstate


class TransitionRecord(NamedTuple):
    sim_time: float
    from_state: StatePair
    to_state: StatePair
    event: str


EndReason = Literal["", "completed", "stopped", "duration"]


@dataclass
class DaqSummary:
    """What a run did, for tests, logs and progress reports."""

    run_id: int
    execution_id: str
    seed: int
    start_time: datetime | None = None
    time_scale: float = 0.0
    stf_count: int = 0
    run_started: bool = False
    """True once run_imminent was sent (and so end_run will be)."""
    end_reason: EndReason = ""
    """Empty while running; then completed, stopped (stop()) or duration."""
    sim_end_time: float | None = None
    events: list[EmittedEvent] = field(default_factory=list)
    transitions: list[TransitionRecord] = field(default_factory=list)

    def times_of(self, msg_type: str) -> list[float]:
        return [e.sim_time for e in self.events if e.msg_type == msg_type]

    @property
    def msg_types(self) -> list[str]:
        return [e.msg_type for e in self.events]

    @property
    def timings(self) -> dict[str, float]:
        """Simulated times of the landmarks of the run (absent when they did not happen)."""
        out: dict[str, float] = {}
        for key in ("run_imminent", "start_run", "end_run"):
            times = self.times_of(key)
            if times:
                out[key] = times[0]
        stfs = self.times_of("stf_gen")
        if stfs:
            out["first_stf"] = stfs[0]
            out["last_stf"] = stfs[-1]
        for t in self.transitions:
            if t.to_state == BEAM_READY:
                out["ready"] = t.sim_time
                break
        if self.sim_end_time is not None:
            out["end"] = self.sim_end_time
        return out


# --------------------------------------------------------------------------- simulator


class _Stopped(Exception):
    """Internal: a wait was cut short by a stop."""


class DaqSimulator:
    """One simulated DAQ run, driving ``emit`` with run messages.

    Typical use by a workflow runner::

        sim = DaqSimulator(merged.daq, publish, namespace=ns, sender="daqsim",
                           execution_id=eid, run_id=run)
        summary = sim.run(time_scale=1, duration=120)     # blocks
        # from another thread: sim.stop()

    A simulator runs once; make a new one for the next run.
    """

    def __init__(
        self,
        config: DaqConfig,
        emit: Callable[[Message], None],
        *,
        namespace: str,
        sender: str,
        execution_id: str,
        run_id: int,
        seed: int | None = None,
        start_time: datetime | None = None,
        run_conditions: Mapping[str, Any] | None = None,
    ) -> None:
        for label, value in (("namespace", namespace), ("sender", sender)):
            if not re.fullmatch(NAME_PATTERN, value):
                raise ValueError(f"{label} {value!r} must match {NAME_PATTERN}")
        if not execution_id:
            raise ValueError("execution_id must not be empty")
        if run_id < 0:
            raise ValueError(f"run_id must be >= 0, got {run_id}")
        if start_time is not None and (start_time.tzinfo is None or start_time.utcoffset() is None):
            raise ValueError("start_time must carry a time zone (UTC)")
        self.config = config
        self._emit = emit
        self.namespace = namespace
        self.sender = sender
        self.execution_id = execution_id
        self.run_id = run_id
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        self._rng = random.Random(self.seed)
        self._start_time = start_time.astimezone(UTC) if start_time is not None else None
        self._run_conditions = dict(run_conditions or {})
        self.machine = StateMachine()
        self.summary = DaqSummary(run_id=run_id, execution_id=execution_id, seed=self.seed)
        self._stop_flag = threading.Event()
        self._stop_reason: EndReason = "stopped"
        self._stop_lock = threading.Lock()
        self._env: simpy.Environment | None = None
        self._stop_event: simpy.Event | None = None
        self._pace: Callable[[], None] | None = None
        self._ran = False

    # ------------------------------------------------------------------ public

    @property
    def state(self) -> StatePair:
        return self.machine.current

    @property
    def stf_count(self) -> int:
        return self.summary.stf_count

    @property
    def stopping(self) -> bool:
        return self._stop_flag.is_set()

    def stop(self) -> None:
        """End the run cleanly at the next step; safe from any thread, any number of times."""
        self._request_stop("stopped")

    def run(
        self,
        *,
        time_scale: float = 0.0,
        duration: float = 0.0,
        pace: Callable[[], None] | None = None,
    ) -> DaqSummary:
        """Run the simulation to its end and return the summary.

        ``time_scale``: 0 runs in pure simulated time, as fast as possible
        (a ``simpy.Environment``); N > 0 ties simulated time to the wall clock,
        N simulated seconds per real second (1 = real time).
        ``duration``: simulated seconds after which the run is stopped cleanly
        (end_run sent); 0 = until done.
        ``pace``: called before each STF is announced; it may block (e.g. until
        consumers keep up), which is how a ``time_scale`` 0 run is paced.
        """
        if self._ran:
            raise RuntimeError("a DaqSimulator runs once; make a new one for the next run")
        if not time_scale >= 0 or math.isinf(time_scale):
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale}")
        if not duration >= 0 or math.isinf(duration):
            raise ValueError(f"duration must be a finite number >= 0, got {duration}")
        self._ran = True
        self._pace = pace
        if self._start_time is None:
            self._start_time = datetime.now(UTC)
        self.summary.start_time = self._start_time
        self.summary.time_scale = time_scale

        env: simpy.Environment
        if time_scale > 0:
            env = simpy.rt.RealtimeEnvironment(factor=1.0 / time_scale, strict=False)
        else:
            env = simpy.Environment()
        self._env = env
        self._stop_event = env.event()
        main = env.process(self._main())
        if duration > 0:
            env.process(self._duration_limit(duration))
        if time_scale > 0:
            env.process(self._poll_stop(_POLL_WALL_SECONDS * time_scale))
            assert isinstance(env, simpy.rt.RealtimeEnvironment)
            env.sync()
        # Step by hand rather than env.run(): between steps a stop() from
        # another thread is turned into the SimPy event the run waits on.
        while not main.processed:
            self._forward_stop()
            env.step()
        self.summary.sim_end_time = round(env.now, 6)
        if not self.summary.end_reason:  # stopped before the run was announced
            self.summary.end_reason = self._stop_reason if self.stopping else "completed"
        return self.summary

    # ------------------------------------------------------------------ stop plumbing

    def _request_stop(self, reason: EndReason) -> None:
        with self._stop_lock:
            if not self._stop_flag.is_set():
                self._stop_reason = reason
                self._stop_flag.set()

    def _forward_stop(self) -> None:
        """On the simulation thread: make a requested stop visible to SimPy waits."""
        event = self._stop_event
        if self._stop_flag.is_set() and event is not None and not event.triggered:
            event.succeed()

    def _duration_limit(self, duration: float) -> Generator[simpy.Event, Any, None]:
        assert self._env is not None
        yield self._env.timeout(duration)
        self._request_stop("duration")
        self._forward_stop()

    def _poll_stop(self, period: float) -> Generator[simpy.Event, Any, None]:
        """Wall-clock mode only: wake up regularly so a stop() is seen promptly."""
        assert self._env is not None
        while True:
            yield self._env.timeout(period)

    def _wait(self, delay: float) -> Generator[simpy.Event, Any, None]:
        """Wait ``delay`` simulated seconds; raise :class:`_Stopped` if a stop cuts it short."""
        assert self._env is not None and self._stop_event is not None
        if self.stopping:
            raise _Stopped
        if delay > _EPS:
            yield self._env.timeout(delay) | self._stop_event
        if self.stopping:
            raise _Stopped

    def _wait_until(self, sim_time: float) -> Generator[simpy.Event, Any, None]:
        assert self._env is not None
        yield from self._wait(max(0.0, sim_time - self._env.now))

    # ------------------------------------------------------------------ the run

    def _now(self) -> float:
        assert self._env is not None
        return round(self._env.now, 6)

    def _clock(self, sim_time: float) -> datetime:
        """Simulated time → wall-clock datetime (UTC) on the simulated clock."""
        assert self._start_time is not None
        return self._start_time + timedelta(seconds=round(sim_time, 6))

    def _goto(self, target: StatePair) -> None:
        before = self.machine.current
        event = self.machine.transition(*target)
        self.summary.transitions.append(TransitionRecord(self._now(), before, target, event))

    def _send(self, cls: type[RunMessage], **fields: Any) -> None:
        state, substate = self.machine.current
        msg = cls(
            namespace=self.namespace,
            sender=self.sender,
            execution_id=self.execution_id,
            run_id=self.run_id,
            state=state,
            substate=substate,
            **fields,
        )
        self._emit(msg)
        self.summary.events.append(EmittedEvent(self._now(), msg.msg_type, state, substate))

    def _conditions(self) -> dict[str, Any]:
        cfg = self.config
        expected = cfg.expected_stf_total
        base: dict[str, Any] = {
            "sim_start": self._clock(0.0).isoformat(),
            "time_scale": self.summary.time_scale,
            "seed": self.seed,
            "stf_interval_s": cfg.stf_interval,
            "stf_size_mean_bytes": cfg.stf_size_mean_bytes,
            "tf_per_stf": cfg.tf_per_stf,
            "physics_period_count": cfg.physics_period_count,
            "physics_period_duration_s": cfg.physics_period_duration,
            "stf_count": cfg.stf_count,
            "expected_stf_files": expected,
            "filename_style": cfg.filename_style,
        }
        base.update(self._run_conditions)
        return base

    def _main(self) -> Generator[simpy.Event, Any, None]:
        cfg = self.config
        # Before the run exists a stop just ends the simulation: nothing to close.
        try:
            yield from self._wait(cfg.no_beam_not_ready_delay)
        except _Stopped:
            return
        assert self.machine.current == NO_BEAM
        self._goto(BEAM_NOT_READY)
        self._send(RunImminent, run_conditions=self._conditions())
        self.summary.run_started = True
        try:
            yield from self._wait(cfg.beam_not_ready_delay)
            self._goto(BEAM_READY)
            yield from self._wait(cfg.beam_ready_delay)
            self._goto(RUN_PHYSICS)
            self._send(StartRun)
            yield from self._physics()
        except _Stopped:
            pass
        self._end_run()
        if not self.stopping:
            try:
                yield from self._wait(cfg.beam_not_ready_end_delay)
            except _Stopped:
                pass

    def _run_complete(self, periods_done: int) -> bool:
        cfg = self.config
        if cfg.stf_count > 0:
            return self.summary.stf_count >= cfg.stf_count
        if cfg.physics_period_count > 0:
            return periods_done >= cfg.physics_period_count
        return False

    def _physics(self) -> Generator[simpy.Event, Any, None]:
        """Physics periods separated by standby, until the run is complete (or stopped)."""
        cfg = self.config
        assert self._env is not None
        period = 0
        while True:
            period += 1
            n = cfg.stfs_per_period
            if cfg.stf_count > 0:
                n = min(n, cfg.stf_count - self.summary.stf_count)
            yield from self._wait(cfg.broadcast_delay)
            t0 = self._env.now
            for k in range(1, n + 1):
                data_start = t0 + (k - 1) * cfg.stf_interval
                data_end = t0 + k * cfg.stf_interval
                yield from self._wait_until(data_end + cfg.stf_generation_time)
                if self._pace is not None:
                    self._pace()
                    if self.stopping:
                        raise _Stopped
                self._announce_stf(data_start, data_end)
            yield from self._wait(cfg.broadcast_delay)
            if self._run_complete(period):
                return
            self._goto(RUN_STANDBY)
            reason = f"standby between physics periods {period} and {period + 1}"
            self._send(PauseRun, reason=reason)
            yield from self._wait(cfg.standby_duration)
            self._goto(RUN_PHYSICS)
            self._send(ResumeRun)

    def _announce_stf(self, data_start: float, data_end: float) -> None:
        cfg = self.config
        sequence = self.summary.stf_count + 1
        state, substate = self.machine.current
        start = self._clock(data_start)
        end = self._clock(data_end)
        mean_size, mean_tf = cfg.stf_size_mean_bytes, cfg.tf_per_stf
        size = max(1, round(self._rng.gauss(mean_size, cfg.stf_size_sigma_fraction * mean_size)))
        tf_count = max(1, round(self._rng.gauss(mean_tf, cfg.tf_per_stf_sigma_fraction * mean_tf)))
        name = stf_filename(
            cfg.filename_style,
            run_id=self.run_id,
            sequence=sequence,
            start=start,
            state=state,
            substate=substate,
        )
        self._send(
            StfGen,
            filename=name,
            sequence=sequence,
            size_bytes=size,
            checksum=stf_checksum(name, size),
            tf_count=tf_count,
            start=start,
            end=end,
        )
        self.summary.stf_count = sequence

    def _end_run(self) -> None:
        if self.machine.current in (RUN_PHYSICS, RUN_STANDBY, BEAM_READY):
            self._goto(BEAM_NOT_READY)
        assert self.machine.current == BEAM_NOT_READY
        self._send(EndRun, total_stf_files=self.summary.stf_count)
        self.summary.end_reason = self._stop_reason if self.stopping else "completed"

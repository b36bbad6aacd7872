"""Following a session to its end: when to stop waiting, and by whose figures (no display here).

:class:`Follow` is the state of ``swf-testbed run`` between the request and
the end: the deadlines (for the runner's reply, for a stop, for the agents
to drain the run), the events already shown, the monitor's figures once the
broker connection was lost. Each :meth:`Follow.tick` waits a little, looks
at the session, and returns a :class:`Tick`: what to show and, at the end,
why it ended. The renderer (:mod:`swf_testbed.cli.run_view`) shows ticks.

The DAQ run ends before the agents have handled all it produced: a completed
execution is followed on until they have (:func:`drained`), or the drain
timeout, or (in a testbed without a processing chain) until nothing moved for
:data:`DRAIN_SETTLE_S`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from swf_testbed.orchestrator.monitor_api import ExecutionFigures, MonitorApi
from swf_testbed.orchestrator.session import ProgressSnapshot, ProgressStatus, WorkflowSession
from swf_testbed.orchestrator.silence import SilenceWatch

DRAIN_CONFIRM_S = 0.5
"""Drained by the counts seen must hold this long with nothing moving: the sample of a last STF
is sent by fast monitoring beside (not after) its processing, and may be a moment behind."""
DRAIN_SETTLE_S = 5.0
"""After the run, in a testbed without a processing chain: how long to wait for stragglers."""
MONITOR_CHECK_S = 2.0
"""How often the monitor's record is asked while draining after the broker connection was lost."""
TICK_S = 0.2
"""How long one tick waits for the session to end."""
SILENCE_CHECK_S = 1.0
"""How often the agents' heartbeats are looked at for silence."""


def figures_of(snap: ProgressSnapshot) -> ExecutionFigures:
    """The snapshot's own processed, slice and unsliced-sample counts."""
    return ExecutionFigures(
        stf_processed=snap.stf_processed,
        slices=snap.slices,
        slices_done=snap.slices_done,
        slices_failed=snap.slices_failed,
        samples_unsliced=snap.samples_unsliced,
    )


def drained(snap: ProgressSnapshot, figures: ExecutionFigures | None = None) -> bool:
    """Every STF the run produced is processed and every slice sent has its result.

    ``figures``: processed / slice counts to judge by instead of the snapshot's (the monitor's);
    they also tell the samples that have no slice yet, which count once the run has slices at all
    (a sample whose message a fast-processing agent missed is never sliced: its slices are not late
    but lost, and they are in no slice count).
    """
    f = figures_of(snap) if figures is None else figures
    unsliced = f.samples_unsliced if f.slices else 0
    return (
        f.stf_processed >= snap.produced
        and f.slices_done + f.slices_failed >= f.slices
        and not unsliced
    )


class End(StrEnum):
    """Why following stopped."""

    ENDED = "ended"  # the execution ended (and drained, or the wait for it is over)
    STOP_TIMEOUT = "stop_timeout"  # stopped from here, and no workflow_completed came
    NO_REPLY = "no_reply"  # no runner answered the request


@dataclass(frozen=True)
class Tick:
    """What one look at the session found: to show, and whether it is over."""

    snapshot: ProgressSnapshot
    events: list[str]  # session events not returned by an earlier tick
    announce: bool  # the execution id is known for the first time
    stop_requested: bool  # stop_workflow was sent in this tick
    end: End | None = None
    alerts: tuple[str, ...] = ()  # agents gone silent or back since the last tick


class Follow:
    """The state of following one session (deadlines, drain, the monitor's record)."""

    def __init__(
        self,
        session: WorkflowSession,
        monitor: MonitorApi,
        *,
        reply_timeout: float,
        stop_timeout: float,
        drain_timeout: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        tick_s: float = TICK_S,
    ) -> None:
        self.session = session
        self.monitor = monitor
        self.reply_timeout = reply_timeout
        self.stop_timeout = stop_timeout
        self.drain_timeout = drain_timeout
        self.clock = clock
        self.tick_s = tick_s
        self.reply_deadline = clock() + reply_timeout
        self.stop_deadline: float | None = None
        self.drain_deadline: float | None = None
        self.announced = False
        self.events_seen = 0
        self._last_moved, self._last_change = -1, clock()
        self._reconnects_at_start = session.listener.client.reconnects
        self.recorded: ExecutionFigures | None = None
        """The monitor's figures, once the broker connection was lost."""
        self._last_check = float("-inf")
        self.silence = SilenceWatch(session.listener.beats)
        """Agents that went silent during the run (and came back), by their heartbeats."""
        self._last_silence_check = float("-inf")

    @property
    def connection_lost(self) -> bool:
        """The broker connection dropped during the run: our counts miss what was sent meanwhile."""
        return self.session.listener.client.reconnects > self._reconnects_at_start

    # ------------------------------------------------------------------ one step

    def tick(self, interrupted: bool) -> Tick:
        end = None
        if self.session.done.wait(self.tick_s):
            end = self._after_end(self.session.snapshot(), interrupted)
        now = self.clock()
        snap = self.session.snapshot()
        events = list(self.session.events)
        new_events, self.events_seen = events[self.events_seen :], len(events)
        announce = not self.announced and snap.execution_id is not None
        self.announced = self.announced or announce
        stop_requested = False
        if end is None and interrupted:
            stop_requested, end = self._interrupt(now)
        if end is None and not self.session.started.is_set() and now > self.reply_deadline:
            end = End.NO_REPLY
        alerts: tuple[str, ...] = ()
        if now - self._last_silence_check >= SILENCE_CHECK_S:
            self._last_silence_check = now
            alerts = tuple(self.silence.check(self.session.listener.client.connected))
        return Tick(snap, new_events, announce, stop_requested, end, alerts)

    def _after_end(self, snap: ProgressSnapshot, interrupted: bool) -> End | None:
        """The session ended: over now, or once the agents have drained the run (None: not yet)."""
        if snap.status is not ProgressStatus.COMPLETED or interrupted:
            return End.ENDED
        now = self.clock()
        if snap.moved != self._last_moved:
            self._last_moved, self._last_change = snap.moved, now
        if self._drained_now(snap) and now - self._last_change >= DRAIN_CONFIRM_S:
            return End.ENDED
        if self.drain_deadline is None:
            self.drain_deadline = now + self.drain_timeout
        settled = not snap.has_chain and now - self._last_change > DRAIN_SETTLE_S
        return End.ENDED if now > self.drain_deadline or settled else None

    def _drained_now(self, snap: ProgressSnapshot) -> bool:
        if not self.connection_lost:
            return drained(snap)
        # our own counts are not to be trusted now: only the monitor's record can end the wait early
        if self.clock() - self._last_check >= MONITOR_CHECK_S:
            self._last_check = self.clock()
            self.refresh_record(snap)
        return self.recorded is not None and drained(snap, self.recorded)

    def _interrupt(self, now: float) -> tuple[bool, End | None]:
        """Ctrl+C: stop the execution (once it has an id); give up after the stop timeout."""
        sent = False
        if not self.session.stop_sent:
            if self.session.stop():
                sent = True
                self.stop_deadline = now + self.stop_timeout
            elif self.stop_deadline is None:
                self.stop_deadline = now + min(
                    self.reply_timeout, 10.0
                )  # stop it once it has an id
        if self.stop_deadline is not None and now > self.stop_deadline:
            return sent, End.STOP_TIMEOUT
        return sent, None

    # ------------------------------------------------------------------ the end

    def refresh_record(self, snap: ProgressSnapshot) -> None:
        if snap.execution_id:
            self.recorded = self.monitor.execution_figures(snap.execution_id) or self.recorded

    def final_figures(self, snap: ProgressSnapshot) -> tuple[ExecutionFigures, bool]:
        """The figures to report the run by, and whether they are the monitor's record.

        After a lost connection the monitor's record (asked once more now) wins
        over our own counts.
        """
        if self.connection_lost:
            self.refresh_record(snap)
            if self.recorded is not None:
                return self.recorded, True
        return figures_of(snap), False

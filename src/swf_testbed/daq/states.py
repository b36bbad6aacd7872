"""The DAQ (E0–E1) state machine: legal states and the transitions between them.

A DAQ state is a pair ``(state, substate)``. Only the pairs in
:data:`LEGAL_STATES` exist, and only the moves in :data:`TRANSITIONS` are
allowed; everything else raises :class:`IllegalTransition`. Both are plain
tables so that the whole machine can be read (and tested) at a glance.

The run path::

    no_beam/not_ready ──run_imminent──▶ beam/not_ready ──ready──▶ beam/ready
        ──start_run──▶ run/physics ⇄ run/standby (pause_run / resume_run)
        ──end_run──▶ beam/not_ready

Around it: the beam can be lost (beam/not_ready → no_beam/not_ready), a
readiness can be withdrawn before a run starts (beam/ready → beam/not_ready),
calibration and test modes are entered from and left to a not_ready state of
no_beam or beam, and the DAQ powers off only from a not_ready state (and
powers back on into no_beam/not_ready).
"""

from __future__ import annotations

from typing import NamedTuple

from swf_testbed.messages import DaqState, DaqSubstate

__all__ = [
    "LEGAL_STATES",
    "TRANSITIONS",
    "IllegalState",
    "IllegalTransition",
    "StateMachine",
    "StatePair",
    "allowed_targets",
    "format_state",
    "reachable",
]


class StatePair(NamedTuple):
    """One DAQ state: the state and its readiness substate."""

    state: DaqState
    substate: DaqSubstate

    def __str__(self) -> str:
        return f"{self.state.value}/{self.substate.value}"


def format_state(state: DaqState | str, substate: DaqSubstate | str) -> str:
    """``state/substate`` as people write it."""
    s = state.value if isinstance(state, DaqState) else str(state)
    u = substate.value if isinstance(substate, DaqSubstate) else str(substate)
    return f"{s}/{u}"


_S = DaqState
_U = DaqSubstate

OFF = StatePair(_S.OFF, _U.NOT_READY)
NO_BEAM = StatePair(_S.NO_BEAM, _U.NOT_READY)
BEAM_NOT_READY = StatePair(_S.BEAM, _U.NOT_READY)
BEAM_READY = StatePair(_S.BEAM, _U.READY)
RUN_PHYSICS = StatePair(_S.RUN, _U.PHYSICS)
RUN_STANDBY = StatePair(_S.RUN, _U.STANDBY)
CALIB_NOT_READY = StatePair(_S.CALIB, _U.NOT_READY)
CALIB_READY = StatePair(_S.CALIB, _U.READY)
TEST_NOT_READY = StatePair(_S.TEST, _U.NOT_READY)
TEST_READY = StatePair(_S.TEST, _U.READY)

LEGAL_STATES: frozenset[StatePair] = frozenset(
    {
        OFF,
        NO_BEAM,
        BEAM_NOT_READY,
        BEAM_READY,
        RUN_PHYSICS,
        RUN_STANDBY,
        CALIB_NOT_READY,
        CALIB_READY,
        TEST_NOT_READY,
        TEST_READY,
    }
)
"""Every (state, substate) pair the DAQ can be in."""

TRANSITIONS: dict[tuple[StatePair, StatePair], str] = {
    # power
    (OFF, NO_BEAM): "power_on",
    (NO_BEAM, OFF): "power_off",
    (BEAM_NOT_READY, OFF): "power_off",
    (CALIB_NOT_READY, OFF): "power_off",
    (TEST_NOT_READY, OFF): "power_off",
    # beam and the run path
    (NO_BEAM, BEAM_NOT_READY): "run_imminent",
    (BEAM_NOT_READY, NO_BEAM): "beam_lost",
    (BEAM_NOT_READY, BEAM_READY): "ready",
    (BEAM_READY, BEAM_NOT_READY): "not_ready",
    (BEAM_READY, RUN_PHYSICS): "start_run",
    (RUN_PHYSICS, RUN_STANDBY): "pause_run",
    (RUN_STANDBY, RUN_PHYSICS): "resume_run",
    (RUN_PHYSICS, BEAM_NOT_READY): "end_run",
    (RUN_STANDBY, BEAM_NOT_READY): "end_run",
    # calibration
    (NO_BEAM, CALIB_NOT_READY): "start_calib",
    (BEAM_NOT_READY, CALIB_NOT_READY): "start_calib",
    (CALIB_NOT_READY, CALIB_READY): "calib_ready",
    (CALIB_READY, CALIB_NOT_READY): "calib_not_ready",
    (CALIB_NOT_READY, NO_BEAM): "end_calib",
    (CALIB_NOT_READY, BEAM_NOT_READY): "end_calib",
    # test
    (NO_BEAM, TEST_NOT_READY): "start_test",
    (BEAM_NOT_READY, TEST_NOT_READY): "start_test",
    (TEST_NOT_READY, TEST_READY): "test_ready",
    (TEST_READY, TEST_NOT_READY): "test_not_ready",
    (TEST_NOT_READY, NO_BEAM): "end_test",
    (TEST_NOT_READY, BEAM_NOT_READY): "end_test",
}
"""Every legal move, ``(from, to) -> event name``. Anything absent is illegal."""


def _check_table() -> None:
    for src, dst in TRANSITIONS:
        if src not in LEGAL_STATES or dst not in LEGAL_STATES:  # pragma: no cover - table bug
            raise AssertionError(f"transition {src} → {dst} names a state outside LEGAL_STATES")
        if src == dst:  # pragma: no cover - table bug
            raise AssertionError(f"transition {src} → {dst} goes nowhere")


_check_table()


class IllegalState(ValueError):
    """A (state, substate) pair that is not in :data:`LEGAL_STATES`."""

    def __init__(self, state: DaqState | str, substate: DaqSubstate | str) -> None:
        self.state = state
        self.substate = substate
        legal = ", ".join(sorted(str(p) for p in LEGAL_STATES))
        super().__init__(
            f"{format_state(state, substate)} is not a legal DAQ state; legal states: {legal}"
        )


class IllegalTransition(ValueError):
    """A move that is not in :data:`TRANSITIONS`; names from, to and what was allowed."""

    def __init__(self, from_state: StatePair, to_state: StatePair | tuple[str, str]) -> None:
        self.from_state = from_state
        self.to_state = to_state
        allowed = ", ".join(str(p) for p in allowed_targets(from_state)) or "none"
        super().__init__(
            f"illegal DAQ transition {format_state(*from_state)} → {format_state(*to_state)}; "
            f"from {format_state(*from_state)} the allowed targets are: {allowed}"
        )


def _pair(state: DaqState | str, substate: DaqSubstate | str) -> StatePair:
    """Coerce to a :class:`StatePair`; unknown names or illegal pairs raise IllegalState."""
    try:
        pair = StatePair(DaqState(state), DaqSubstate(substate))
    except ValueError:
        raise IllegalState(state, substate) from None
    if pair not in LEGAL_STATES:
        raise IllegalState(state, substate)
    return pair


def allowed_targets(from_state: StatePair) -> list[StatePair]:
    """The states reachable in one move from ``from_state``, in table order."""
    return [dst for (src, dst) in TRANSITIONS if src == from_state]


class StateMachine:
    """The current DAQ state, changed only through legal transitions.

    Not thread-safe for writers; readers on other threads see a consistent
    :attr:`current` (one tuple, replaced atomically).
    """

    def __init__(
        self,
        state: DaqState | str = DaqState.NO_BEAM,
        substate: DaqSubstate | str = DaqSubstate.NOT_READY,
    ) -> None:
        self._current = _pair(state, substate)
        self.history: list[tuple[StatePair, StatePair, str]] = []
        """Every transition made: ``(from, to, event)``."""

    @property
    def current(self) -> StatePair:
        return self._current

    @property
    def state(self) -> DaqState:
        return self._current.state

    @property
    def substate(self) -> DaqSubstate:
        return self._current.substate

    def can_transition(self, state: DaqState | str, substate: DaqSubstate | str) -> bool:
        try:
            target = _pair(state, substate)
        except IllegalState:
            return False
        return (self._current, target) in TRANSITIONS

    def transition(self, state: DaqState | str, substate: DaqSubstate | str) -> str:
        """Move to ``state/substate`` and return the event name of the move.

        Raises :class:`IllegalTransition` (naming from and to) when the move is
        not in :data:`TRANSITIONS`, including when the target is not a legal
        state at all.
        """
        try:
            target = _pair(state, substate)
        except IllegalState:
            raise IllegalTransition(self._current, (str(state), str(substate))) from None
        event = TRANSITIONS.get((self._current, target))
        if event is None:
            raise IllegalTransition(self._current, target)
        self.history.append((self._current, target, event))
        self._current = target
        return event

    def allowed(self) -> list[StatePair]:
        """States reachable from here in one move."""
        return allowed_targets(self._current)

    def __repr__(self) -> str:
        return f"StateMachine({self._current})"


def reachable(start: StatePair) -> set[StatePair]:
    """Every state reachable from ``start``, itself included."""
    seen = {start}
    todo = [start]
    while todo:
        here = todo.pop()
        for nxt in allowed_targets(here):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen

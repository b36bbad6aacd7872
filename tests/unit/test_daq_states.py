"""The DAQ state machine: only the table's transitions are legal."""

from __future__ import annotations

import itertools

import pytest

from swf_testbed.daq.states import (
    LEGAL_STATES,
    TRANSITIONS,
    IllegalState,
    IllegalTransition,
    StateMachine,
    StatePair,
    allowed_targets,
    reachable,
)
from swf_testbed.messages import DaqState, DaqSubstate

S, U = DaqState, DaqSubstate

RUN_PATH = [
    (S.BEAM, U.NOT_READY, "run_imminent"),
    (S.BEAM, U.READY, "ready"),
    (S.RUN, U.PHYSICS, "start_run"),
    (S.RUN, U.STANDBY, "pause_run"),
    (S.RUN, U.PHYSICS, "resume_run"),
    (S.BEAM, U.NOT_READY, "end_run"),
]


def test_run_path_is_legal() -> None:
    sm = StateMachine()
    assert sm.current == (S.NO_BEAM, U.NOT_READY)
    for state, substate, event in RUN_PATH:
        assert sm.transition(state, substate) == event
        assert sm.current == (state, substate)
    assert [e for _, _, e in sm.history] == [e for _, _, e in RUN_PATH]


def test_table_endpoints_are_legal_states() -> None:
    for src, dst in TRANSITIONS:
        assert src in LEGAL_STATES and dst in LEGAL_STATES
        assert src != dst


def test_every_pair_not_in_table_raises() -> None:
    """Exhaustive: for every legal from-state, every target not in the table is refused."""
    for src, dst in itertools.product(sorted(LEGAL_STATES), sorted(LEGAL_STATES)):
        sm = StateMachine(*src)
        if (src, dst) in TRANSITIONS:
            assert sm.can_transition(*dst)
            sm.transition(*dst)
            assert sm.current == dst
        else:
            assert not sm.can_transition(*dst)
            with pytest.raises(IllegalTransition) as info:
                sm.transition(*dst)
            assert info.value.from_state == src
            assert info.value.to_state == dst
            assert str(src) in str(info.value) and str(dst) in str(info.value)
            assert sm.current == src  # unchanged


def test_illegal_target_states_raise() -> None:
    """Pairs outside LEGAL_STATES are never reachable, from anywhere."""
    illegal = [
        StatePair(s, u)
        for s, u in itertools.product(DaqState, DaqSubstate)
        if StatePair(s, u) not in LEGAL_STATES
    ]
    assert (S.RUN, U.NOT_READY) in illegal and (S.NO_BEAM, U.PHYSICS) in illegal
    for src in LEGAL_STATES:
        for dst in illegal:
            sm = StateMachine(*src)
            with pytest.raises(IllegalTransition, match="illegal DAQ transition"):
                sm.transition(*dst)
    with pytest.raises(IllegalTransition):
        StateMachine().transition("bogus", "ready")


def test_constructing_in_illegal_state_raises() -> None:
    with pytest.raises(IllegalState, match="run/not_ready is not a legal DAQ state"):
        StateMachine(S.RUN, U.NOT_READY)


def test_error_message_names_from_to_and_allowed() -> None:
    sm = StateMachine(S.BEAM, U.READY)
    with pytest.raises(IllegalTransition) as info:
        sm.transition(S.RUN, U.STANDBY)
    msg = str(info.value)
    assert "beam/ready → run/standby" in msg
    assert "run/physics" in msg and "beam/not_ready" in msg  # the allowed targets


def test_off_only_from_not_ready_states() -> None:
    for src in LEGAL_STATES:
        legal = (src, StatePair(S.OFF, U.NOT_READY)) in TRANSITIONS
        assert legal == (src.substate == U.NOT_READY and src.state != S.OFF), src


def test_calib_and_test_round_trips() -> None:
    for mode in (S.CALIB, S.TEST):
        for home in ((S.NO_BEAM, U.NOT_READY), (S.BEAM, U.NOT_READY)):
            sm = StateMachine(*home)
            sm.transition(mode, U.NOT_READY)
            sm.transition(mode, U.READY)
            sm.transition(mode, U.NOT_READY)
            sm.transition(*home)
            assert sm.current == home
    with pytest.raises(IllegalTransition):
        StateMachine(S.RUN, U.PHYSICS).transition(S.CALIB, U.NOT_READY)


def test_every_state_reachable_from_off_and_back() -> None:
    off = StatePair(S.OFF, U.NOT_READY)
    assert reachable(off) == set(LEGAL_STATES)
    for state in LEGAL_STATES:
        assert off in reachable(state), state


def test_allowed_targets() -> None:
    assert set(allowed_targets(StatePair(S.RUN, U.PHYSICS))) == {
        StatePair(S.RUN, U.STANDBY),
        StatePair(S.BEAM, U.NOT_READY),
    }
    assert StateMachine(S.RUN, U.STANDBY).allowed() == allowed_targets(StatePair(S.RUN, U.STANDBY))

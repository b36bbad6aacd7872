"""The simulated DAQ: its state machine and a SimPy model of a run."""

from swf_testbed.daq.simulator import (
    DaqConfig,
    DaqSimulator,
    DaqSummary,
    EmittedEvent,
    TransitionRecord,
    stf_checksum,
    stf_filename,
)
from swf_testbed.daq.states import (
    LEGAL_STATES,
    TRANSITIONS,
    IllegalState,
    IllegalTransition,
    StateMachine,
    StatePair,
)

__all__ = [
    "LEGAL_STATES",
    "TRANSITIONS",
    "DaqConfig",
    "DaqSimulator",
    "DaqSummary",
    "EmittedEvent",
    "IllegalState",
    "IllegalTransition",
    "StateMachine",
    "StatePair",
    "TransitionRecord",
    "stf_checksum",
    "stf_filename",
]

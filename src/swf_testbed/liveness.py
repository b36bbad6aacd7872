"""The one liveness rule: how alive an agent is, from the age of its last heartbeat.

``ok`` within 1.5 declared intervals plus 2 s, ``late`` within 3 plus 2 s,
``down`` beyond (the 2 s are a slack for clock skew between hosts and for a
heartbeat in flight). An agent that said EXITED is ``exited``; one
silent for longer than ``gone_after_s`` without saying it (a run-once
runner, a killed process) is ``gone``: it ended, it is not failing. The
monitor (from heartbeat times) and the orchestrator (from the times it heard
them) both ask here, with the same numbers and the same names.

An agent is *healthy* when it is ``ok`` and its operational state is READY or
PROCESSING (a busy agent is alive and connected).
"""

from __future__ import annotations

from enum import StrEnum

GRACE = 1.5
"""A heartbeat is on time within this many intervals."""
LATE = 3.0
"""Beyond this many intervals an agent is down."""
SLACK_S = 2.0
"""Added to both limits: clock skew between hosts, a heartbeat in flight."""
HEALTHY_STATES = frozenset({"READY", "PROCESSING"})
"""Operational states of a healthy agent."""


class Liveness(StrEnum):
    OK = "ok"
    LATE = "late"
    DOWN = "down"
    EXITED = "exited"
    GONE = "gone"
    UNKNOWN = "unknown"


NEEDS_ATTENTION = frozenset({Liveness.LATE, Liveness.DOWN})
"""Liveness values someone should look at (an exited or gone agent ended; nothing to fix)."""


def liveness(
    age_s: float | None,
    interval_s: float,
    *,
    exited: bool = False,
    slack_s: float = 0.0,
    gone_after_s: float | None = None,
) -> Liveness:
    """The liveness of an agent whose last heartbeat is ``age_s`` old (None: never heard)."""
    if exited:
        return Liveness.EXITED
    if age_s is None:
        return Liveness.UNKNOWN
    if age_s <= GRACE * interval_s + slack_s:
        return Liveness.OK
    if age_s <= LATE * interval_s + slack_s:
        return Liveness.LATE
    if gone_after_s is not None and age_s > gone_after_s:
        return Liveness.GONE
    return Liveness.DOWN


def healthy(value: Liveness, operational_state: str) -> bool:
    """An agent that is on time and READY or PROCESSING."""
    return value is Liveness.OK and operational_state in HEALTHY_STATES

"""Agents that went silent while a run is followed, and when they came back.

``swf-testbed run`` hears every agent's heartbeats on its own broker
connection (:class:`~swf_testbed.orchestrator.health.HeartbeatBook`). An
agent heard on time that then misses its heartbeats (late or down by the one
liveness rule, :mod:`swf_testbed.liveness`) is reported once, with its host;
when it beats again it is reported back, with how long it was silent. An
agent that said EXITED ended; it is not silent.

While our own broker connection is down we hear nobody, and that is not the
agents' silence: nothing is reported then, and after the reconnect a
heartbeat's age counts from the reconnect (the agents get their usual time
to be heard again).
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from swf_testbed.liveness import NEEDS_ATTENTION, SLACK_S, Liveness, liveness
from swf_testbed.orchestrator.health import BeatRecord, HeartbeatBook


@dataclass
class Silence:
    """One agent process silent from its last heartbeat on time until it beat again."""

    agent_name: str
    instance_id: str
    hostname: str
    since: float  # epoch seconds: its last heartbeat before the silence
    until: float | None = None  # epoch seconds: its first heartbeat after it

    def seconds(self, now: float) -> float:
        return (self.until if self.until is not None else now) - self.since


class SilenceWatch:
    """Which agents of the namespace went silent, and which came back (see the module doc)."""

    def __init__(self, beats: HeartbeatBook, clock: Callable[[], float] = time.time) -> None:
        self.beats = beats
        self.clock = clock
        self.open: dict[str, Silence] = {}
        self.episodes: list[Silence] = []
        self.listening_since: float | None = clock()
        self.heard_on_time: set[str] = set()
        """Instance ids heard on time while watched: only they can go silent (not the long dead)."""

    def check(self, listening: bool = True) -> list[str]:
        """What changed since the last check, as lines to show (one per host and change).

        ``listening``: our broker connection is up (when it is not, nothing is judged).
        """
        now = self.clock()
        if not listening:
            self.listening_since = None
            return []
        if self.listening_since is None:
            self.listening_since = now
        went: list[Silence] = []
        back: list[Silence] = []
        for rec in self.beats.records():
            value = self._liveness(rec, now)
            silence = self.open.get(rec.instance_id)
            if silence is None and rec.liveness(now) is Liveness.OK:  # its true age
                self.heard_on_time.add(rec.instance_id)
            if (
                silence is None
                and value in NEEDS_ATTENTION
                and rec.instance_id in self.heard_on_time
            ):
                silence = Silence(rec.agent_name, rec.instance_id, rec.hostname, rec.received_at)
                self.open[rec.instance_id] = silence
                self.episodes.append(silence)
                went.append(silence)
            elif (
                silence is not None
                and value in (Liveness.OK, Liveness.EXITED)
                and rec.received_at > silence.since  # a new heartbeat, not our reconnect
            ):
                silence.until = rec.received_at
                del self.open[rec.instance_id]
                back.append(silence)
        lines = [
            f"silent: {names} on {host} (no heartbeat for {age:.0f} s)"
            for host, names, age in _by_host(went, now)
        ]
        lines += [
            f"back: {names} on {host} (silent for {seconds:.0f} s)"
            for host, names, seconds in _by_host(back, now)
        ]
        return lines

    def _liveness(self, rec: BeatRecord, now: float) -> Liveness:
        """The record's liveness, its age counted at most from when we last began listening."""
        since = max(rec.received_at, self.listening_since or rec.received_at)
        return liveness(
            now - since, rec.interval_s, exited=rec.operational_state == "EXITED", slack_s=SLACK_S
        )

    def summary(self) -> list[str]:
        """Every silence of the run so far, one line per agent process, the earliest first."""
        now = self.clock()
        return [
            f"{s.agent_name} ({s.instance_id}) on {s.hostname or 'an unnamed host'}: "
            + (
                f"silent for {s.seconds(now):.0f} s, then back"
                if s.until is not None
                else f"silent for {s.seconds(now):.0f} s, still silent"
            )
            for s in sorted(
                self.episodes, key=lambda s: (s.since, s.hostname, s.agent_name, s.instance_id)
            )
        ]


def _by_host(silences: Iterable[Silence], now: float) -> list[tuple[str, str, float]]:
    """(host, agent names, longest silence) per host, hosts and names sorted."""
    hosts: dict[str, list[Silence]] = defaultdict(list)
    for s in silences:
        hosts[s.hostname or "an unnamed host"].append(s)
    return [
        (
            host,
            _names(s.agent_name for s in group),
            max(s.seconds(now) for s in group),
        )
        for host, group in sorted(hosts.items())
    ]


def _names(names: Iterable[str]) -> str:
    """``data, worker ×4``: each agent once, with how many of its processes."""
    counts = Counter(names)
    return ", ".join(f"{n} ×{k}" if k > 1 else n for n, k in sorted(counts.items()))

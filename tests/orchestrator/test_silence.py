"""Agents gone silent during a followed run: reported once with their host, and when back."""

from __future__ import annotations

from swf_testbed.orchestrator.health import BeatRecord, HeartbeatBook
from swf_testbed.orchestrator.silence import SilenceWatch

NS = "silence-test"
INTERVAL = 1.0  # s: late after 1.5 + 2 s of slack


class Clock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now


def beat(
    book: HeartbeatBook,
    at: float,
    name: str = "data",
    instance: str = "",
    host: str = "b.swft",
    state: str = "READY",
) -> None:
    book.add(
        BeatRecord(
            agent_name=name,
            instance_id=instance or f"{name}-1",
            pid=100,
            hostname=host,
            operational_state=state,
            status="OK",
            interval_s=INTERVAL,
            mq_connected=True,
            received_at=at,
        )
    )


def watch() -> tuple[HeartbeatBook, Clock, SilenceWatch]:
    book, clock = HeartbeatBook(NS), Clock()
    return book, clock, SilenceWatch(book, clock)


def test_an_agent_that_stops_beating_is_reported_once_with_its_host_then_back() -> None:
    book, clock, w = watch()
    beat(book, clock.now)
    assert w.check() == []
    clock.now += 3.0  # within 1.5 intervals + 2 s
    assert w.check() == []
    clock.now += 2.0  # 5 s without a heartbeat: late
    assert w.check() == ["silent: data on b.swft (no heartbeat for 5 s)"]
    clock.now += 10.0
    assert w.check() == []  # said once
    beat(book, clock.now)
    assert w.check() == ["back: data on b.swft (silent for 15 s)"]
    assert w.summary() == ["data (data-1) on b.swft: silent for 15 s, then back"]
    assert w.open == {}


def test_agents_are_grouped_by_host_with_their_process_counts() -> None:
    book, clock, w = watch()
    for i in range(4):
        beat(book, clock.now, "worker", f"worker-{i}", "c.swft")
    beat(book, clock.now, "data", host="b.swft")
    beat(book, clock.now + 5, "worker", "worker-on-d", "d.swft")  # beats on
    w.check()
    clock.now += 6.0
    assert w.check() == [
        "silent: data on b.swft (no heartbeat for 6 s)",
        "silent: worker ×4 on c.swft (no heartbeat for 6 s)",
    ]
    assert w.summary()[-1] == "worker (worker-3) on c.swft: silent for 6 s, still silent"


def test_an_agent_already_silent_when_the_watch_began_is_not_reported() -> None:
    book, clock, w = watch()
    beat(book, clock.now - 3600, "killed-long-ago")
    beat(book, clock.now)
    w.check()
    clock.now += 10.0
    assert w.check() == ["silent: data on b.swft (no heartbeat for 10 s)"]


def test_an_agent_that_said_exited_is_not_silent() -> None:
    book, clock, w = watch()
    beat(book, clock.now)
    w.check()
    beat(book, clock.now + 0.5, state="EXITED")
    clock.now += 30.0
    assert w.check() == []
    assert w.summary() == []


def test_nothing_is_judged_while_our_own_connection_is_down_nor_just_after_it() -> None:
    book, clock, w = watch()
    beat(book, clock.now)
    w.check()
    clock.now += 30.0
    assert w.check(listening=False) == []  # we hear nobody: not their silence
    clock.now += 1.0
    assert w.check() == []  # reconnected: the agents get their usual time to be heard
    beat(book, clock.now + 1.0)
    clock.now += 2.0
    assert w.check() == []
    assert w.episodes == []
    clock.now += 5.0  # and then silence counts again
    assert w.check() == ["silent: data on b.swft (no heartbeat for 6 s)"]


def test_a_silent_agent_is_not_back_by_our_reconnect_alone() -> None:
    book, clock, w = watch()
    beat(book, clock.now)
    w.check()
    clock.now += 6.0
    assert w.check() == ["silent: data on b.swft (no heartbeat for 6 s)"]
    assert w.check(listening=False) == []
    clock.now += 1.0
    assert w.check() == []  # its age counts from the reconnect, but no new heartbeat came
    assert list(w.open) == ["data-1"]

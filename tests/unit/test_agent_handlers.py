"""Typed handler registration (``@handles``), ``Agent.dispatch`` and the runtime's attempt count.

A registration that cannot work is an error when the agent class is created, i.e. when its
module is imported: each case below is a real module, written to a temporary directory and
imported, with ``from __future__ import annotations`` as every agent module has, so that
annotations are resolved the way they are in a real agent. The agents are built but never
started: no broker.
"""

from __future__ import annotations

import dataclasses
import importlib
import logging
import sys
import textwrap
import threading
import uuid
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from swf_testbed.agents import Agent, HandlerError, handles
from swf_testbed.agents.logship import log_context
from swf_testbed.messages import (
    DeadLetter,
    EndRun,
    Message,
    RunImminent,
    StfGen,
    StfGenV28,
    StfReady,
    parse_message,
    parse_received,
)
from swf_testbed.mq import Topic
from swf_testbed.mq.client import Delivery, Subscription
from swf_testbed.mq.destinations import DEAD_LETTER_QUEUE
from swf_testbed.settings import BrokerSettings
from tests.support.agents import stf_ready

NS = "handlers"
BROKER = BrokerSettings(host="127.0.0.1", port=9)  # never connected: the agents are not started

HEADER = """\
from __future__ import annotations

from typing import TYPE_CHECKING

from swf_testbed.agents import Agent, handles
from swf_testbed.messages import (
    EndRun, Message, RunImminent, RunMessage, StfGen, StfGenV28, StfReady
)
from swf_testbed.mq.destinations import RUN_TOPIC

if TYPE_CHECKING:
    from swf_testbed.messages import Slice
"""


@pytest.fixture
def import_agent(tmp_path: Path) -> Iterator[Any]:
    """Writes a module (``HEADER`` + the code given) and imports it; yields the importer."""
    names: list[str] = []
    sys.path.insert(0, str(tmp_path))

    def load(body: str) -> Any:
        name = f"agent_{uuid.uuid4().hex[:8]}"
        names.append(name)
        (tmp_path / f"{name}.py").write_text(HEADER + textwrap.dedent(body), encoding="utf-8")
        return importlib.import_module(name)

    yield load
    sys.path.remove(str(tmp_path))
    for name in names:
        sys.modules.pop(name, None)


# --------------------------------------------------------------------------- import-time errors

BAD = {
    "not a class": (
        """
        class A(Agent):
            @handles(RUN_TOPIC)
            def on_run(self, msg: Message) -> None: ...
        """,
        r"A\.on_run: @handles\(Destination\(name='epictopic'.*\) is not a message class",
    ),
    "a class, not a message class": (
        """
        class A(Agent):
            @handles(int)
            def on_int(self, msg: int) -> None: ...
        """,
        r"A\.on_int: @handles\(int\) is not a message class",
    ),
    "the envelope": (
        """
        class A(Agent):
            @handles(Message)
            def on_any(self, msg: Message) -> None: ...
        """,
        r"A\.on_any: @handles\(Message\): not a message type of the schema",
    ),
    "an abstract base": (
        """
        class A(Agent):
            @handles(RunMessage)
            def on_run(self, msg: RunMessage) -> None: ...
        """,
        r"A\.on_run: @handles\(RunMessage\): not a message type of the schema",
    ),
    "the v28 form": (
        """
        class A(Agent):
            @handles(StfGenV28)
            def on_gen(self, msg: StfGenV28) -> None: ...
        """,
        r"A\.on_gen: @handles\(StfGenV28\): 'stf_gen' messages arrive as StfGen .*"
        r"@handles\(StfGen\)",
    ),
    "a subclass of a message": (
        """
        class MyStf(StfGen):
            pass

        class A(Agent):
            @handles(MyStf)
            def on_gen(self, msg: MyStf) -> None: ...
        """,
        r"A\.on_gen: @handles\(MyStf\): 'stf_gen' messages arrive as StfGen",
    ),
    "an unknown msg_type string": (
        """
        class A(Agent):
            @handles("stf_gem")
            def on_gen(self, msg: Message) -> None: ...
        """,
        r"A\.on_gen: @handles\('stf_gem'\): unknown msg_type; known: .*stf_gen",
    ),
    "two handlers for one type": (
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self, msg: StfGen) -> None: ...

            @handles(StfGen)
            def on_gen_too(self, msg: StfGen) -> None: ...
        """,
        r"A\.on_gen_too: two handlers for StfGen in A: on_gen and on_gen_too",
    ),
    "two handlers for one type, one by its string": (
        """
        class A(Agent):
            @handles("stf_gen")
            def on_gen(self, msg: Message) -> None: ...

            @handles(StfGen)
            def on_gen_too(self, msg: StfGen) -> None: ...
        """,
        r"A\.on_gen_too: two handlers for StfGen in A: on_gen and on_gen_too",
    ),
    "the annotation disagrees": (
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self, msg: EndRun) -> None: ...
        """,
        r"A\.on_gen: @handles\(StfGen\) but its parameter is msg: EndRun",
    ),
    "a union that misses one": (
        """
        class A(Agent):
            @handles(StfGen, EndRun)
            def on_two(self, msg: StfGen | StfReady) -> None: ...
        """,
        r"A\.on_two: @handles\(EndRun\) but its parameter is msg: ",
    ),
    "no message parameter": (
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self) -> None: ...
        """,
        r"A\.on_gen: a handler takes \(self, msg\); this one is on_gen\(self\)",
    ),
    "a required extra parameter": (
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self, msg: StfGen, when: float) -> None: ...
        """,
        r"A\.on_gen: a handler takes \(self, msg\)",
    ),
    "an annotation only there for the type checker": (
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self, msg: Slice) -> None: ...
        """,
        r"A\.on_gen: cannot resolve the annotations of the handler \(name 'Slice' is not defined\)",
    ),
    "an override that disagrees with the registration it inherits": (
        """
        class Base(Agent):
            @handles(StfGen)
            def on_gen(self, msg: StfGen) -> None: ...

        class Sub(Base):
            def on_gen(self, msg: EndRun) -> None: ...
        """,
        r"\.Sub\.on_gen: @handles\(StfGen\) but its parameter is msg: EndRun",
    ),
    "not a method": (
        """
        class Base(Agent):
            @handles(StfGen)
            def on_gen(self, msg: StfGen) -> None: ...

        class Sub(Base):
            on_gen = None
        """,
        r"\.Sub\.on_gen: registered as a handler but is not a method",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_a_registration_that_cannot_work_fails_the_import(case: str, import_agent: Any) -> None:
    body, message = BAD[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the string cases warn as well
        with pytest.raises(HandlerError, match=message) as raised:
            import_agent(body)
    # the message starts with module.Class.method: where to look
    assert raised.value.args[0].startswith("agent_"), raised.value.args[0]


def test_handles_needs_a_message_class() -> None:
    with pytest.raises(TypeError, match=r"needs at least one message class"):
        handles()


# --------------------------------------------------------------------------- what works


def test_typed_handlers_and_annotations_wider_than_the_class(import_agent: Any) -> None:
    module = import_agent(
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self, msg: StfGen) -> None: ...

            @handles(EndRun, StfReady)
            def on_two(self, msg: EndRun | StfReady) -> None: ...

            @handles(RunImminent)
            def on_imminent(self, msg: RunMessage) -> None: ...

            def not_a_handler(self, msg: StfGen) -> None: ...
        """
    )
    assert module.A.handled_types() == {
        "stf_gen": StfGen,
        "end_run": EndRun,
        "stf_ready": StfReady,
        "run_imminent": RunImminent,
    }


def test_an_unannotated_handler_is_accepted(import_agent: Any) -> None:
    module = import_agent(
        """
        class A(Agent):
            @handles(StfGen)
            def on_gen(self, msg):
                self.got = msg
        """
    )
    assert module.A.handled_types() == {"stf_gen": StfGen}


def test_a_msg_type_string_still_works_typed_and_warns_where_it_is_written(
    import_agent: Any,
) -> None:
    with pytest.warns(DeprecationWarning, match=r"@handles\(StfReady\)") as caught:
        module = import_agent(
            """
            class A(Agent):
                @handles("stf_ready")
                def on_ready(self, msg: Message) -> None:
                    self.got = msg
            """
        )
    assert [Path(w.filename).name for w in caught] == [f"{module.__name__}.py"]
    assert module.A.handled_types() == {"stf_ready": StfReady}
    agent = module.A("a", NS, broker=BROKER)
    msg = stf_ready(NS, "x.stf")
    assert agent.dispatch(msg) and agent.got is msg


def test_subclasses_inherit_override_and_redeclare_handlers(import_agent: Any) -> None:
    module = import_agent(
        """
        class Base(Agent):
            @handles(StfReady)
            def on_ready(self, msg: StfReady) -> None:
                self.calls.append(("Base.on_ready", msg.msg_type))

            @handles(EndRun)
            def on_end(self, msg: EndRun) -> None:
                self.calls.append(("Base.on_end", msg.msg_type))

            @handles(StfGen)
            def on_gen(self, msg: StfGen) -> None:
                self.calls.append(("Base.on_gen", msg.msg_type))

        class Sub(Base):
            # a plain override keeps the registration it inherits
            def on_ready(self, msg: StfReady) -> None:
                self.calls.append(("Sub.on_ready", msg.msg_type))

            # a new handler for a type the base handles replaces the base's
            @handles(EndRun)
            def on_end_run(self, msg: EndRun) -> None:
                self.calls.append(("Sub.on_end_run", msg.msg_type))

            # redeclared: registered for what it says now, and only that
            @handles(RunImminent)
            def on_gen(self, msg: RunImminent) -> None:
                self.calls.append(("Sub.on_gen", msg.msg_type))
        """
    )
    assert set(module.Base.handled_types()) == {"stf_ready", "end_run", "stf_gen"}
    assert set(module.Sub.handled_types()) == {"stf_ready", "end_run", "run_imminent"}
    sub = module.Sub("s", NS, broker=BROKER)
    sub.calls = []
    assert [sub.dispatch(m) for m in (stf_ready(NS, "a.stf"), end_run(), stf_gen())] == [
        True,
        True,
        False,
    ]
    assert sub.calls == [("Sub.on_ready", "stf_ready"), ("Sub.on_end_run", "end_run")]


# --------------------------------------------------------------------------- dispatch


def end_run() -> EndRun:
    return EndRun.model_validate(
        {
            "namespace": NS,
            "sender": "t",
            "execution_id": "exec-1",
            "run_id": 1,
            "state": "beam",
            "substate": "not_ready",
            "total_stf_files": 1,
        }
    )


def stf_gen() -> StfGen:
    return StfGen.model_validate(
        {
            "namespace": NS,
            "sender": "t",
            "execution_id": "exec-1",
            "run_id": 1,
            "state": "run",
            "substate": "physics",
            "filename": "a.stf",
            "sequence": 0,
            "size_bytes": 100,
            "checksum": "0000abcd",
            "tf_count": 10,
            "start": "2026-01-01T00:00:00Z",
            "end": "2026-01-01T00:00:01Z",
        }
    )


class Recorder(Agent):
    """Records what each handler got, and the log context it ran in."""

    agent_type = "test-recorder"

    def __init__(self, name: str, namespace: str, **kwargs: Any) -> None:
        super().__init__(name, namespace, **kwargs)
        self.got: list[tuple[str, Message, tuple[str | None, int | None]]] = []

    @handles(StfGen)
    def on_stf_gen(self, msg: StfGen) -> None:
        self.got.append(("on_stf_gen", msg, log_context.get()))

    @handles(StfReady)
    def on_stf_ready(self, msg: StfReady) -> None:
        if msg.filename.startswith("bad"):
            raise RuntimeError(f"cannot take {msg.filename}")
        self.got.append(("on_stf_ready", msg, log_context.get()))


def test_dispatch_calls_the_handler_of_the_message_type_in_its_log_context() -> None:
    agent = Recorder("r", NS, broker=BROKER)
    msg = stf_ready(NS, "a.stf", run_id=7)
    assert agent.dispatch(msg) is True
    assert agent.got == [("on_stf_ready", msg, ("exec-1", 7))]
    assert log_context.get() == (None, None)  # only while the handler runs


def test_dispatch_hands_a_v28_message_to_the_handler_of_its_class() -> None:
    agent = Recorder("r", NS, broker=BROKER)
    body = (  # no size, checksum, msg_id or sender; a naive time; the run id a string
        b'{"msg_type": "stf_gen", "run_id": "101", "filename": "swf.101.000001.stf",'
        b' "execution_id": "e1", "state": "run", "substate": "physics", "sequence": 1,'
        b' "timestamp": "2026-01-01 00:00:01", "namespace": "handlers"}'
    )
    msg = parse_received(body, zone=ZoneInfo("UTC"), broker_message_id="ID:1")
    assert isinstance(msg, StfGenV28)
    assert agent.dispatch(msg) is True
    assert agent.got[0][0] == "on_stf_gen" and agent.got[0][1] is msg


def test_dispatch_of_an_unhandled_type_does_nothing_and_says_so() -> None:
    agent = Recorder("r", NS, broker=BROKER)
    assert agent.dispatch(end_run()) is False
    assert agent.got == [] and agent.counters["unhandled"] == 0  # counting is the runtime's


def test_dispatch_lets_the_handler_exception_through() -> None:
    agent = Recorder("r", NS, broker=BROKER)
    with pytest.raises(RuntimeError, match="cannot take bad.stf"):
        agent.dispatch(stf_ready(NS, "bad.stf"))
    assert agent.counters["failed"] == 0  # no retry, no dead letter: that is the runtime's


def test_dispatch_refuses_a_message_that_is_not_of_the_class_its_type_says() -> None:
    agent = Recorder("r", NS, broker=BROKER)
    forged = StfReady.model_construct(msg_type="stf_gen", namespace=NS, sender="t")
    with pytest.raises(TypeError, match=r"Recorder.on_stf_gen handles StfGen, not StfReady"):
        agent.dispatch(forged)
    assert agent.got == []


# --------------------------------------------------------------------------- attempts


class FakeBroker:
    """Stands in for the agent's BrokerClient: a broker that redelivers NACKed messages."""

    nack_redelivers = True

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: list[Delivery] = []
        self.nacked: list[Delivery] = []
        self.dead_letters: list[DeadLetter] = []

    def ack(self, delivery: Delivery) -> None:
        with self.lock:
            self.acked.append(delivery)

    def nack(self, delivery: Delivery) -> None:
        with self.lock:
            self.nacked.append(delivery)

    def send(self, destination: Any, msg: Message, **kwargs: Any) -> None:
        assert destination == DEAD_LETTER_QUEUE and isinstance(msg, DeadLetter)
        with self.lock:
            self.dead_letters.append(msg)


def delivery(body: bytes, message_id: str) -> Delivery:
    """A delivery as the client makes them (``generation`` only while Delivery still has it)."""
    fields = {f.name for f in dataclasses.fields(Delivery)}
    extra = {"generation": 0} if "generation" in fields else {}
    return Delivery(
        subscription=Subscription(destination=Topic("hammer"), handler=lambda d: None),
        headers={"destination": "/topic/hammer", "message-id": message_id},
        body=body,
        **extra,
    )


class AlwaysFails(Agent):
    agent_type = "test-always-fails"

    @handles(StfReady)
    def on_stf_ready(self, msg: StfReady) -> None:
        raise RuntimeError(f"no {msg.filename}")


@pytest.fixture
def busy_switching() -> Iterator[None]:
    """Threads switch as often as the interpreter allows; the runtime's warnings kept quiet."""
    interval = sys.getswitchinterval()
    runtime_log = logging.getLogger("swf_testbed.agents.runtime")
    level = runtime_log.level
    sys.setswitchinterval(1e-6)
    runtime_log.setLevel(logging.CRITICAL)
    yield
    sys.setswitchinterval(interval)
    runtime_log.setLevel(level)


def test_attempts_are_counted_exactly_when_pool_threads_fail_the_same_messages_at_once(
    busy_switching: None,
) -> None:
    """8 threads fail 4 messages 250 times each, all at once: every max_attempts-th failure of a
    message dead-letters it with attempts == max_attempts, the others are retried, and what is
    left counts the failures since the last dead letter. A lost update would show as a dead
    letter too few (or one with the wrong count), a corrupted bound as an exception."""
    max_attempts, threads, rounds = 3, 8, 250
    agent = AlwaysFails("h", NS, broker=BROKER, max_attempts=max_attempts)
    broker = FakeBroker()
    agent.client = broker  # type: ignore[assignment]  # the receiving path without a broker
    deliveries = [delivery(stf_ready(NS, f"f{i}.stf").to_bytes(), f"ID:{i}") for i in range(4)]
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def fail_them(offset: int) -> None:
        start.wait()
        try:
            for _ in range(rounds):
                for d in deliveries[offset % 4 :] + deliveries[: offset % 4]:
                    agent._handle(d)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    workers = [threading.Thread(target=fail_them, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert errors == []
    failures = threads * rounds  # per message
    originals = [parse_message(letter.original_body.encode()) for letter in broker.dead_letters]
    letters = Counter(m.filename for m in originals)  # type: ignore[attr-defined]  # StfReady
    assert letters == {f"f{i}.stf": failures // max_attempts for i in range(4)}
    assert {letter.attempts for letter in broker.dead_letters} == {max_attempts}
    assert dict(agent._attempts) == {
        f"/topic/hammer|ID:{i}": failures % max_attempts for i in range(4)
    }
    total = 4 * failures
    assert agent.counters["failed"] == total
    lettered = 4 * (failures // max_attempts)
    assert agent.counters["dead_lettered"] == len(broker.dead_letters) == lettered
    assert agent.counters["retried"] == len(broker.nacked) == total - lettered
    assert len(broker.acked) == len(broker.dead_letters)  # a dead letter is acknowledged


def test_the_oldest_attempts_are_forgotten_past_the_bound() -> None:
    agent = AlwaysFails("h", NS, broker=BROKER, max_attempts=5)
    agent._attempts_bound = 3
    agent.client = FakeBroker()  # type: ignore[assignment]  # the receiving path without a broker
    runtime_log = logging.getLogger("swf_testbed.agents.runtime")
    level = runtime_log.level
    runtime_log.setLevel(logging.CRITICAL)
    try:
        for i in range(5):
            agent._handle(delivery(stf_ready(NS, f"f{i}.stf").to_bytes(), f"ID:{i}"))
        assert list(agent._attempts) == [
            "/topic/hammer|ID:2",
            "/topic/hammer|ID:3",
            "/topic/hammer|ID:4",
        ]
        agent._handle(delivery(stf_ready(NS, "f2.stf").to_bytes(), "ID:2"))
        agent._handle(delivery(stf_ready(NS, "f0.stf").to_bytes(), "ID:0"))
    finally:
        runtime_log.setLevel(level)
    assert list(agent._attempts.items()) == [
        ("/topic/hammer|ID:4", 1),
        ("/topic/hammer|ID:2", 2),  # failed again: counted on, and the newest
        ("/topic/hammer|ID:0", 1),  # forgotten, so counted from 1 again; ID:3 is the oldest now
    ]


def test_the_local_retry_waits_follow_the_shared_backoff_schedule() -> None:
    agent = AlwaysFails("h", NS, broker=BROKER, max_attempts=5, retry_delay=0.25)
    assert [agent._retry_backoff.for_attempt(n) for n in range(1, 5)] == [0.25, 0.5, 1.0, 2.0]
    with pytest.raises(ValueError, match="retry_delay must be > 0"):
        AlwaysFails("h", NS, broker=BROKER, retry_delay=0)


def test_attempt_counting_itself_loses_no_update_under_contention(busy_switching: None) -> None:
    """The bookkeeping alone, as fast as 8 threads can fail 2 messages: exactly every
    max_attempts-th failure of a message is the one that dead-letters it."""
    max_attempts, threads, rounds = 3, 8, 20_000
    agent = AlwaysFails("h", NS, broker=BROKER, max_attempts=max_attempts)
    keys = ["q|ID:a", "q|ID:b"]
    start = threading.Barrier(threads)
    verdicts: list[Counter[tuple[str, int]]] = [Counter() for _ in range(threads)]

    def fail_them(i: int) -> None:
        start.wait()
        mine = verdicts[i]
        for n in range(rounds):
            key = keys[(n + i) % 2]
            mine[key, agent._count_attempt(key)] += 1

    workers = [threading.Thread(target=fail_them, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    seen = sum(verdicts, Counter())
    failures = threads * rounds // 2  # per key
    for key in keys:
        # each attempt number 1..max_attempts came up once per cycle of the key
        assert [seen[key, n] for n in range(1, max_attempts + 1)] == [
            -(-(failures - n + 1) // max_attempts) for n in range(1, max_attempts + 1)
        ]
    assert dict(agent._attempts) == dict.fromkeys(keys, failures % max_attempts)

"""What agents know about runs: the parameters ``run_imminent`` carried, and whether a run is open.

:class:`RunFollowingAgent` is the base of the agents that follow the run
topic and work on their namespace's data topic (processing, fastmon).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from swf_testbed.agents.runtime import Agent, Listen, handles
from swf_testbed.messages import EndRun, RunImminent
from swf_testbed.mq.destinations import RUN_TOPIC, data_topic

log = logging.getLogger(__name__)


@dataclass
class RunInfo:
    """What an agent knows about one run."""

    run_id: int
    execution_id: str
    conditions: dict[str, Any] = field(default_factory=dict)
    announced: bool = True
    """False when the agent never saw run_imminent (it joined mid-run): options apply."""
    open: bool = True

    def condition(self, key: str, default: Any = None) -> Any:
        return self.conditions.get(key, default)

    @property
    def fast_processing(self) -> dict[str, Any] | None:
        """The run's ``[fast_processing]`` parameters; None when the run has no fast processing."""
        fp = self.conditions.get("fast_processing")
        return fp if isinstance(fp, dict) else None

    def number(self, key: str, default: float | None, section: str | None = None) -> Any:
        """A numeric run parameter (from ``section`` of the conditions if given), else
        ``default``."""
        source = self.conditions.get(section) if section else self.conditions
        value = source.get(key) if isinstance(source, dict) else None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        return default


class RunBook:
    """The runs an agent has heard of, with the conditions their ``run_imminent`` carried.

    A run's messages reach an agent on several subscriptions (the run topic,
    the data topic), handled in parallel lanes, so a data message can be
    handled a moment before its run's ``run_imminent``: :meth:`lookup` waits
    up to ``wait_s`` for it, once per run. A run never announced (the agent
    started mid-run) is then recorded as such and later lookups return at
    once. Closed runs are kept (the last ``keep``) for stragglers.
    """

    def __init__(self, wait_s: float = 2.0, keep: int = 100) -> None:
        self.wait_s = wait_s
        self.keep = keep
        self._runs: OrderedDict[int, RunInfo] = OrderedDict()
        self._cond = threading.Condition()

    def open(self, msg: RunImminent) -> RunInfo:
        with self._cond:
            info = RunInfo(msg.run_id, msg.execution_id, dict(msg.run_conditions))
            self._runs[msg.run_id] = info
            self._runs.move_to_end(msg.run_id)
            self._prune()
            self._cond.notify_all()
            return info

    def close(self, msg: EndRun) -> RunInfo:
        with self._cond:
            info = self._runs.get(msg.run_id)
            if info is None:
                info = self._runs[msg.run_id] = RunInfo(
                    msg.run_id, msg.execution_id, announced=False
                )
            info.open = False
            self._prune()
            self._cond.notify_all()
            return info

    def lookup(self, run_id: int, execution_id: str = "", wait: float | None = None) -> RunInfo:
        """The run's info, waiting (once per run) for its run_imminent if it is not known yet."""
        deadline = time.monotonic() + (self.wait_s if wait is None else wait)
        with self._cond:
            while run_id not in self._runs:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log.info(
                        "run %d was never announced to this agent; using its own options", run_id
                    )
                    self._runs[run_id] = RunInfo(run_id, execution_id, announced=False)
                    self._prune()
                    break
                self._cond.wait(remaining)
            return self._runs[run_id]

    def any_open(self) -> bool:
        with self._cond:
            return any(info.open and info.announced for info in self._runs.values())

    def _prune(self) -> None:
        closed = [rid for rid, info in self._runs.items() if not info.open]
        for rid in closed[: max(0, len(closed) - self.keep)]:
            del self._runs[rid]


# ------------------------------------------------------------------- agents that follow runs


class RunFollowingAgent(Agent):
    """Opens a run on ``run_imminent``, closes it on ``end_run``; busy while a run is open.

    Listens on the run topic (in order) and on the namespace's data topic
    (unordered: data messages are independent of each other).
    """

    def __init__(self, name: str, namespace: str, **kwargs: Any) -> None:
        super().__init__(name, namespace, **kwargs)
        self.runs = RunBook()

    def listens_on(self) -> list[Listen]:
        return [Listen(RUN_TOPIC), Listen(data_topic(self.namespace), ordered=False)]

    def is_busy(self) -> bool:
        return self.runs.any_open()

    @handles(RunImminent)
    def on_run_imminent(self, msg: RunImminent) -> None:
        self.runs.open(msg)
        self.count("runs_opened")

    @handles(EndRun)
    def on_end_run(self, msg: EndRun) -> None:
        self.runs.close(msg)
        self.count("runs_closed")

"""StfCounter: counts the STFs of each run; the worked example of docs/writing-an-agent.md."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from swf_testbed.agents import Agent, handles
from swf_testbed.messages import EndRun, StfReady
from swf_testbed.mq.destinations import RUN_TOPIC, Destination, data_topic

log = logging.getLogger(__name__)


@dataclass
class RunCount:
    # file names: a redelivered stf_ready is not counted twice
    stfs: set[str] = field(default_factory=set)
    total: int | None = None  # the DAQ's count, once end_run has arrived
    reported: bool = False


class StfCounter(Agent):
    """Counts stf_ready per run; publishes nothing, reports in heartbeat counters and its log."""

    agent_type = "stf-counter"

    def __init__(self, name: str, namespace: str, **kwargs: Any) -> None:
        super().__init__(name, namespace, **kwargs)
        self.runs: dict[int, RunCount] = {}
        self._lock = threading.Lock()  # handlers of different subscriptions run in parallel

    def listens_on(self) -> list[Destination]:
        # stf_ready comes from the data agent on the namespace's data topic,
        # end_run from the DAQ on the run topic
        return [data_topic(self.namespace), RUN_TOPIC]

    @handles(StfReady)
    def on_stf_ready(self, msg: StfReady) -> None:
        with self._lock:
            run = self.runs.setdefault(msg.run_id, RunCount())
            if msg.filename in run.stfs:
                self.count("stf_duplicates")
                return
            run.stfs.add(msg.filename)
            self.count("stf_ready")
            self.count(f"run_{msg.run_id}_stfs")
            self._report_if_complete(msg.run_id, run)

    @handles(EndRun)
    def on_end_run(self, msg: EndRun) -> None:
        with self._lock:
            run = self.runs.setdefault(msg.run_id, RunCount())
            run.total = msg.total_stf_files
            self.count("runs_ended")
            self._report_if_complete(msg.run_id, run)

    def _report_if_complete(self, run_id: int, run: RunCount) -> None:
        # The two topics are not ordered with respect to each other: the data agent's last stf_ready
        # may arrive after the DAQ's end_run. Report once both are in.
        if run.reported or run.total is None or len(run.stfs) < run.total:
            return
        run.reported = True
        log.info(
            "%s: run %d ended: %d STFs counted, DAQ reports %d",
            self.name,
            run_id,
            len(run.stfs),
            run.total,
        )

"""The data agent: registers runs and STFs, and announces each STF as ready.

``run_imminent`` opens a run; ``stf_gen`` registers the STF and publishes
``stf_ready`` on the namespace's data topic (once per STF: a repeated
``stf_gen`` is counted in ``stf_duplicates``, not announced again);
``end_run`` closes the run and checks the number of STFs it saw against
``total_stf_files``. An ePIC v28 ``stf_gen`` carries no size or checksum,
which ``stf_ready`` needs: it is counted as seen, not announced. A mismatch
is logged and shown in the heartbeat (status WARNING), never ignored.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from swf_testbed.agents.runtime import Agent, handles
from swf_testbed.messages import AgentStatus, EndRun, RunImminent, StfGen, StfReady
from swf_testbed.mq.destinations import RUN_TOPIC, Destination, data_topic

log = logging.getLogger(__name__)


@dataclass
class _OpenRun:
    run_id: int
    execution_id: str
    stf_files: set[str] = field(default_factory=set)


class DataAgent(Agent):
    agent_type = "data"

    def __init__(
        self,
        name: str,
        namespace: str,
        *,
        storage_url: str = "file:///swf/exit-buffer",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, namespace, **kwargs)
        self.storage_url = storage_url.rstrip("/")
        self.runs: dict[int, _OpenRun] = {}
        self.mismatches: list[str] = []
        self._runs_lock = threading.Lock()

    def listens_on(self) -> list[Destination]:
        return [RUN_TOPIC]

    def is_busy(self) -> bool:
        return bool(self.runs)

    def _run(self, msg: RunImminent | StfGen | EndRun) -> _OpenRun:
        with self._runs_lock:
            run = self.runs.get(msg.run_id)
            if run is None:
                # joined mid-run (e.g. restarted): register it now rather than drop its data
                run = self.runs[msg.run_id] = _OpenRun(msg.run_id, msg.execution_id)
            return run

    @handles(RunImminent)
    def on_run_imminent(self, msg: RunImminent) -> None:
        self._run(msg)
        self.count("runs_registered")

    @handles(StfGen)
    def on_stf_gen(self, msg: StfGen) -> None:
        run = self._run(msg)
        with self._runs_lock:
            duplicate = msg.filename in run.stf_files
        if duplicate:
            # announced already (registered only once stf_ready was sent): at most one
            # stf_ready per STF
            self.count("stf_duplicates")
            return
        if msg.size_bytes is None or msg.checksum is None:
            # an ePIC v28 stf_gen: no size or checksum, which stf_ready needs; seen (end_run
            # counts it), not announced
            with self._runs_lock:
                run.stf_files.add(msg.filename)
            self.count("stf_not_announced")
            log.info(
                "%s: %s has no size or checksum (ePIC v28 stf_gen); registered, not announced",
                self.name,
                msg.filename,
            )
            return
        self.send(
            data_topic(self.namespace),
            self.message(
                StfReady,
                execution_id=msg.execution_id,
                run_id=msg.run_id,
                state=msg.state,
                substate=msg.substate,
                filename=msg.filename,
                url=f"{self.storage_url}/{msg.filename}",
                sequence=msg.sequence,
                size_bytes=msg.size_bytes,
                checksum=msg.checksum,
                tf_count=msg.tf_count or 0,  # 0: unknown
            ),
        )
        with self._runs_lock:
            if msg.filename not in run.stf_files:
                run.stf_files.add(msg.filename)
                self.count("stf_registered")

    @handles(EndRun)
    def on_end_run(self, msg: EndRun) -> None:
        with self._runs_lock:
            run = self.runs.pop(msg.run_id, None)
        seen = len(run.stf_files) if run else 0
        self.count("runs_closed")
        if seen != msg.total_stf_files:
            problem = f"run {msg.run_id}: saw {seen} STF files, DAQ reports {msg.total_stf_files}"
            self.mismatches.append(problem)
            self.status = AgentStatus.WARNING
            self.description = problem
            self.count("stf_count_mismatches")
            log.warning("%s: %s", self.name, problem)
        else:
            log.info("%s: run %d closed with %d STF files", self.name, msg.run_id, seen)

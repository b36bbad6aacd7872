"""One simulated run through the data and processing agents, on one machine.

The end-to-end demonstration behind ``./dev run`` until the orchestrator
(``swf-testbed run``) exists: it uses the embedded broker (starting it when
nothing listens on the broker address), runs the agents in this process,
drives one DAQ run with the simulator, and watches every message on the
broker to report what made it through.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from swf_testbed.agents.data import DataAgent
from swf_testbed.agents.processing import ProcessingAgent
from swf_testbed.agents.runtime import Agent
from swf_testbed.daq.simulator import DaqSimulator
from swf_testbed.messages import Heartbeat, Message, MessageError, parse_message
from swf_testbed.mq import BrokerClient
from swf_testbed.mq.destinations import HEARTBEAT_TOPIC, RUN_TOPIC, data_topic
from swf_testbed.settings import BrokerSettings
from swf_testbed.testing.brokers import BrokerProcess, start_embedded
from swf_testbed.workflows.config import load_config


@dataclass
class DemoProgress:
    """What the demo has seen on the broker so far."""

    namespace: str
    execution_id: str
    run_id: int
    expected_stfs: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    daq_state: str = "no_beam/not_ready"
    agents: dict[str, Heartbeat] = field(default_factory=dict)
    invalid: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, msg: Message) -> None:
        if msg.namespace != self.namespace:
            return
        with self.lock:
            if isinstance(msg, Heartbeat):
                self.agents[msg.agent_name] = msg
                return
            self.counts[msg.msg_type] += 1
            state, substate = getattr(msg, "state", None), getattr(msg, "substate", None)
            if msg.msg_type in ("run_imminent", "start_run", "pause_run", "resume_run", "end_run"):
                self.daq_state = f"{state}/{substate}"
            if msg.msg_type == "end_run":
                self.expected_stfs = msg.total_stf_files  # type: ignore[attr-defined]
            if self.finished:
                self.done.set()

    @property
    def finished(self) -> bool:
        c = self.counts
        return (
            self.expected_stfs is not None
            and c["stf_gen"] == self.expected_stfs
            and c["stf_ready"] == self.expected_stfs
            and c["processing_complete"] == self.expected_stfs
        )


def broker_listening(settings: BrokerSettings) -> bool:
    try:
        with socket.create_connection((settings.host, settings.port), timeout=1):
            return True
    except OSError:
        return False


def ensure_broker(settings: BrokerSettings) -> BrokerProcess | None:
    """Start the embedded broker on the configured address unless something listens there."""
    if broker_listening(settings):
        return None
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        raise ConnectionError(f"no broker at {settings.host}:{settings.port}, and it is not this machine")
    return start_embedded(port=settings.port, host=settings.host)


def run_demo(
    settings: BrokerSettings,
    *,
    namespace: str | None = None,
    stf_count: int = 10,
    time_scale: float = 50.0,
    processing_time: float = 1.0,
    timeout: float = 300.0,
    on_start: Callable[[DemoProgress], None] | None = None,
) -> DemoProgress:
    """Run one DAQ run through the agents; returns what was observed."""
    namespace = namespace or f"demo-{uuid.uuid4().hex[:6]}"
    merged = load_config("stf_datataking_default", {"stf_count": stf_count})
    progress = DemoProgress(namespace, execution_id=f"demo-{time.strftime('%Y%m%d-%H%M%S')}", run_id=1,
                            expected_stfs=None)

    def on_delivery(delivery: object) -> None:
        try:
            progress.observe(parse_message(delivery.body))  # type: ignore[attr-defined]
        except MessageError:
            progress.invalid += 1

    watcher = BrokerClient(settings, client_name="demo-watch").start()
    for dest in (RUN_TOPIC, data_topic(namespace), HEARTBEAT_TOPIC):
        watcher.subscribe(dest, on_delivery, ack="auto")
    agents: list[Agent] = [
        DataAgent("data", namespace, broker=settings, heartbeat_interval=2.0),
        ProcessingAgent("processing", namespace, broker=settings, heartbeat_interval=2.0,
                        processing_time=processing_time, time_scale=time_scale),
    ]
    publisher = BrokerClient(settings, client_name="daqsim").start()
    try:
        for agent in agents:
            agent.start()
        if on_start:
            on_start(progress)
        sim = DaqSimulator(merged.daq, lambda msg: publisher.send(RUN_TOPIC, msg), namespace=namespace,
                           sender="daqsim", execution_id=progress.execution_id, run_id=progress.run_id)
        sim_thread = threading.Thread(target=sim.run, kwargs={"time_scale": time_scale}, daemon=True)
        sim_thread.start()
        try:
            progress.done.wait(timeout)
        except KeyboardInterrupt:
            sim.stop()
            sim_thread.join(10)
            raise
        sim_thread.join(10)
        time.sleep(0.5)  # let the last heartbeats in
    finally:
        for agent in agents:
            agent.shutdown()
        publisher.close()
        watcher.close()
    return progress

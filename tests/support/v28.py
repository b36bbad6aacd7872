"""The exact bodies and REST payloads of an ePIC v28 run (from the wire document), and a publisher
that sends them.

Not the legacy-agent program (that is tests/compat/): only the shapes, so
that each test can publish or post them in the order it needs.
"""

from __future__ import annotations

import json
from typing import Any

import stomp

from swf_testbed.testing.brokers import BrokerProcess

ZONE = "America/New_York"
"""The zone the tests read v28 naive times in (SWF_LEGACY_TIMEZONE)."""


class V28Run:
    """One v28 run: its execution, run number, namespace and n STF files, with naive local times."""

    def __init__(
        self,
        namespace: str,
        execution_id: str,
        run_number: int,
        stf_count: int = 3,
        day: str = "2026-07-01",
    ) -> None:
        self.namespace, self.execution_id, self.run_number = namespace, execution_id, run_number
        self.stf_count = stf_count
        self.day = day
        self.sender = "daq_simulator-agent-alice-1"

    def time(self, second: int) -> str:
        """A naive local time (``datetime.now().isoformat()`` of the v28 agents), ``second`` s after
        10:00.
        """
        return f"{self.day}T10:{second // 60:02d}:{second % 60:02d}.000100"

    def filename(self, seq: int) -> str:
        return f"swf.{self.run_number}.{seq:06d}.stf"

    def _common(self, msg_type: str, second: int, **fields: Any) -> dict[str, Any]:
        return {
            "msg_type": msg_type,
            "namespace": self.namespace,
            "sender": self.sender,
            "execution_id": self.execution_id,
            "run_id": str(self.run_number),
            "timestamp": self.time(second),
            "simulation_tick": float(second),
            **fields,
        }

    def run_imminent(self) -> dict[str, Any]:
        return self._common("run_imminent", 0, state="beam", substate="not_ready")

    def start_run(self) -> dict[str, Any]:
        return self._common("start_run", 1, state="run", substate="physics")

    def stf_gen(self, seq: int) -> dict[str, Any]:
        return self._common(
            "stf_gen",
            1 + seq,
            filename=self.filename(seq),
            sequence=seq,
            state="run",
            substate="physics",
        )

    def end_run(self) -> dict[str, Any]:
        return self._common("end_run", 2 + self.stf_count, total_stf_files=self.stf_count)

    def slice(self, seq: int, slice_id: int) -> dict[str, Any]:
        return {
            "msg_type": "slice",
            "run_id": self.run_number,
            "created_at": f"{self.day}T14:00:{slice_id:02d}",
            "content": {
                "run_id": self.run_number,
                "execution_id": self.execution_id,
                "req_id": f"00000000-0000-4000-8000-{slice_id:012d}",
                "filename": self.filename(seq),
                "tf_filename": f"swf.{self.run_number}.{seq:06d}_slice_{slice_id:03d}.tf",
                "slice_id": slice_id,
                "start": slice_id * 66,
                "end": slice_id * 66 + 65,
                "tf_count": 66,
                "state": "queued",
                "substate": "new",
            },
        }

    def lifecycle(self) -> list[dict[str, Any]]:
        """The runner's messages on /topic/epictopic, in order."""
        return [
            self.run_imminent(),
            self.start_run(),
            *(self.stf_gen(i) for i in range(1, self.stf_count + 1)),
            self.end_run(),
        ]

    # ----------------------------------------------------------- REST payloads (wire doc, in order)

    def execution_payload(self, definition_id: int) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "workflow_definition": definition_id,
            "namespace": self.namespace,
            "status": "running",
            "executed_by": "alice",
            "start_time": self.time(0),
            "parameter_values": {"stf_count": self.stf_count},
        }

    def run_state_payload(self) -> dict[str, Any]:
        return {
            "run_number": self.run_number,
            "phase": "initializing",
            "state": "imminent",
            "substate": "preparing",
            "target_worker_count": 4,
            "active_worker_count": 0,
            "stf_samples_received": 0,
            "slices_created": 0,
            "slices_queued": 0,
            "slices_processing": 0,
            "slices_completed": 0,
            "slices_failed": 0,
            "state_changed_at": self.time(0),
            "metadata": {
                "execution_id": self.execution_id,
                "stf_sampling_rate": 1.0,
                "slices_per_sample": 15,
            },
        }

    def run_payload(self) -> dict[str, Any]:
        """The data agent's POST /api/runs/: no execution, no namespace."""
        return {
            "run_number": self.run_number,
            "start_time": self.time(0),
            "run_conditions": {"beam_energy": 18, "detector": "ePIC"},
        }

    def stf_payload(self, run_id: int, seq: int) -> dict[str, Any]:
        return {
            "run": run_id,
            "stf_filename": self.filename(seq),
            "file_size_bytes": 1000 + seq,
            "machine_state": "physics",
            "status": "registered",
            "metadata": {
                "created_by": "data-agent-alice-2",
                "substate": "physics",
                "start": self.time(seq),
                "end": self.time(seq + 1),
                "sequence": seq,
            },
        }


class V28Publisher:
    """Publishes as the v28 BaseAgent does: stomp.py, STOMP 1.1, its connect headers, JSON bodies,
    no ids of ours.
    """

    def __init__(self, broker: BrokerProcess, agent_name: str) -> None:
        self.conn = stomp.Connection(
            [(broker.host, broker.port)], heartbeats=(30000, 30000), vhost=broker.host
        )
        self.conn.connect(
            broker.extra.get("ACTIVEMQ_USER", "admin"),
            broker.extra.get("ACTIVEMQ_PASSWORD", "admin"),
            wait=True,
            headers={"client-id": agent_name},
        )

    def send(self, destination: str, body: dict[str, Any] | str) -> None:
        self.conn.send(
            destination=destination, body=body if isinstance(body, str) else json.dumps(body)
        )

    def close(self) -> None:
        self.conn.disconnect()

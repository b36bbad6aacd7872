"""A 10-STF run as the agents report it, recorded the way the ingest records it (shared by the
figure tests).

The DAQ takes data for 10 s (start_run → end_run, with a standby in the
middle); the last slice result arrives 4 s after end_run, still carrying the
run/physics state its worker saw. Heartbeats carry the agents' own counters.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from swf_testbed import messages as msgs

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
EXECUTION = "exec-figures"
RUN = 4242
NS = "figs"
STF_COUNT = 10
DATA_COUNTERS = {
    "received": 31,
    "handled": 31,
    "sent": 20,
    "stf_registered": STF_COUNT,
    "runs_registered": 1,
}
PROCESSING_COUNTERS = {"received": 12, "handled": 12, "sent": 10, "stf_processed": STF_COUNT}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def _run(
    cls: type[Any], t: float, state: str = "run", substate: str = "physics", **fields: Any
) -> bytes:
    return cls(
        namespace=NS,
        sender=fields.pop("sender", "daq"),
        execution_id=EXECUTION,
        run_id=RUN,
        state=state,
        substate=substate,
        timestamp=at(t),
        **fields,
    ).to_bytes()


def heartbeat(agent: str, counters: dict[str, int], t: float) -> bytes:
    return msgs.Heartbeat(
        namespace=NS,
        sender=agent,
        agent_name=agent,
        agent_type=agent,
        instance_id=f"{agent}-1",
        pid=100,
        hostname="host",
        operational_state="READY",
        interval_s=30,
        counters=counters,
        timestamp=at(t),
    ).to_bytes()


def bodies() -> list[bytes]:
    out = [
        msgs.WorkflowStarted(
            namespace=NS,
            sender="runner",
            execution_id=EXECUTION,
            workflow_name="stf_datataking",
            timestamp=at(-1),
        ).to_bytes(),
        _run(msgs.RunImminent, -0.5, state="beam", substate="not_ready"),
        _run(msgs.StartRun, 0),
    ]
    for seq in range(STF_COUNT):
        t = 0.5 + seq
        substate = "standby" if seq == 5 else "physics"
        if seq == 5:
            out.append(_run(msgs.PauseRun, t - 0.2, substate="standby"))
        if seq == 6:
            out.append(_run(msgs.ResumeRun, t - 0.2))
        out.append(
            _run(
                msgs.StfGen,
                t,
                substate=substate,
                filename=f"swf.{RUN}.{seq:06d}.stf",
                sequence=seq,
                size_bytes=1000,
                checksum="0000000a",
                tf_count=4,
                start=at(t - 1).isoformat(),
                end=at(t).isoformat(),
            )
        )
    out.append(_run(msgs.EndRun, 10, state="beam", substate="not_ready", total_stf_files=STF_COUNT))
    # a v28-style repeat of end_run (another sender): the same transition, not a second one
    out.append(
        _run(
            msgs.EndRun,
            10.05,
            state="beam",
            substate="not_ready",
            total_stf_files=STF_COUNT,
            sender="runner",
        )
    )
    for i in range(3):  # slices finishing after the run ended
        kwargs = {"slice_id": i, "tf_filename": f"swf.{RUN}.000009.tf", "sender": f"worker-{i}"}
        out.append(
            _run(
                msgs.Slice,
                9.5,
                stf_filename=f"swf.{RUN}.000009.stf",
                tf_first=i,
                tf_last=i,
                tf_count=1,
                **kwargs,
            )
        )
        out.append(
            _run(
                msgs.SliceResult,
                12 + i,
                worker_id=f"worker-{i}",
                status="completed",
                processing_time_s=1.23456 + i,
                **kwargs,
            )
        )
    out.append(
        msgs.WorkflowCompleted(
            namespace=NS,
            sender="runner",
            execution_id=EXECUTION,
            workflow_name="stf_datataking",
            stf_count=STF_COUNT,
            timestamp=at(10.1),
        ).to_bytes()
    )
    out += [heartbeat("data", DATA_COUNTERS, 15), heartbeat("processing", PROCESSING_COUNTERS, 15)]
    out += [heartbeat("data", {}, 1)]  # an older heartbeat arriving late changes nothing
    return out

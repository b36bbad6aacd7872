"""``python -m tests.compat.legacy_agents``: one fast-processing run of the v28 agents; report as
JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from .agents import (
    Context,
    DataAgent,
    FastMonAgent,
    FastProcessingAgent,
    LegacyAgent,
    RunOptions,
    WorkflowRunner,
)
from .wire import LegacyEnv


def run(ctx: Context, *, finish_timeout_s: float = 600.0) -> dict[str, Any]:
    """Start the agents, run the workflow, wait until every agent has handled ``end_run``; the
    report.
    """
    consumers: list[LegacyAgent] = [DataAgent(ctx), FastMonAgent(ctx), FastProcessingAgent(ctx)]
    runner = WorkflowRunner(ctx)
    started: list[LegacyAgent] = []
    report: dict[str, Any] = {
        "namespace": ctx.namespace,
        "options": dataclasses.asdict(ctx.options),
        "completed": False,
    }
    try:
        for agent in [*consumers, runner]:
            agent.start()
            started.append(agent)
        report["agents"] = {a.app_name: a.name for a in started}
        t0 = time.monotonic()
        report["execution_id"], report["run_number"] = runner.run()
        report["daq_s"] = time.monotonic() - t0
        for agent in consumers:
            if not agent.run_done.wait(max(1.0, finish_timeout_s - (time.monotonic() - t0))):
                ctx.errors.append(f"{agent.name}: end_run not handled after {finish_timeout_s:g} s")
        report["end_to_end_s"] = time.monotonic() - t0
        report["completed"] = all(agent.run_done.is_set() for agent in consumers)
    except Exception as exc:  # noqa: BLE001 - the report says what went wrong
        ctx.errors.append(f"run failed: {exc!r}")
    finally:
        for agent in started:
            agent.stop(exited=agent is not runner)  # a run-once runner never sends EXITED
    o = ctx.options
    report.update(
        stfs=o.stfs,
        sampled=sum(o.sampled(k) for k in range(1, o.stfs + 1)),
        errors=ctx.errors,
        calls=[{**dataclasses.asdict(c), "endpoint": c.endpoint} for c in ctx.calls.calls],
        messages=ctx.sent,
    )
    report["slices"] = report["sampled"] * o.slices_per_sample
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    calls = report["calls"]
    failed = [c for c in calls if not (c["status"] is not None and 200 <= c["status"] < 300)]
    return {
        "completed": report["completed"],
        "ok": report["completed"] and not report["errors"] and not failed,
        "execution_id": report.get("execution_id"),
        "run_number": report.get("run_number"),
        "stfs": report["stfs"],
        "sampled": report["sampled"],
        "end_to_end_s": report.get("end_to_end_s"),
        "rest_calls": len(calls),
        "rest_failed": len(failed),
        "log_posts": sum(1 for c in calls if c["anonymous"]),
        "messages": len(report["messages"]),
        "errors": report["errors"][:20],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.compat.legacy_agents", description=__doc__
    )
    parser.add_argument("--stfs", type=int, default=10, help="STFs in the run")
    parser.add_argument(
        "--sampling", type=float, default=1.0, help="fraction of STFs sampled for fast processing"
    )
    parser.add_argument("--slices", type=int, default=15, help="slices per sample")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument(
        "--paced", action="store_true", help="real time: the DAQ waits the simulated times"
    )
    pace.add_argument("--unpaced", action="store_true", help="as fast as it goes (the default)")
    parser.add_argument(
        "--stf-interval", type=float, default=0.6, help="simulated seconds between STFs"
    )
    parser.add_argument(
        "--pause-after", type=int, default=0, help="pause_run after this STF (0: no pause)"
    )
    parser.add_argument("--namespace", default="", help="default: legacy-<user>")
    parser.add_argument(
        "--heartbeat-interval", type=float, default=60.0, help="seconds between heartbeats"
    )
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="longest wait for the agents to finish"
    )
    parser.add_argument(
        "--report", type=Path, help="write the whole report (every call, every message) here"
    )
    args = parser.parse_args(argv)
    options = RunOptions(
        stfs=args.stfs,
        sampling_rate=args.sampling,
        slices_per_sample=args.slices,
        paced=args.paced,
        stf_interval_s=args.stf_interval,
        pause_after=args.pause_after,
        heartbeat_interval_s=args.heartbeat_interval,
    )
    ctx = Context(LegacyEnv.from_environ(), "", options)
    ctx.namespace = args.namespace or f"legacy-{ctx.user}"
    report = run(ctx, finish_timeout_s=args.timeout)
    if args.report:
        args.report.write_text(json.dumps(report, indent=1, default=str))
    result = summary(report)
    print(json.dumps(result, default=str), flush=True)
    return 0 if report["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())

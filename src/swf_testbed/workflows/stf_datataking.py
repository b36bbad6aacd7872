"""The ``stf_datataking`` workflow: one simulated DAQ run drives the agents.

The DAQ simulator (:class:`~swf_testbed.daq.simulator.DaqSimulator`) runs one
run with the merged config's ``[daq]`` section and publishes its run messages
through the context. What the agents need to know about the run travels in
``run_imminent``'s ``run_conditions``:

``workflow``
    name, version, config name, execution id, source module, git commit;
``processing_time``
    seconds of prompt processing per STF, when the config has it;
``fast_processing``
    the ``[fast_processing]`` section when the config has one (e.g.
    ``fast_processing_default``): its presence is what makes fastmon, the
    fast-processing agent and the workers take part in the run;
``time_scale``, ``expected_stf_files``, ``tf_per_stf`` …
    added by the simulator itself.

Agents take a run's parameters from these conditions and fall back to their
own options for runs that do not carry them.
"""

from __future__ import annotations

from typing import Any

from swf_testbed.daq.simulator import DaqSimulator
from swf_testbed.workflows.config import MergedConfig
from swf_testbed.workflows.registry import WorkflowContext, WorkflowOutcome, workflow

VERSION = "1.0"
"""Bumped whenever what this workflow does changes."""

NAME = "stf_datataking"


def run_conditions(ctx: WorkflowContext) -> dict[str, Any]:
    """What the agents learn about the run from ``run_imminent``."""
    definition = ctx.definition
    conditions: dict[str, Any] = {
        "workflow": {
            "name": definition.name,
            "version": definition.version,
            "module": definition.module,
            "git_commit": definition.git_commit,
            "config": ctx.config.name,
            "execution_id": ctx.execution_id,
        },
    }
    processing_time = ctx.config.get("processing_time")
    if isinstance(processing_time, (int, float)) and not isinstance(processing_time, bool):
        conditions["processing_time"] = float(processing_time)
    fast = ctx.config.fast_processing
    if fast is not None:
        conditions["fast_processing"] = fast.model_dump(mode="json")
    return conditions


def check_config(config: MergedConfig) -> None:
    """The config must have a valid [daq] section."""
    config.daq  # noqa: B018 - raises ConfigError when there is none


@workflow(NAME, version=VERSION, default_config="stf_datataking_default", check_config=check_config)
def run(ctx: WorkflowContext) -> WorkflowOutcome:
    """STF datataking: the DAQ simulator drives one run (fast processing when the config has it)."""
    sim = DaqSimulator(
        ctx.config.daq,
        ctx.emit,
        namespace=ctx.namespace,
        sender=ctx.sender,
        execution_id=ctx.execution_id,
        run_id=ctx.run_id,
        run_conditions=run_conditions(ctx),
    )
    ctx.on_stop(sim.stop)
    summary = sim.run(time_scale=ctx.time_scale, duration=ctx.duration, pace=ctx.pace)
    return WorkflowOutcome(
        stf_count=summary.stf_count,
        end_reason=summary.end_reason or "completed",
        run_started=summary.run_started,
        details={"seed": summary.seed, "timings": summary.timings},
    )

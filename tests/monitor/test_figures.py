"""The figures the monitor shows (durations, counters, rates, states), computed on the models and
plots.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.front import plots
from swf_testbed.monitor.front.templatetags.monitor_tags import duration, seconds_h

from . import runscenario as sc

pytestmark = pytest.mark.django_db


@pytest.fixture
def recorded(record: Any) -> m.WorkflowExecution:
    record(*sc.bodies())
    return m.WorkflowExecution.objects.get(execution_id=sc.EXECUTION)


def test_execution_has_its_daq_time_and_the_time_until_its_work_was_done(
    recorded: m.WorkflowExecution,
) -> None:
    assert recorded.daq_span == (sc.at(0), sc.at(10))  # start_run → the first end_run
    assert recorded.daq_duration == timedelta(seconds=10)
    assert recorded.work_end == sc.at(
        14
    )  # the last slice result, after end_run and workflow_completed
    assert recorded.work_duration == timedelta(seconds=15)  # from workflow_started at -1 s
    run = m.Run.objects.get(run_number=sc.RUN)
    assert run.daq_duration == timedelta(seconds=10)


def test_an_execution_without_runs_has_no_daq_time(db: None) -> None:
    execution = m.WorkflowExecution.objects.create(
        execution_id="e0",
        status=m.ExecutionStatus.COMPLETED,
        start_time=sc.at(0),
        end_time=sc.at(0.4),
    )
    assert execution.daq_span == (None, None) and execution.daq_duration is None
    assert execution.work_duration == timedelta(seconds=0.4)
    assert duration(execution.work_duration) == "400 ms"  # not "0 s"


def test_agent_stf_counters_are_the_ones_its_newest_heartbeat_carried(
    recorded: m.WorkflowExecution,
) -> None:
    data = m.SystemAgent.objects.get(instance_name="data")
    assert data.stf_counters == [("stf registered", sc.STF_COUNT)]
    processing = m.SystemAgent.objects.get(instance_name="processing")
    assert processing.stf_counters == [("stf processed", sc.STF_COUNT)]


def test_a_v28_agent_keeps_its_rest_stf_counts(db: None) -> None:
    agent = m.SystemAgent.objects.create(
        instance_name="legacy", current_stf_count=2, total_stf_processed=7
    )
    assert agent.stf_counters == [("current", 2), ("total processed", 7)]
    assert m.SystemAgent.objects.create(instance_name="idle").stf_counters == []


def test_end_run_is_listed_once_and_ends_the_state(recorded: m.WorkflowExecution) -> None:
    events = m.SystemStateEvent.history([sc.RUN])
    types = [e.event_type for e in events]
    assert types == ["run_imminent", "start_run", "pause_run", "resume_run", "end_run"]
    assert (
        m.SystemStateEvent.objects.filter(event_type="end_run").count() == 2
    )  # both recorded, one shown
    assert events[-1].shown_state == ("ended", "")


def test_a_slice_finished_after_end_run_does_not_bring_back_run_physics(
    recorded: m.WorkflowExecution,
) -> None:
    state = m.RunState.objects.get(run_number=sc.RUN)
    assert state.slices_completed == 3
    assert state.shown_state == "ended"
    events = m.SystemStateEvent.history([sc.RUN])
    timeline = plots.state_timeline(
        [("run", [(e.timestamp, *e.shown_state) for e in events])], sc.at(14)
    )
    last = timeline.rows[0].segments[-1]
    assert last.label == "ended" and last.colour == plots.STATE_COLOURS["ended"]
    assert [s.label for s in timeline.rows[0].segments].count("run/standby") == 1


def test_stf_rate_bins_are_round_and_named_and_rates_are_per_second() -> None:
    times = [sc.at(0.5 + i) for i in range(10)]
    chart = plots.rate_chart(times, "STF", start=sc.at(0), end=sc.at(30))
    assert chart.bin_s == 0.5 and chart.bin_text == "0.5 s"
    assert chart.peak == pytest.approx(2.0)  # one file in a 0.5 s bin is 2/s
    assert sum(b.h > 0 for b in chart.bars) == 10
    # the same events over the same span: the same bins and rates, whichever page asks
    again = plots.rate_chart(list(reversed(times)), "STF", start=sc.at(0), end=sc.at(30))
    assert again.bars == chart.bars
    wide = plots.rate_chart(times, "STF", start=sc.at(0), end=sc.at(600))
    assert wide.bin_text == "10 s" and wide.peak == pytest.approx(1.0)


def test_plots_have_time_and_value_ticks() -> None:
    chart = plots.rate_chart(
        [sc.at(i) for i in range(0, 120, 3)], "x", start=sc.at(0), end=sc.at(120)
    )
    assert [t.label for t in chart.x_ticks][:3] == ["12:00:00", "12:00:15", "12:00:30"]
    assert all(
        plots.MARGIN_LEFT <= t.pos <= plots.WIDTH - plots.MARGIN_RIGHT for t in chart.x_ticks
    )
    labels = [t.label for t in chart.y_ticks]
    assert labels[0] == "0" and len(labels) >= 3
    positions = [t.pos for t in chart.y_ticks]
    assert positions == sorted(positions, reverse=True)  # higher values higher up


def test_ticks_of_a_run_that_took_milliseconds_name_milliseconds() -> None:
    chart = plots.rate_chart(
        [sc.at(0.001 * i) for i in range(10)], "x", start=sc.at(0), end=sc.at(0.02)
    )
    labels = [t.label for t in chart.x_ticks]
    assert labels[:2] == ["12:00:00.000", "12:00:00.005"] and chart.bin_text == "1 ms"


def test_times_are_rounded_for_people() -> None:
    assert seconds_h(1.23456) == "1.2 s"
    assert seconds_h(0.0421) == "0.04 s"
    assert duration(timedelta(seconds=0.0021)) == "2 ms"
    assert seconds_h(125.4) == "2 min 5 s"
    assert duration(timedelta(seconds=59.6)) == "60 s"
    assert duration(timedelta(seconds=3.04)) == "3.0 s"

"""What the orchestrator's commands show: the health table, a run's progress, and how a run ended.

The state of following a run is :class:`swf_testbed.orchestrator.follow.Follow`;
:class:`FollowRenderer` shows its ticks (a live view on a terminal, a line
every few seconds otherwise) and :func:`report_end` says how the run ended,
with the exit code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from swf_testbed.cli.common import console
from swf_testbed.cli.output import EXIT_INTERRUPTED, fail, say, warn
from swf_testbed.orchestrator.checks import ProcessHealth
from swf_testbed.orchestrator.follow import Follow, Tick, drained
from swf_testbed.orchestrator.monitor_api import ExecutionFigures
from swf_testbed.orchestrator.session import ProgressSnapshot, ProgressStatus

LINE_EVERY_S = 5.0
"""Without a terminal: a progress line this often."""


# --------------------------------------------------------------------------- health


LIVENESS_COLOURS = {
    "ok": "green",
    "late": "yellow",
    "down": "red",
    "exited": "dim",
    "gone": "dim",
    "unknown": "yellow",
    "n/a": "dim",
}


def _supervisord_cell(h: ProcessHealth) -> Text:
    if h.remote:
        return Text("-", style="dim")
    style = "green" if h.state == "RUNNING" else ("yellow" if h.state == "STARTING" else "red")
    return Text(h.state, style=style)


def health_table(health: list[ProcessHealth], title: str | None = None) -> Group:
    """The processes' health: a table that fits 80 columns with names that never break, then each
    process's detail in full on its own line. Agents run elsewhere show ``-`` for supervisord."""
    table = Table(
        title=title,
        title_justify="left",
        box=None,
        pad_edge=False,
        padding=(0, 1),
        collapse_padding=True,  # one space between columns: the host fits in 80 too
        header_style="bold",
    )
    for col in ("program", "host", "supervisord", "pid", "heartbeat", "liveness", "state"):
        if col == "host":  # a long host name is cut, never a program name
            table.add_column(col, no_wrap=True, overflow="ellipsis", max_width=12)
        else:
            table.add_column(col, no_wrap=True)
    details: list[Text] = []
    for h in health:
        age = f"{h.heartbeat_age:.1f} s ago" if h.heartbeat_age is not None else "-"
        table.add_row(
            h.process,
            h.host or "-",
            _supervisord_cell(h),
            str(h.pid or "-"),
            age if h.kind == "agent" else "-",
            Text(h.liveness_text, style=LIVENESS_COLOURS.get(h.liveness_text, "")),
            h.operational_state or ("-" if h.kind == "agent" else h.kind),
        )
        if h.detail:
            details.append(Text(f"{h.process}: ", style="bold") + Text(h.detail))
    return Group(table, *details)


# --------------------------------------------------------------------------- progress


def _run_text(s: ProgressSnapshot) -> str:
    return str(s.run_id) if s.run_id is not None else "-"


def progress_line(s: ProgressSnapshot) -> str:
    return (
        f"[{s.elapsed_s:.0f} s] {s.status} run {_run_text(s)} {s.daq_state or '-'}: "
        f"STFs produced {s.stf_produced}, ready {s.stf_ready}, processed {s.stf_processed}; "
        f"samples {s.samples}; slices {s.slices_done} done, {s.slices_failed} failed; "
        f"{s.stf_gen_per_s:.2f} STF/s (last {s.rate_window_s:g} s)"
    )


def progress_view(s: ProgressSnapshot, monitor_url: str) -> Group:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("execution", s.execution_id or "(waiting for the runner)")
    table.add_row("workflow", s.workflow_name or "-")
    good = s.status in (ProgressStatus.RUNNING, ProgressStatus.COMPLETED)
    table.add_row("status", Text(s.status, style="green" if good else "yellow"))
    table.add_row("run", f"{_run_text(s)}  {s.daq_state or ''}")
    table.add_row(
        "STFs",
        f"produced {s.stf_produced}  ready {s.stf_ready}  processed "
        f"{s.stf_processed}  ({s.stf_gen_per_s:.2f}/s produced, "
        f"{s.processed_per_s:.2f}/s processed, last {s.rate_window_s:g} s)",
    )
    table.add_row("samples", str(s.samples))
    table.add_row(
        "slices",
        f"{s.slices} sent  {s.slices_done} done  {s.slices_failed} failed  "
        f"({s.slices_per_s:.2f}/s, last {s.rate_window_s:g} s)",
    )
    table.add_row("elapsed", f"{s.elapsed_s:.0f} s")
    if s.execution_id:
        table.add_row("monitor", execution_url(monitor_url, s.execution_id))
    return Group(table)


def execution_url(monitor_url: str, execution_id: str | None) -> str:
    return f"{monitor_url}/executions/{execution_id}/"


class FollowRenderer:
    """Shows a followed run: a live view on a terminal; else its events and a line now and then."""

    def __init__(
        self,
        monitor_url: str,
        *,
        live: bool | None = None,
        out: Console | None = None,
    ) -> None:
        self.monitor_url = monitor_url
        self.out = out or console
        self.use_live = self.out.is_terminal if live is None else live
        self.live: Live | None = None
        self._last_line = float("-inf")

    def start(self, snap: ProgressSnapshot) -> None:
        if self.use_live:
            self.live = Live(
                progress_view(snap, self.monitor_url),
                console=self.out,
                refresh_per_second=4,
                transient=False,
            )
            self.live.start()

    def print(self, text: str, style: str = "") -> None:
        if self.live is not None:
            self.live.console.print(Text(text, style=style), soft_wrap=True)
        else:
            self.out.print(Text(text, style=style), soft_wrap=True)

    def announce(self, snap: ProgressSnapshot) -> None:
        self.print(
            f"execution {snap.execution_id}: {execution_url(self.monitor_url, snap.execution_id)}"
        )

    def show(self, tick: Tick, now: float | None = None) -> None:
        """One tick: the announcement, new events (no terminal), the live view or a line."""
        snap = tick.snapshot
        if tick.announce:
            self.announce(snap)
        if self.live is None:
            for event in tick.events:
                self.print(event)
            now = time.monotonic() if now is None else now
            if tick.end is None and snap.execution_id and now - self._last_line >= LINE_EVERY_S:
                self._last_line = now
                self.print(progress_line(snap), "dim")
        else:
            self.live.update(progress_view(snap, self.monitor_url))
        for alert in tick.alerts:  # shown above a live view too: someone should look
            self.print(alert, "yellow")
        if tick.stop_requested:
            self.print(f"stopping execution {snap.execution_id} (Ctrl+C again to exit now)")

    def stop(self, snap: ProgressSnapshot) -> None:
        """End the live view (its last state stays on the screen)."""
        if self.live is not None:
            self.live.update(progress_view(snap, self.monitor_url))
            self.live.stop()
            self.live = None


# --------------------------------------------------------------------------- how it ended


@dataclass(frozen=True)
class RunContext:
    """What the end-of-run report needs besides the snapshot."""

    namespace: str
    monitor_url: str
    drain_timeout: float
    interrupted: bool
    running_elsewhere: str | None = None  # the execution that made the runner refuse


def _pending(f: ExecutionFigures, produced: int) -> str:
    if f.slices:
        return f"{f.slices - f.slices_done - f.slices_failed} of {f.slices} slices"
    return f"{max(produced - f.stf_processed, 0)} of {produced} STFs"


def _not_drained(
    snap: ProgressSnapshot, f: ExecutionFigures, ctx: RunContext, lost: bool
) -> typer.Exit:
    produced = snap.produced
    missing = produced - f.stf_processed
    dropped = ""
    if lost:
        # after a broker restart the shortfall is most likely loss, not slowness: say so
        dropped = (
            "\nthe broker connection was lost during the run: messages in flight then were "
            "probably lost (the embedded broker keeps nothing across a restart); "
            f"the monitor's record: {execution_url(ctx.monitor_url, snap.execution_id)}"
        )
    unsliced = f.samples_unsliced
    return fail(
        f"the agents did not catch up within {ctx.drain_timeout:g} s of the run's end: "
        f"{f.stf_processed} of {produced} STFs processed"
        f"{f' ({missing} missing)' if missing > 0 else ''}, "
        f"{f.slices_done + f.slices_failed} of {f.slices} slices settled"
        f"{f', {unsliced} sample(s) never sliced' if unsliced else ''}{dropped}"
    )


def _completed(snap: ProgressSnapshot, follow: Follow, ctx: RunContext) -> int:
    f, from_record = follow.final_figures(snap)
    url = execution_url(ctx.monitor_url, snap.execution_id)
    if ctx.interrupted and not drained(snap, f):
        # the run ended, the agents had not caught up: it is not "completed" for the person
        # who pressed Ctrl+C, and the agents go on with it
        warn(
            f"interrupted while {_pending(f, snap.produced)} were still in progress (the workers "
            f"carry on; `swf-testbed status` shows them)"
        )
        say(f"monitor: {url}")
        return EXIT_INTERRUPTED
    slices = f", {f.slices_done} of {f.slices} slices done" if f.slices else ""
    say(
        f"workflow completed: execution {snap.execution_id}, {snap.produced} STFs produced, "
        f"{f.stf_processed} processed{slices} ({snap.elapsed_s:.1f} s)",
        "green",
    )
    say(f"monitor: {url}")
    if from_record:
        say(
            "(processed and slice figures from the monitor's record: the broker connection was "
            "lost during the run, and what this command saw of it is incomplete)"
        )
    if ctx.interrupted:
        return EXIT_INTERRUPTED
    if not drained(snap, f) and (f.stf_processed or f.slices):  # (no processing agent: no wait)
        raise _not_drained(snap, f, ctx, follow.connection_lost)
    return 0


def report_end(snap: ProgressSnapshot, follow: Follow, ctx: RunContext) -> int:
    """Say how the run ended; the exit code (raises typer.Exit for a failure)."""
    eid = snap.execution_id
    if snap.status is ProgressStatus.COMPLETED:
        return _completed(snap, follow, ctx)
    if snap.status is ProgressStatus.TERMINATED:
        tail = "" if snap.end_run else " (no end_run seen)"
        if ctx.interrupted:
            say(f"workflow stopped: execution {eid} terminated{tail}", "yellow")
            return EXIT_INTERRUPTED
        raise fail(f"execution {eid} was terminated (stop_workflow from elsewhere){tail}")
    if snap.status is ProgressStatus.REFUSED:
        hint = f" (execution {ctx.running_elsewhere})" if ctx.running_elsewhere else ""
        raise fail(
            f"the workflow runner refused: {snap.error}{hint}\n"
            f"a workflow is already running in namespace {ctx.namespace}; follow it with "
            f"`swf-testbed run --attach`, or wait for it to end"
        )
    raise fail(f"workflow failed: execution {eid or '-'}: {snap.error}")

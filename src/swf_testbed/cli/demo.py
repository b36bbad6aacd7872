"""``swf-testbed demo``: one simulated run through the agents, watched live."""

from __future__ import annotations

import threading
import time
from typing import Annotated

import typer
from rich.live import Live
from rich.table import Table

from swf_testbed.cli.common import console, err_console


def _render(progress: "DemoProgress", started: float) -> Table:  # noqa: F821
    from swf_testbed.demo import DemoProgress  # noqa: F401

    with progress.lock:
        c = dict(progress.counts)
        agents = dict(progress.agents)
        expected = progress.expected_stfs
        state = progress.daq_state
    table = Table(title=f"namespace {progress.namespace} · execution {progress.execution_id} · run {progress.run_id}",
                  title_justify="left", expand=False)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("DAQ state", state)
    total = "?" if expected is None else str(expected)
    table.add_row("STFs generated (stf_gen)", f"{c.get('stf_gen', 0)} / {total}")
    table.add_row("STFs registered (stf_ready)", str(c.get("stf_ready", 0)))
    table.add_row("STFs processed (processing_complete)", str(c.get("processing_complete", 0)))
    for name, hb in sorted(agents.items()):
        age = max(0.0, time.time() - hb.timestamp.timestamp())
        handled = hb.counters.get("handled", 0)
        table.add_row(f"agent {name}", f"{hb.operational_state.value} · handled {handled} · heartbeat {age:.0f}s ago")
    table.add_row("elapsed", f"{time.monotonic() - started:.1f} s")
    return table


def demo(
    stf_count: Annotated[int, typer.Option(help="STFs in the run.", min=1)] = 10,
    time_scale: Annotated[float, typer.Option(help="Simulated seconds per real second.", min=0.01)] = 10.0,
    namespace: Annotated[str | None, typer.Option(help="Namespace (default: a fresh one).")] = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 300.0,
) -> None:
    """Run one simulated DAQ run through the data and processing agents on the embedded defaults."""
    import logging

    from swf_testbed.demo import ensure_broker, run_demo
    from swf_testbed.settings import get_settings

    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("swf_testbed").setLevel(logging.WARNING)  # the live table says it all

    settings = get_settings().broker
    try:
        broker = ensure_broker(settings)
    except (ConnectionError, RuntimeError) as exc:
        err_console.print(f"[red]no broker:[/red] {exc}")
        raise typer.Exit(1) from None
    where = f"{settings.host}:{settings.port}"
    console.print(f"broker: {'embedded, started at ' + where if broker else 'already running at ' + where}")
    started = time.monotonic()
    live_holder: dict[str, object] = {}
    stop_render = threading.Event()

    def on_start(progress: object) -> None:
        def refresh() -> None:
            with Live(_render(progress, started), console=console, refresh_per_second=4) as live:  # type: ignore[arg-type]
                while not stop_render.wait(0.25):
                    live.update(_render(progress, started))  # type: ignore[arg-type]
                live.update(_render(progress, started))  # type: ignore[arg-type]

        thread = threading.Thread(target=refresh, daemon=True)
        live_holder["thread"] = thread
        thread.start()

    try:
        progress = run_demo(settings, namespace=namespace, stf_count=stf_count, time_scale=time_scale,
                            timeout=timeout, on_start=on_start)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: the run was stopped (end_run sent)[/yellow]")
        raise typer.Exit(130) from None
    finally:
        stop_render.set()
        thread = live_holder.get("thread")
        if isinstance(thread, threading.Thread):
            thread.join(2)
        if broker is not None:
            broker.stop()
    if progress.finished:
        console.print(f"[green]run complete:[/green] {progress.expected_stfs} STFs generated, registered and "
                      f"processed in {time.monotonic() - started:.1f} s")
        return
    c = progress.counts
    err_console.print(
        f"[red]run incomplete:[/red] expected {progress.expected_stfs} STFs; saw stf_gen {c['stf_gen']}, "
        f"stf_ready {c['stf_ready']}, processing_complete {c['processing_complete']}"
    )
    raise typer.Exit(1)

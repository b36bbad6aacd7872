"""A real 10-STF run (`swf-testbed run`, the whole agent chain), then its monitor pages in Chromium.

The execution page shows both durations (DAQ time and time until the work
was done) and never "0 s", every plot has its axes, and the agents pages show
the agents' own STF counters. Screenshots of every page and plot go to the
test's output directory (its path is printed; run with ``-s`` to see it).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest

from swf_testbed.testing.brokers import free_port
from tests.monitor.browserlib import browser, needs_chromium  # noqa: F401 - browser is a fixture

from .conftest import Bed, ok
from .test_end_to_end import full_chain_toml

pytestmark = [pytest.mark.slow, needs_chromium]

STFS = 10


def _plots_readable(page: Any, shots: Path, prefix: str) -> int:
    figures = page.locator("figure.plot")
    width = page.locator("main").bounding_box()["width"]
    for i in range(figures.count()):
        figure = figures.nth(i)
        assert figure.locator("svg").bounding_box()["width"] >= 0.9 * width - 48, (prefix, i)
        assert len(figure.locator("text.x-tick").all_text_contents()) >= 3, (prefix, i)
        if figure.locator("rect.segment").count() == 0:
            assert figure.locator("text.y-tick").all_text_contents()[0] == "0", (prefix, i)
        figure.screenshot(path=str(shots / f"{prefix}-plot-{i}.png"))
    return figures.count()


def test_a_real_run_shows_true_durations_plots_with_axes_and_the_agents_counters(
    make_bed: Any,
    browser: Any,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    print(f"\nscreenshots in {shots}")
    bed: Bed = make_bed("monitorpages")
    port = free_port()
    namespace = f"pages{port}"
    # as fast as possible (time_scale 0): the DAQ takes milliseconds; the page says so, not "0 s"
    bed.write(
        full_chain_toml(
            namespace,
            port,
            f"sqlite:///{tmp_path / 'monitor.sqlite3'}",
            parameters=f"stf_count = {STFS}",
        )
    )
    out = ok(bed.cli("run", timeout=300))
    assert f"{STFS} STFs produced, {STFS} processed" in out, out
    execution_id = out.split("workflow completed: execution ")[1].split(",")[0]
    monitor = f"http://127.0.0.1:{port}"

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        page.goto(f"{monitor}/executions/{execution_id}/")
        daq = page.locator("#daq-time").inner_text()
        work = page.locator("#work-time").inner_text()
        readable = r"^(< 1 ms|[1-9]\d* ms|[1-9]\d*(\.\d)? s|\d+ min)"  # never "0 s"
        assert re.match(readable, daq), daq
        assert re.match(readable, work), work
        segments = page.locator("rect.segment")
        states = {segments.nth(i).get_attribute("data-state") for i in range(segments.count())}
        assert {"run/physics", "ended"} <= states, states
        assert "→" in daq and "still taking data" not in daq, daq
        assert (
            _plots_readable(page, shots, "execution") == 3
        )  # run state, STF rate, slices completed
        page.screenshot(path=str(shots / "execution.png"), full_page=True)

        # the agents' own counters: each STF registered by data and processed by processing, once
        wanted = {"data": f"stf registered {STFS}", "processing": f"stf processed {STFS}"}
        deadline = time.monotonic() + 60
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            page.goto(f"{monitor}/agents/?namespace={namespace}")
            seen = {
                name: page.locator("tr", has=page.locator("a", has_text=re.compile(f"^{name}$")))
                .first.locator("td.stf-counters")
                .inner_text()
                for name in wanted
            }
            if all(text in seen[name] for name, text in wanted.items()):
                break
            time.sleep(1.0)  # the next heartbeat carries the final counters
        assert all(text in seen[name] for name, text in wanted.items()), seen
        page.screenshot(path=str(shots / "agents.png"), full_page=True)

        page.goto(f"{monitor}/")
        _plots_readable(page, shots, "dashboard")
        assert (
            "heartbeat" not in page.locator("h2:has-text('Latest messages') + table").inner_text()
        )
        page.screenshot(path=str(shots / "dashboard.png"), full_page=True)
        page.goto(f"{monitor}/messages/?execution_id={execution_id}")
        page.locator("#message-table tr[data-msg-id]").first.wait_for()
        page.screenshot(path=str(shots / "messages.png"), full_page=True)
        page.goto(f"{monitor}/logs/?execution_id={execution_id}")
        assert page.locator("h1").first.inner_text().startswith("Application logs")
        page.locator("#live").wait_for()
        page.screenshot(path=str(shots / "logs.png"), full_page=True)
    finally:
        context.close()
        ok(bed.cli("stop", "--all", "-c", str(bed.toml)))

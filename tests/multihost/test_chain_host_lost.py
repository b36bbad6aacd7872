"""The chain's host cut off mid-run: the run waits, says who went silent, resumes, loses nothing.

Host A runs ActiveMQ and the monitor, and is where ``swf-testbed run`` is
typed (every agent is remote to it); B runs the chain with durable topic
subscriptions (as docs/operations.md recommends), C four workers. B's link
is cut while the DAQ is producing. ``run`` reports B's agents silent by
their heartbeats, then back once the link returns; what the workers sent B's
agents meanwhile waited in their durable subscriptions, B's own sends waited
in its agents' outboxes, and the run completes with every STF and every
slice recorded once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from swf_testbed.testing.brokers import BrokerProcess
from swf_testbed.testing.hosts import Host
from tests.orchestrator.conftest import shutdown_all
from tests.support.collect import eventually

from .testbeds import (
    CHAIN,
    NAMESPACE,
    MakeHosts,
    Output,
    Site,
    agent_toml,
    control_host_toml,
    count,
    monitor_api,
    monitor_host_toml,
    ok,
    rows,
    run_number_of,
    services_toml,
    socket_url,
    workers_host_toml,
)

pytestmark = [pytest.mark.slow, pytest.mark.activemq]

STFS = 24
SLICES_PER_SAMPLE = 5
SLICES = STFS * SLICES_PER_SAMPLE
WORKERS = 4
TIME_SCALE = 20
# at 20x: an STF every second, half a second a slice; the DAQ is still producing at the cut
PARAMETERS = "stf_interval = 20.0\nslice_processing_time = 10.0\n"
OUTAGE_S = 6.0  # how long B stays cut once run has seen its agents silent (the scenario)
WAIT = 180.0  # s, for each step of the scenario
# quick STOMP heart-beats: ActiveMQ drops B's dead connections, B's agents notice theirs
QUICK_BEATS = 'env = { ACTIVEMQ_HEARTBEAT_MS = "2000" }\n'


def chain_toml(a: Host) -> str:
    """Host B: the chain, its topic subscriptions durable."""
    extra = "options = { durable = true }\n" + QUICK_BEATS
    return (
        f'[testbed]\nnamespace = "{NAMESPACE}"\nstart_timeout = 120\n\n'
        + "".join(agent_toml(name, module, extra) for name, module in CHAIN)
        + services_toml(a)
    )


def test_the_chain_host_cut_off_mid_run_resumes_and_loses_nothing(
    make_hosts: MakeHosts,
    activemq_on: Callable[[Host], BrokerProcess],
    fresh_postgres_database: str,
    tmp_path: Path,
) -> None:
    hosts = make_hosts(["a", "b", "c"])
    a, b, c = hosts["a"], hosts["b"], hosts["c"]
    sites = {name: Site(host, tmp_path / name) for name, host in (("a", a), ("b", b), ("c", c))}
    sites["ctl"] = Site(a, tmp_path / "ctl")  # where run is typed, beside the monitor
    try:
        activemq_on(a)
        sites["a"].write(monitor_host_toml(a, socket_url(fresh_postgres_database)))
        sites["b"].write(chain_toml(a))
        sites["c"].write(workers_host_toml(a, "worker_c", WORKERS, QUICK_BEATS))
        remote = {name: (b, 1) for name, _ in CHAIN} | {"worker_c": (c, WORKERS)}
        sites["ctl"].write(
            control_host_toml(
                a,
                remote,
                stfs=STFS,
                slices_per_sample=SLICES_PER_SAMPLE,
                time_scale=TIME_SCALE,
                parameters=PARAMETERS,
            )
        )
        for name in "abc":
            ok(sites[name].cli("up"))
        run = sites["ctl"].popen("run")
        out = Output(run)
        execution_id = out.execution_id(WAIT)

        with a.inside(), monitor_api(a) as api:
            run_number = run_number_of(api, execution_id, WAIT)

            def stfs() -> int:
                return count(api, "/stf-files/", run_number=run_number)

            eventually(lambda: 4 <= stfs(), WAIT, "the DAQ producing")
            stfs_at_cut = stfs()
            assert stfs_at_cut < STFS, "the run was over before the cut: slow the DAQ down"
            cut_at = time.time()
            b.cut()

            def silent_lines() -> list[str]:
                return [line for line in out.lines if line.startswith("silent: ")]

            eventually(silent_lines, WAIT, "run reporting B's agents silent")
            silent_at = time.time()
            # agents whose last beats fell on either side of one of run's checks are reported in
            # two lines, a moment apart
            eventually(
                lambda: all(any(name in line for line in silent_lines()) for name, _ in CHAIN),
                WAIT,
                "run reporting every agent of B silent",
            )
            for line in silent_lines():
                assert line.split(" on ")[1].startswith(b.hostname), line
                assert "worker_c" not in line, line
            stfs_in_outage = stfs()
            time.sleep(OUTAGE_S)  # the outage itself: B stays cut for a while
            stalled = stfs() - stfs_in_outage  # nothing new reached the monitor from B meanwhile
            b.restore()
            restored_at = time.time()
            eventually(lambda: "back: " in out.text, WAIT, "run reporting B's agents back")
            back_at = time.time()
            assert run.wait(timeout=WAIT) == 0, out.text
            done_at = time.time()

            assert f"{STFS} STFs produced, {STFS} processed" in out.text, out.text
            assert f"{SLICES} of {SLICES} slices done" in out.text, out.text
            assert "agents silent during the run:" in out.text, out.text
            assert count(api, "/stf-files/", run_number=run_number) == STFS
            assert count(api, "/tf-slices/", run_number=run_number) == SLICES
            assert count(api, "/tf-slices/", run_number=run_number, status="completed") == SLICES
            results = rows(
                api, "/workflow-messages/", execution_id=execution_id, msg_type="slice_result"
            )
            done = {
                (r["message_content"]["tf_filename"], r["message_content"]["slice_id"])
                for r in results
            }
            assert len(done) == SLICES
            assert stalled == 0
            print(
                f"\nhost B cut at STF {stfs_at_cut} of {STFS}: run reported its agents silent "
                f"after {silent_at - cut_at:.1f} s, back {back_at - restored_at:.1f} s after "
                f"the restore; run complete {done_at - restored_at:.1f} s after the restore; "
                f"{len(results)} results for {SLICES} slices; lost 0\n"
                + "".join(line for line in out.lines if line.startswith(("silent: ", "back: ")))
            )
    finally:
        for site in sites.values():
            shutdown_all(site.dir / "home")

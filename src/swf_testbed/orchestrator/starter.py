"""The commented starter ``testbed.toml`` written by ``swf-testbed init``.

``examples/testbed.toml`` in the repository is this text rendered with the
namespace ``example`` (a test keeps the two equal).
"""

from __future__ import annotations

import getpass
import re

EXAMPLE_NAMESPACE = "example"

STARTER = """\
# testbed.toml: one testbed instance. `swf-testbed run` reads it, starts what
# it names under the testbed's own supervisord, waits until every agent is
# healthy, then runs the workflow and follows it. Every key is checked: a typo
# is an error, never silently ignored. Reference: docs/orchestrator.md.

[testbed]
namespace = "{namespace}"       # this instance; its runs and commands are its own
# start_timeout = 120            # seconds to wait for every program to be healthy

[workflow]
name = "stf_datataking"
config = "fast_processing_default"   # a workflow config shipped with the package;
                                     # "stf_datataking_default": without the fast chain
duration = 0                    # seconds of simulated time, 0 = until the run is done
time_scale = 100                # N = N x real time, 1 = real time, 0 = as fast as agents keep up
# realtime = true               # shorthand for time_scale = 1 (give one of the two)

[parameters]                    # overrides of the workflow config, checked by the runner
stf_count = 10
stf_sampling_rate = 0.5         # ePIC's 0.05 would rarely sample a run this short, and at 0.2
                                # about 1 run of 10 STFs in 9 had no sample, so no slices

# Agents: what is named here is what runs. `module` runs a Python agent class
# with `swf-testbed agent run`; `script` runs a command line as written (it
# gets SWF_NAMESPACE, SWF_AGENT_NAME, SWF_HEARTBEAT_INTERVAL and the broker
# settings in its environment). Keys: enabled, module | script, instances,
# args, env, heartbeat_interval, drain_timeout, options, log_level (its log
# records sent to the monitor: "WARNING" and above by default) and log_buffer.

[agents.runner]                 # receives run_workflow, drives the simulated DAQ
module = "swf_testbed.agents.runner:WorkflowRunner"
heartbeat_interval = 5

[agents.data]                   # registers runs and STFs, announces stf_ready
module = "swf_testbed.agents.data:DataAgent"
heartbeat_interval = 5

[agents.processing]             # prompt processing of every STF
module = "swf_testbed.agents.processing:ProcessingAgent"
heartbeat_interval = 5
# options = {{ processing_time = 1.0 }}
# enabled = false               # any agent can be switched off

[agents.fastmon]                # samples TFs of STFs for fast monitoring
module = "swf_testbed.agents.fastmon:FastMonAgent"

[agents.fast_processing]        # cuts samples into slices for the workers
module = "swf_testbed.agents.fast_processing:FastProcessingAgent"

[agents.worker]                 # processes slices (competing consumers)
module = "swf_testbed.agents.worker:WorkerAgent"
instances = 2

# Services. "embedded": supervisord runs them on this machine (the defaults).
# "external": use one that runs elsewhere. The environment wins over these
# addresses: ACTIVEMQ_HOST / ACTIVEMQ_PORT, SWF_MONITOR_URL, DATABASE_URL.

[broker]
mode = "embedded"               # the small STOMP broker shipped with swf-testbed
host = "127.0.0.1"
port = {broker_port}

[monitor]
mode = "embedded"               # web UI + REST API, and the ingest (broker -> database)
host = "127.0.0.1"
port = {monitor_port}
# url = "https://monitor.example.org"   # for mode = "external"

[database]
url = ""                        # empty: SQLite in the runtime directory; or postgres://...
"""


def default_namespace() -> str:
    """The user's name, made a valid namespace."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name (containers): fall back
        user = ""
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", user).strip("-._")[:64]
    return name or "testbed"


DEFAULT_PORTS = {"broker": 61613, "monitor": 8002}
"""The embedded services' ports the starter file asks for, when they are free."""


def render(
    namespace: str | None = None,
    *,
    broker_port: int = DEFAULT_PORTS["broker"],
    monitor_port: int = DEFAULT_PORTS["monitor"],
) -> str:
    """The starter file for ``namespace`` (default: the user's name)."""
    return STARTER.format(
        namespace=namespace or default_namespace(),
        broker_port=broker_port,
        monitor_port=monitor_port,
    )


def choose_ports(
    defaults: dict[str, int] | None = None, host: str = "127.0.0.1"
) -> tuple[dict[str, int], list[str]]:
    """Ports for the starter file: the defaults where they are free now, else free ones near them;
    and a line for each port that was taken (who holds it)."""
    from swf_testbed.orchestrator.ports import bindable, free_port_near, holders

    chosen, notes = {}, []
    taken: set[int] = set()
    for service, port in (defaults or DEFAULT_PORTS).items():
        if bindable(host, port) and port not in taken:
            chosen[service] = port
        else:
            chosen[service] = free_port_near(port, host)
            while chosen[service] in taken:
                chosen[service] = free_port_near(chosen[service], host)
            who = ", ".join(h.describe() for h in holders(port)) or "another process"
            notes.append(
                f"port {port} (the {service}'s default) is in use by {who}: "
                f"wrote [{service}] port = {chosen[service]} instead"
            )
        taken.add(chosen[service])
    return chosen, notes

"""``swf-testbed agent``: run one agent process."""

from __future__ import annotations

from typing import Annotated

import typer

from swf_testbed.cli.common import err_console

agent_app = typer.Typer(help="Run and inspect agents.", no_args_is_help=True)


@agent_app.command("run")
def run_agent(
    target: Annotated[str, typer.Argument(help="The agent class, as package.module:ClassName.")],
    name: Annotated[
        str, typer.Option(help="Stable logical name of this agent.", envvar="SWF_AGENT_NAME")
    ],
    namespace: Annotated[str, typer.Option(help="Testbed namespace.", envvar="SWF_NAMESPACE")],
    heartbeat_interval: Annotated[float, typer.Option(help="Seconds between heartbeats.")] = 30.0,
    workers: Annotated[int, typer.Option(help="Handler threads.")] = 4,
    max_attempts: Annotated[
        int, typer.Option(help="Tries before a failing message is dead-lettered.")
    ] = 3,
    drain_timeout: Annotated[
        float, typer.Option(help="Seconds to finish running handlers on stop.")
    ] = 10.0,
    log_level: Annotated[
        str,
        typer.Option(
            help="Lowest level of the log records sent to the monitor (DEBUG, INFO, WARNING, "
            "ERROR, CRITICAL; NONE: none).",
            envvar="SWF_AGENT_LOG_LEVEL",
        ),
    ] = "WARNING",
    log_buffer: Annotated[
        int,
        typer.Option(
            help="Log records held for the monitor while they cannot be sent; more are dropped and "
            "counted.",
            envvar="SWF_AGENT_LOG_BUFFER",
            min=1,
        ),
    ] = 1000,
    option: Annotated[
        list[str] | None, typer.Option("--set", help="Agent option key=value (JSON values).")
    ] = None,
) -> None:
    """Run an agent until SIGTERM/SIGINT/SIGQUIT."""
    from swf_testbed.agents.loader import AgentLoadError, load_agent_class, parse_options

    try:
        cls = load_agent_class(target)
        options = parse_options(option or [])
        agent = cls(
            name,
            namespace,
            heartbeat_interval=heartbeat_interval,
            workers=workers,
            max_attempts=max_attempts,
            drain_timeout=drain_timeout,
            log_level=None if log_level.upper() == "NONE" else log_level,
            log_buffer=log_buffer,
            **options,
        )
    except (AgentLoadError, TypeError, ValueError) as exc:
        err_console.print(f"[red]cannot start agent:[/red] {exc}")
        raise typer.Exit(2) from None
    raise typer.Exit(agent.run())

"""testbed.toml validation, `init`, and the generated supervisord config (no processes but one)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from swf_testbed.orchestrator.config import ConfigError, LoadedConfig, load, parse, resolve_services
from swf_testbed.orchestrator.starter import EXAMPLE_NAMESPACE, choose_ports, render
from swf_testbed.orchestrator.supervisor import build_programs, prepare, render_conf, runtime_paths
from swf_testbed.settings import Settings

from .conftest import REPO

MINIMAL = '[testbed]\nnamespace = "t1"\n'


def problems(text: str, **kw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, "testbed.toml", **kw)
    return str(info.value)


def test_minimal_config_has_defaults() -> None:
    cfg = parse(MINIMAL)
    assert cfg.namespace == "t1"
    assert cfg.broker.mode == "embedded" and cfg.monitor.mode == "embedded"
    assert cfg.workflow.name == "stf_datataking" and cfg.agents == {}


def test_missing_namespace() -> None:
    assert problems("[testbed]\n") == "testbed.toml: testbed.namespace: missing (required)"
    assert problems("") == "testbed.toml: testbed: missing (required)"


def test_wrong_type_names_file_key_and_expectation() -> None:
    text = (
        MINIMAL
        + '[agents.processing]\nenabled = "yes"\n'
        + 'module = "swf_testbed.agents.processing:ProcessingAgent"\n'
    )
    assert (
        problems(text)
        == "testbed.toml: agents.processing.enabled: expected a boolean (true or false), got 'yes'"
    )
    assert "workflow.duration: expected a number, got 'long'" in problems(
        MINIMAL + '[workflow]\nduration = "long"\n'
    )
    assert "agents.w.instances: expected an integer, got 2.5" in problems(
        MINIMAL + '[agents.w]\nscript = "x"\ninstances = 2.5\n'
    )


def test_unknown_keys_and_sections_are_errors() -> None:
    msg = problems(
        MINIMAL + '[agents.data]\nmodule = "a.b:C"\nheartbeat_intervall = 3\n', check_modules=False
    )
    assert (
        "agents.data.heartbeat_intervall: unknown key (did you mean 'heartbeat_interval'?)" in msg
    )
    assert "testbed.toml: workflows: unknown section (did you mean 'workflow'?)" in problems(
        MINIMAL + "[workflows]\n"
    )
    assert "broker.mode: expected 'embedded' or 'external', got 'local'" in problems(
        MINIMAL + '[broker]\nmode = "local"\n'
    )


def test_bad_toml_reports_line_and_column() -> None:
    msg = problems('[testbed]\nnamespace = "x"\nenabled = \n')
    assert msg.startswith("testbed.toml: line 3, column")
    assert "invalid TOML" in msg


def test_workflow_speed_and_agent_rules() -> None:
    assert "workflow: give realtime or time_scale, not both" in problems(
        MINIMAL + "[workflow]\nrealtime = true\ntime_scale = 10\n"
    )
    assert "agents.data: an enabled agent needs module" in problems(MINIMAL + "[agents.data]\n")
    parse(MINIMAL + "[agents.data]\nenabled = false\n")  # a disabled placeholder is fine
    assert "give module or script, not both" in problems(
        MINIMAL + '[agents.d]\nmodule = "a.b:C"\nscript = "run-me"\n', check_modules=False
    )
    assert "'broker' is the name of a testbed service" in problems(
        MINIMAL + '[agents.broker]\nscript = "x"\n'
    )
    assert "agents.bad name: agent names are letters" in problems(
        MINIMAL + '[agents."bad name"]\nscript = "x"\n'
    )
    assert "agents.d.module: cannot find module 'no_such_pkg.agents'" in problems(
        MINIMAL + '[agents.d]\nmodule = "no_such_pkg.agents:Agent"\n'
    )
    assert "module: expected 'package.module:Class'" in problems(
        MINIMAL + '[agents.d]\nmodule = "not a module"\n', check_modules=False
    )
    assert "agents.d.env.X: a value may not begin or end with a quote" in problems(
        MINIMAL + '[agents.d]\nscript = "x"\nenv = { X = \'"quoted"\' }\n'
    )
    assert "agents.d.script: newlines and ' ;'" in problems(
        MINIMAL + '[agents.d]\nscript = "a ; b"\n'
    )
    assert "testbed.namespace: expected letters" in problems('[testbed]\nnamespace = "a b"\n')


def test_environment_wins_over_file_for_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL + (
        '[broker]\nmode = "external"\nhost = "mq.example.org"\nport = 61000\n'
        '[monitor]\nmode = "external"\nurl = "https://mon.example.org/"\n'
        '[database]\nurl = "sqlite:///file.db"\n'
    )
    cfg = parse(text)
    for var in ("ACTIVEMQ_HOST", "ACTIVEMQ_PORT", "SWF_MONITOR_URL", "DATABASE_URL"):
        monkeypatch.delenv(var, raising=False)
    plain = resolve_services(cfg, Settings())
    assert plain.broker_address == "mq.example.org:61000"
    assert plain.monitor_url == "https://mon.example.org"
    assert plain.database_url == "sqlite:///file.db"
    monkeypatch.setenv("ACTIVEMQ_PORT", "62000")
    monkeypatch.setenv("SWF_MONITOR_URL", "http://other:9000")
    monkeypatch.setenv("DATABASE_URL", "postgres://db/x")
    env = resolve_services(cfg, Settings())
    assert env.broker_address == "mq.example.org:62000"
    assert env.monitor_url == "http://other:9000" and env.monitor_port == 9000
    assert env.database_url == "postgres://db/x"


def test_init_writes_the_example_and_refuses_to_overwrite(tmp_path: Path) -> None:
    from swf_testbed.cli import app

    runner = CliRunner()
    target = tmp_path / "testbed.toml"
    result = runner.invoke(app, ["init", str(target), "--namespace", EXAMPLE_NAMESPACE])
    assert result.exit_code == 0, result.output
    text = target.read_text()
    assert render(EXAMPLE_NAMESPACE) == (REPO / "examples" / "testbed.toml").read_text()
    ports, _notes = choose_ports()  # the defaults, unless something on this machine holds them
    assert text == render(
        EXAMPLE_NAMESPACE, broker_port=ports["broker"], monitor_port=ports["monitor"]
    )
    cfg = load(target).config  # validates, modules of enabled agents included
    assert set(cfg.enabled_agents()) == {
        "runner",
        "data",
        "processing",
        "fastmon",
        "fast_processing",
        "worker",
    }
    result = runner.invoke(app, ["init", str(target)])
    assert result.exit_code == 1 and "exists" in result.output
    assert runner.invoke(app, ["init", str(target), "--force", "-n", "other"]).exit_code == 0
    assert load(target).namespace == "other"
    assert parse(render()).namespace  # the default namespace (user name) is valid


def test_run_with_a_bad_file_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    (tmp_path / "testbed.toml").write_text(
        '[testbed]\nnamespace = "t2"\n[agents.p]\nenabled = "yes"\n'
    )
    home = tmp_path / "home"
    env = {"SWF_HOME": str(home), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "swf_testbed.cli", "run"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert (
        "testbed.toml: agents.p.enabled: expected a boolean (true or false), got 'yes'"
        in result.stderr
    )
    assert not home.exists()


def test_generated_config_parses_in_supervisord(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from supervisor.options import ServerOptions

    monkeypatch.delenv("ACTIVEMQ_HOST", raising=False)
    monkeypatch.delenv("ACTIVEMQ_PORT", raising=False)
    (tmp_path / "testbed.toml").write_text(
        MINIMAL
        + """
[agents.proc]
module = "swf_testbed.agents.processing:ProcessingAgent"
options = { processing_time = 0.5, label = "50% done" }
args = ["--workers", "2"]
heartbeat_interval = 2
drain_timeout = 7

[agents.sh]
script = "my-agent --rate 10%"
args = ["two words"]
env = { GREETING = 'say "hi" now', SHARE = "/data/x,y" }

[agents.worker]
module = "swf_testbed.agents.worker:WorkerAgent"
instances = 3

[agents.off]
enabled = false
module = "swf_testbed.agents.fastmon:FastMonAgent"

[broker]
port = 61999
[monitor]
mode = "external"
"""
    )
    loaded = load(tmp_path / "testbed.toml")
    settings = Settings(home=tmp_path / "home")
    services = resolve_services(loaded.config, settings)
    paths = runtime_paths(settings.home, "t1")
    programs, notices = build_programs(
        loaded, services, settings.home, paths, python="/opt/py/bin/python"
    )
    names = [p.name for p in programs]
    assert names == ["broker", "watch", "proc", "sh", "worker"]
    prepare(paths)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render_conf(paths, programs, "t1"))
    options = ServerOptions()
    options.configfile = str(conf)
    section = options.read_config(str(conf))
    groups = {g.name: g for g in section.process_group_configs}
    proc = groups["proc"].process_configs[0]
    argv = shlex.split(proc.command)
    assert argv[:6] == [
        "/opt/py/bin/python",
        "-m",
        "swf_testbed.cli",
        "agent",
        "run",
        "swf_testbed.agents.processing:ProcessingAgent",
    ]
    assert (
        "--name" not in argv and argv[argv.index("--namespace") + 1] == "t1"
    )  # the name comes from the env
    assert (
        'label="50% done"' in argv
        and "processing_time=0.5" in argv
        and argv[-2:] == ["--workers", "2"]
    )
    assert (
        proc.stopwaitsecs > 7
        and proc.autorestart.__name__ == "RestartUnconditionally"
        and proc.stopsignal == 15
    )
    assert proc.environment["SWF_AGENT_NAME"] == "proc"
    assert proc.environment["ACTIVEMQ_PORT"] == "61999"
    sh = groups["sh"].process_configs[0]
    assert sh.command == "my-agent --rate 10% 'two words'"
    assert sh.environment["GREETING"] == 'say "hi" now' and sh.environment["SHARE"] == "/data/x,y"
    workers = groups["worker"].process_configs
    assert [w.name for w in workers] == ["worker_00", "worker_01", "worker_02"]
    assert [w.environment["SWF_AGENT_INSTANCE"] for w in workers] == ["0", "1", "2"]
    # each instance has its own stable logical name, the one supervisord gives the process
    assert [w.environment["SWF_AGENT_NAME"] for w in workers] == [
        "worker_00",
        "worker_01",
        "worker_02",
    ]
    assert str(workers[1].stdout_logfile).endswith("logs/worker_01.log")
    broker = groups["broker"].process_configs[0]
    assert shlex.split(broker.command)[3:] == [
        *("broker", "--host", "127.0.0.1", "--port", "61999"),
        *("--data-dir", str(paths.root / "broker")),  # its journal, in the namespace's directory
    ]
    assert isinstance(loaded, LoadedConfig) and notices == []


def test_socket_path_stays_short(tmp_path: Path) -> None:
    short = runtime_paths(tmp_path, "ns")
    assert short.socket == tmp_path.absolute() / "ns" / "supervisord.sock"
    deep = runtime_paths(tmp_path / ("d" * 90), "ns")
    assert len(str(deep.socket)) <= 100 and deep.socket.parent.name.startswith("swf-")
    assert runtime_paths(tmp_path / ("d" * 90), "other").socket != deep.socket


def test_agent_module_found_on_its_own_pythonpath(tmp_path: Path) -> None:
    """A module outside the testbed's environment is fine when the agent's env PYTHONPATH has it."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "my_private_agent.py").write_text("X = 1\n")
    agent = '[agents.mine]\nmodule = "my_private_agent:Agent"\n'
    (tmp_path / "testbed.toml").write_text(MINIMAL + agent + 'env = { PYTHONPATH = "mine" }\n')
    assert "mine" in load(tmp_path / "testbed.toml").config.agents
    (tmp_path / "testbed.toml").write_text(MINIMAL + agent)
    with pytest.raises(
        ConfigError, match="agents.mine.module: cannot find module 'my_private_agent'"
    ):
        load(tmp_path / "testbed.toml")


def test_parameters_are_checked_against_the_workflow_config_all_problems_at_once() -> None:
    text = (
        MINIMAL + '[workflow]\nconfig = "fast_processing_default"\n'
        '[parameters]\nstf_count = "ten"\nstf_sampling_rate = 2.0\nstf_cuont = 3\n'
        "stf_interval = 0.5\n"
    )
    lines = problems(text).splitlines()
    assert lines == [
        "testbed.toml: parameters.stf_count: expected an integer, got 'ten' (workflow config "
        "'fast_processing_default')",
        "testbed.toml: parameters.stf_sampling_rate: input should be less than or equal to 1, "
        "got 2.0 "
        "(workflow config 'fast_processing_default')",
        "testbed.toml: parameters.stf_cuont: not a parameter of workflow config "
        "'fast_processing_default' "
        "(did you mean 'stf_count'?)",
    ]
    # the schema's problems and the parameters' together
    lines = problems(
        MINIMAL + '[workflow]\ntime_scale = "fast"\n[parameters]\nslices_per_sample = 3\n'
        "[broker]\nport = 0\n"
    ).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("testbed.toml: workflow.time_scale: expected a number")
    assert lines[1].startswith("testbed.toml: broker.port: ")
    assert lines[2] == (
        "testbed.toml: parameters.slices_per_sample: not a parameter of workflow config "
        "'stf_datataking_default' (known parameters: " + lines[2].split("(known parameters: ")[1]
    )
    assert "stf_count" in lines[2]
    assert problems(MINIMAL + '[workflow]\nconfig = "nope"\n[parameters]\nstf_count = 1\n') == (
        "testbed.toml: workflow.config: unknown workflow config 'nope'; available: "
        "daq_state_machine, "
        "fast_processing_default, stf_datataking_default"
    )
    cfg = parse(
        MINIMAL + '[workflow]\nconfig = "fast_processing_default"\n'
        '[parameters]\nstf_count = 5\nstf_interval = 1\n"daq.physics_period_count" = 3\n'
    )
    assert cfg.parameters == {"stf_count": 5, "stf_interval": 1, "daq.physics_period_count": 3}


def test_init_chooses_free_ports_when_the_defaults_are_taken() -> None:
    import os
    import socket

    with socket.socket() as busy:  # stands for a default port someone else's service holds
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            free = probe.getsockname()[1]
        ports, notes = choose_ports({"broker": taken, "monitor": free})
        assert ports["monitor"] == free and ports["broker"] not in (taken, free)
        assert len(notes) == 1, notes
        assert notes[0].startswith(
            f"port {taken} (the broker's default) is in use by pid {os.getpid()} ("
        )
        assert notes[0].endswith(f"): wrote [broker] port = {ports['broker']} instead"), notes
        with socket.socket() as check:
            check.bind(("127.0.0.1", ports["broker"]))  # what was written is free
    text = render("p", broker_port=ports["broker"], monitor_port=ports["monitor"])
    cfg = parse(text)
    assert (cfg.broker.port, cfg.monitor.port) == (ports["broker"], ports["monitor"])


def test_agent_log_level_and_buffer_reach_the_agent_process(tmp_path: Path) -> None:
    from supervisor.options import ServerOptions

    text = (
        MINIMAL
        + """
[agents.proc]
module = "swf_testbed.agents.processing:ProcessingAgent"
log_level = "INFO"
log_buffer = 50

[agents.quiet]
module = "swf_testbed.agents.processing:ProcessingAgent"
"""
    )
    (tmp_path / "testbed.toml").write_text(text)
    loaded = load(tmp_path / "testbed.toml")
    settings = Settings(home=tmp_path / "home")
    paths = runtime_paths(settings.home, "t1")
    programs, _ = build_programs(
        loaded,
        resolve_services(loaded.config, settings),
        settings.home,
        paths,
        python="/opt/py/bin/python",
    )
    prepare(paths)
    conf = tmp_path / "supervisord.conf"
    conf.write_text(render_conf(paths, programs, "t1"))
    options = ServerOptions()
    options.configfile = str(conf)
    groups = {g.name: g for g in options.read_config(str(conf)).process_group_configs}
    proc, quiet = groups["proc"].process_configs[0], groups["quiet"].process_configs[0]
    # `swf-testbed agent run` reads these (its --log-level / --log-buffer)
    assert (proc.environment["SWF_AGENT_LOG_LEVEL"], proc.environment["SWF_AGENT_LOG_BUFFER"]) == (
        "INFO",
        "50",
    )
    assert (
        quiet.environment["SWF_AGENT_LOG_LEVEL"],
        quiet.environment["SWF_AGENT_LOG_BUFFER"],
    ) == ("WARNING", "1000")
    wrong = problems(
        MINIMAL + '[agents.a]\nmodule = "m.n:C"\nlog_level = "LOUD"\nlog_buffer = 0\n',
        check_modules=False,
    )
    assert "agents.a.log_level" in wrong and "'WARNING'" in wrong
    assert "agents.a.log_buffer" in wrong


def test_a_remote_agent_is_declared_not_run(tmp_path: Path) -> None:
    text = (
        MINIMAL
        + '[agents.worker_c]\nremote = true\ninstances = 4\nhost = "host-c"\n\n'
        + '[agents.fast]\nmodule = "swf_testbed.agents.processing:ProcessingAgent"\n'
    )
    (tmp_path / "testbed.toml").write_text(text)
    loaded = load(tmp_path / "testbed.toml")
    assert list(loaded.config.remote_agents()) == ["worker_c"]
    assert list(loaded.config.local_agents()) == ["fast"]
    settings = Settings(home=tmp_path / "home")
    programs, _ = build_programs(
        loaded,
        resolve_services(loaded.config, settings),
        settings.home,
        runtime_paths(settings.home, "t1"),
    )
    assert [p.name for p in programs if p.kind == "agent"] == ["fast"]
    wrong = problems(MINIMAL + '[agents.a]\nmodule = "m.n:C"\nhost = "h"\n', check_modules=False)
    assert "agents.a: host is for remote agents (remote = true)" in wrong
    missing = problems(MINIMAL + "[agents.a]\ninstances = 2\n", check_modules=False)
    assert "or remote = true when it runs elsewhere" in missing

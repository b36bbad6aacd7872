"""Hostile testbed.toml and workflow-config values, through the real loaders and the real CLI.

Whatever a file holds, the loader gives either a config the testbed can run
(its supervisord config renders) or its own :class:`ConfigError`, whose
lines name the file and the dotted key: never a raw ``KeyError``,
``TypeError``, ``OverflowError``, ``RecursionError`` or traceback.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swf_testbed.orchestrator.config import ConfigError, LoadedConfig, parse, resolve_services
from swf_testbed.orchestrator.supervisor import build_programs, render_conf, runtime_paths
from swf_testbed.settings import Settings
from swf_testbed.workflows import config as wf

FILE = "fuzz.toml"
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BASE: dict[str, Any] = {
    "testbed": {"namespace": "fuzz", "start_timeout": 30.0, "description": "fuzzed"},
    "workflow": {"name": "stf_datataking", "config": "stf_datataking_default", "duration": 0.0},
    "parameters": {"stf_count": 3},
    "agents": {
        "data": {
            "module": "swf_testbed.agents.data:DataAgent",
            "heartbeat_interval": 1.0,
            "instances": 1,
            "drain_timeout": 2.0,
            "args": ["--x"],
            "env": {"PYTHONPATH": "."},
            "options": {"k": 1},
        },
        "tool": {"script": "sleep 1000", "enabled": True},
    },
    "broker": {"mode": "embedded", "host": "127.0.0.1", "port": 61613},
    "monitor": {"mode": "embedded", "host": "127.0.0.1", "port": 8002},
    "database": {"url": ""},
}
"""A valid testbed.toml (as data): each example changes one key of it."""


# --------------------------------------------------------------------------- writing TOML


def _toml_str(text: str) -> str:
    # JSON string escapes are TOML basic-string escapes, except that TOML also wants DEL escaped
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_key(key: str) -> str:
    return _toml_str(key)


def toml_value(value: Any) -> str:
    """One TOML value (inline tables and arrays for nesting)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(type(value))


def toml_document(data: dict[str, Any]) -> str:
    return "".join(f"{_toml_key(k)} = {toml_value(v)}\n" for k, v in data.items())


# --------------------------------------------------------------------------- hostile values

_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=40)
_scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**63 - 1, -(2**63), 10**9, 10**18, 10**40, 10**300]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300, 5e-324, 1e308, -1e308, float("inf"), float("nan")]),
    _text,
    st.sampled_from(
        [
            "",
            " ",
            "../../etc/passwd",
            "/etc/passwd",
            "a\nb",
            "x ; y",
            "x # y",
            "é",
            "\u202e",
            "\x00",
            "'\"",
            "%(here)s",
            "http://[x",
            "http://a:99999",
            "127.0.0.1\n[program:x]",
        ]
    ),
    st.datetimes(timezones=st.none()),
)
hostile = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_text, inner, max_size=3)),
    max_leaves=6,
)


def _paths(data: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for key, value in data.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += _paths(value, (*prefix, key))
    return out


EXISTING = _paths(BASE)
UNKNOWN = [
    ("zzz",),
    ("testbed", "zzz"),
    ("agents", "data", "zzz"),
    ("broker", "portt"),
    ("monitor", "url"),
    ("workflow", "time_scale"),
    ("workflow", "realtime"),
    ("agents", "data", "env", "VAR"),
    ("agents", "data", "env", "bad name"),
    ("agents", "new-agent"),
    ("agents", "é"),
    ("agents", "broker"),
    ("parameters", "stf_count"),
]


def _set(data: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    node = out
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return out


def _named_key(line: str) -> str:
    """``fuzz.toml: agents.data.port: what`` → ``agents.data.port``."""
    assert line.startswith(f"{FILE}: "), line
    rest = line[len(FILE) + 2 :]
    return rest.split(": ", 1)[0] if ": " in rest else ""


def _related(named: str, path: tuple[str, ...]) -> bool:
    """The error is about the changed key: it names it, a table holding it, or a key inside it."""
    if not named:
        return False
    dotted = ".".join(path)
    return named == dotted or dotted.startswith(named + ".") or named.startswith(dotted + ".")


def _assert_runnable(config: Any, tmp: Path) -> None:
    """A config that loads must render into a supervisord config (no SupervisorError, no crash)."""
    loaded = LoadedConfig(config, tmp / FILE, FILE)
    services = resolve_services(config, Settings())
    paths = runtime_paths(tmp / "home", config.namespace)
    programs, _notices = build_programs(loaded, services, tmp / "home", paths, python="python3")
    conf = render_conf(paths, programs, config.namespace)
    for prog in programs:
        assert f"[program:{prog.name}]" in conf
    for line in conf.splitlines():  # nothing smuggled into a new section or key
        assert "\x00" not in line


# --------------------------------------------------------------------------- testbed.toml


@FUZZ
@given(path=st.sampled_from(EXISTING + UNKNOWN), value=hostile)
def test_testbed_toml_one_hostile_value(
    path: tuple[str, ...], value: Any, tmp_path_factory: Any
) -> None:
    """One key of a valid file set to a hostile value: a runnable config, or an error naming file
    and key.
    """
    text = toml_document(_set(BASE, path, value))
    try:
        config = parse(text, FILE, check_modules=False)
    except ConfigError as exc:
        lines = str(exc).splitlines()
        assert lines and all(line.startswith(f"{FILE}: ") for line in lines), str(exc)
        assert any(_related(_named_key(line), path) for line in lines), (path, str(exc))
        assert "Traceback" not in str(exc)
        return
    # accepted: what was set is what is used, within the schema's bounds
    assert config.namespace
    for agent in config.agents.values():
        assert 1 <= agent.instances <= 500 and 0.1 <= agent.heartbeat_interval <= 3600
        assert math.isfinite(agent.drain_timeout) and agent.drain_timeout <= 3600
    assert math.isfinite(config.workflow.duration) and config.workflow.duration <= 366 * 86400
    assert config.workflow.time_scale is None or math.isfinite(config.workflow.time_scale)
    _assert_runnable(config, tmp_path_factory.mktemp("bed"))


@FUZZ
@given(
    data=st.dictionaries(_text, hostile, max_size=4),
    extra=st.dictionaries(_text, hostile, max_size=3),
)
@pytest.mark.slow
def test_testbed_toml_arbitrary_documents(data: dict[str, Any], extra: dict[str, Any]) -> None:
    """Arbitrary documents (and arbitrary sections next to a valid one): only ConfigError, naming
    the file.
    """
    for doc in (data, {**BASE, **extra}):
        try:
            parse(toml_document(doc), FILE, check_modules=False)
        except ConfigError as exc:
            assert all(line.startswith(f"{FILE}: ") for line in str(exc).splitlines()), str(exc)


@pytest.mark.parametrize(
    "text, named",
    [
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "invalid TOML"),
        (
            '[testbed]\nnamespace = "x"\n[agents.a]\nmodule = "a.b:C"\noptions = { v = '
            + "{ a = " * 3000
            + "1"
            + " }" * 3000
            + " }\n",
            "invalid TOML",
        ),
        ('[testbed]\nnamespace = "x"\n[broker]\nport = ' + "9" * 5000 + "\n", "invalid TOML"),
        ('[testbed]\nnamespace = "x"\n[broker]\nport = ' + "9" * 4000 + "\n", "broker.port"),
        ('[testbed]\nnamespace = "x"\n[workflow]\nduration = inf\n', "workflow.duration"),
        ('[testbed]\nnamespace = "x"\n[workflow]\ntime_scale = 1e308\n', "workflow.time_scale"),
        (
            '[testbed]\nnamespace = "x"\n[agents.w]\nscript = "x"\ninstances = 1000000000\n',
            "agents.w.instances",
        ),
        (
            '[testbed]\nnamespace = "x"\n[agents.w]\nscript = "x"\nheartbeat_interval = 1e308\n',
            "agents.w.heartbeat_interval",
        ),
        (
            '[testbed]\nnamespace = "x"\n[agents.w]\nscript = "x"\nheartbeat_interval = 1e-300\n',
            "agents.w.heartbeat_interval",
        ),
        (
            '[testbed]\nnamespace = "x"\n[broker]\nhost = "127.0.0.1\\n[program:evil]"\n',
            "broker.host",
        ),
        (
            '[testbed]\nnamespace = "x"\n[monitor]\nmode = "external"\nurl = "../../etc/passwd"\n',
            "monitor.url",
        ),
        ('[testbed]\nnamespace = "x"\n[monitor]\nurl = "http://[::1"\n', "monitor.url"),
        (
            '[testbed]\nnamespace = "x"\n[database]\nurl = "sqlite:///x.db\\nuser=root"\n',
            "database.url",
        ),
        ('[testbed]\nnamespace = "x"\n[testbed.sub]\nx = 1\n', "testbed.sub"),
        ("[testbed]\nnamespace = { a = 1 }\n", "testbed.namespace"),
        (
            '[testbed]\nnamespace = "x"\n[agents.a]\nmodule = "a.b:C"\noptions = { when = '
            "2026-01-01T00:00:00 }\n",
            "agents.a.options.when",
        ),
        (
            '[testbed]\nnamespace = "x"\n[parameters]\nstf_interval = nan\n',
            "parameters.stf_interval",
        ),
        ('[testbed]\nnamespace = "x"\n[parameters]\nstart = 2026-01-01\n', "parameters.start"),
    ],
)
def test_known_hostile_values(text: str, named: str) -> None:
    """Values the fuzzer may not reach: deep nesting, huge integers,
    inf, newlines into supervisord.
    """
    with pytest.raises(ConfigError) as info:
        parse(text, FILE, check_modules=False)
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"{FILE}: ") and named in first, first
    assert len(first) < 1000  # a 4000-digit integer is not echoed back


# --------------------------------------------------------------------------- workflow configs


WORKFLOW_KEYS = [
    "stf_count",
    "stf_interval",
    "daq.stf_count",
    "physics_period_count",
    "filename_style",
    "stf_size_mean_bytes",
    "tf_per_stf",
    "broadcast_delay",
    "stf_size_sigma_fraction",
    "target_worker_count",
    "slices_per_sample",
    "max_slice_retries",
    "stf_sampling_rate",
    "daq",
    "daq.",
    ".x",
    "nope",
    "fast_processing.nope",
    "",
]


@FUZZ
@given(
    overrides=st.dictionaries(st.sampled_from(WORKFLOW_KEYS) | _text, hostile, max_size=3),
    name=st.sampled_from(["stf_datataking_default", "fast_processing_default"]),
)
def test_parameters_overrides(overrides: dict[str, Any], name: str) -> None:
    """testbed.toml [parameters] as overrides of a shipped workflow config: a config or a
    ConfigError.
    """
    try:
        merged = wf.load_config(name, overrides)
    except wf.ConfigError as exc:
        text = str(exc)
        assert text and "Traceback" not in text and len(text) < 20_000
        # it names the key it refuses (an override, or the qualified key that holds it)
        assert any(repr(k) in text or (k and k in text) for k in overrides), (overrides, text)
        return
    daq = merged.daq
    assert daq.stf_count <= 1_000_000 and daq.physics_period_count <= 1_000_000
    assert daq.stf_size_mean_bytes <= 10**13 and math.isfinite(daq.stf_interval)
    fp = merged.fast_processing
    if fp is not None:
        assert fp.slices_per_sample <= 10_000 and fp.target_worker_count <= 10_000
    json.loads(merged.to_json())  # what an execution records


@FUZZ
@given(
    daq=st.dictionaries(
        st.sampled_from(["stf_count", "stf_interval", "tf_per_stf", "zzz"]) | _text,
        hostile,
        max_size=3,
    ),
    top=st.dictionaries(_text, hostile, max_size=2),
    include=st.lists(
        st.sampled_from(
            ["daq_state_machine", "../../etc/passwd", "/etc/passwd", "mine", "nope", ""]
        ),
        max_size=3,
    ),
)
@pytest.mark.slow
def test_workflow_config_files(
    daq: dict[str, Any], top: dict[str, Any], include: list[str], tmp_path_factory: Any
) -> None:
    """A user's own workflow config file with hostile sections, keys and includes (paths outside
    too).
    """
    root = tmp_path_factory.mktemp("configs")
    doc: dict[str, Any] = {"include": include, "daq": daq, **top}
    (root / "mine.toml").write_text(toml_document(doc), encoding="utf-8")
    try:
        merged = wf.load_config("mine", {}, search_paths=[root])
    except wf.ConfigError as exc:
        text = str(exc)
        assert "mine" in text or any(repr(i) in text for i in include), text
        return
    json.loads(merged.to_json())
    assert "mine" in merged.sources


def test_include_outside_the_config_directory_is_a_clear_error(tmp_path: Path) -> None:
    """Includes are config names, not paths: '../x' cannot escape the search path, and says so."""
    outside = tmp_path / "secret.toml"
    outside.write_text("[daq]\nstf_count = 1\n")
    root = tmp_path / "configs"
    root.mkdir()
    for target in ("../secret", str(outside.with_suffix("")), "../../etc/passwd"):
        (root / "mine.toml").write_text(f"include = [{_toml_str(target)}]\n")
        with pytest.raises(wf.UnknownConfig) as info:
            wf.load_config("mine", {}, search_paths=[root])
        assert repr(target) in str(info.value) and "included from 'mine'" in str(info.value)


# --------------------------------------------------------------------------- the CLI


@pytest.mark.parametrize(
    "text, key",
    [
        (
            '[testbed]\nnamespace = "x"\n[agents.w]\nscript = "x"\ninstances = 1000000000\n',
            "agents.w.instances",
        ),
        ('[testbed]\nnamespace = "x"\n[workflow]\nduration = inf\n', "workflow.duration"),
        ('[testbed]\nnamespace = "x"\n[broker]\nport = ' + "9" * 5000 + "\n", "invalid TOML"),
        ("x = " + "[" * 5000 + "]" * 5000 + "\n", "invalid TOML"),
        ('[testbed]\nnamespace = "x"\n[monitor]\nurl = "http://[::1"\n', "monitor.url"),
        ('[testbed]\nnamespace = "x"\nnamespace = "y"\n', "line 3"),
        ("\xff\xfe garbage", "cannot read"),
    ],
)
@pytest.mark.parametrize("command", ["status", "run"])
@pytest.mark.slow
def test_cli_refuses_bad_files_with_exit_2(
    tmp_path: Path, text: str, key: str, command: str
) -> None:
    """The real CLI: exit code 2 and one clear line per problem
    naming file and key, no traceback.
    """
    bad = tmp_path / "bad.toml"
    if text.startswith("\xff"):
        bad.write_bytes(text.encode("latin-1"))
    else:
        bad.write_text(text, encoding="utf-8")
    env = {**os.environ, "SWF_HOME": str(tmp_path / "home"), "COLUMNS": "400"}
    args = ["status", "-c", str(bad)] if command == "status" else ["run", str(bad)]
    result = subprocess.run(
        [sys.executable, "-m", "swf_testbed.cli", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {bad}: ") and key in lines[0], lines[0]

"""``testbed.toml``: one file per testbed instance, validated on load.

Every table and key is checked (unknown keys are errors, never ignored) and
types are strict (``enabled = "yes"`` is an error, not a truthy string). An
error names the file, the dotted key and what was expected, e.g.::

    testbed.toml: agents.processing.enabled: expected a boolean (true or false), got 'yes'

Addresses of the broker, the monitor and the database may be given in the
file; the environment wins (``ACTIVEMQ_HOST``/``ACTIVEMQ_PORT``,
``SWF_MONITOR_URL``, ``DATABASE_URL``), see :func:`resolve_services`.
"""

from __future__ import annotations

import difflib
import importlib.machinery
import importlib.util
import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from swf_testbed.errors import problems as problems_of
from swf_testbed.settings import BrokerSettings, Settings

NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
AGENT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
MODULE_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
)

SERVICE_NAMES = frozenset({"broker", "monitor-web", "monitor-ingest", "watch"})
"""Program names the orchestrator uses for its own services; agents may not take them."""

DEFAULT_FILE = "testbed.toml"

HOST_PATTERN = r"^[A-Za-z0-9_.:\[\]-]{1,253}$"
"""A host name or address (IPv6 too): nothing that could break the generated supervisord config."""
MAX_DURATION_S = 366 * 86400.0
"""Longest simulated run a testbed.toml may ask for (a year): larger values are typos, not runs."""
MAX_TIME_SCALE = 1e6


class ConfigError(Exception):
    """A testbed.toml that cannot be used; ``problems`` are ``key: what is wrong`` lines."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


class _Strict(BaseModel):
    # no inf / nan: TOML has them, but no setting here means anything with them
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)


class TestbedSection(_Strict):
    """``[testbed]``: which instance this is."""

    __test__ = False  # not a pytest test class

    namespace: str = Field(
        ...,
        pattern=NAMESPACE_PATTERN,
        description="the testbed instance: letters, digits, '_', '.', '-'",
    )
    start_timeout: float = Field(
        120.0, gt=0, le=3600, description="seconds to wait for every program to be healthy"
    )
    description: str = Field("", description="free text")


class WorkflowSection(_Strict):
    """``[workflow]``: what ``swf-testbed run`` asks the workflow runner to run."""

    name: str = Field(
        "stf_datataking",
        min_length=1,
        max_length=200,
        description="the registered workflow the runner runs",
    )
    config: str = Field(
        "stf_datataking_default",
        min_length=1,
        max_length=200,
        description="the workflow config (a TOML shipped with the package)",
    )
    duration: float = Field(
        0.0, ge=0, le=MAX_DURATION_S, description="seconds of simulated time, 0 = until done"
    )
    realtime: bool | None = Field(None, description="shorthand for time_scale = 1")
    time_scale: float | None = Field(
        None,
        ge=0,
        le=MAX_TIME_SCALE,
        description="1 = real time, N = N× faster, 0 = as fast as possible",
    )

    @model_validator(mode="after")
    def _one_speed(self) -> WorkflowSection:
        if self.realtime is not None and self.time_scale is not None:
            raise ValueError(
                "give realtime or time_scale, not both (realtime = true is time_scale = 1)"
            )
        return self


class AgentSection(_Strict):
    """``[agents.NAME]``: one agent program (``instances`` processes)."""

    enabled: bool = Field(True, description="false: not run (and needs no module or script)")
    remote: bool = Field(
        False,
        description="runs elsewhere (another host's supervisord): not started here, but `run` "
        "waits for its heartbeats in the monitor (needs no module or script)",
    )
    host: str | None = Field(
        None,
        pattern=HOST_PATTERN,
        description="remote agents: the host name its heartbeats must carry (empty: any host)",
    )
    module: str | None = Field(
        None, description="package.module:Class, run by `swf-testbed agent run`"
    )
    script: str | None = Field(None, min_length=1, description="a command line, run as written")
    instances: int = Field(
        1, ge=1, le=500, description="processes of this agent (NAME_00, NAME_01, … in supervisord)"
    )
    args: list[str] = Field(
        default_factory=list, description="extra arguments appended to the command"
    )
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    # the runtime's heartbeat loop ticks every 0.1 s: a shorter interval cannot be honoured
    heartbeat_interval: float = Field(
        10.0, ge=0.1, le=3600, description="seconds between the agent's heartbeats"
    )
    drain_timeout: float = Field(
        10.0, gt=0, le=3600, description="seconds the agent may take to drain on stop"
    )
    options: dict[str, Any] = Field(
        default_factory=dict, description="agent options (module agents): --set key=value"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL", "NONE"] = Field(
        "WARNING",
        description="lowest level of the agent's log records sent to the monitor (NONE: none)",
    )
    log_buffer: int = Field(
        1000,
        ge=1,
        le=1_000_000,
        description="log records held while they cannot be sent; more are dropped and counted",
    )

    @model_validator(mode="after")
    def _what_runs(self) -> AgentSection:
        if self.module is not None and self.script is not None:
            raise ValueError("give module or script, not both")
        if self.host is not None and not self.remote:
            raise ValueError("host is for remote agents (remote = true)")
        if self.enabled and not self.remote and self.module is None and self.script is None:
            raise ValueError(
                'an enabled agent needs module = "package.module:Class" or '
                'script = "a command line" (or remote = true when it runs elsewhere)'
            )
        if self.module is not None and not MODULE_RE.match(self.module):
            raise ValueError(f"module: expected 'package.module:Class', got {self.module!r}")
        if self.script is not None and self.options:
            raise ValueError(
                "options are for module agents; pass a script's settings in args or env"
            )
        return self


class BrokerSection(_Strict):
    """``[broker]``: the embedded broker (run by supervisord) or an external one."""

    mode: Literal["embedded", "external"] = Field(
        "embedded",
        description="embedded: supervisord runs `swf-testbed broker`; external: one runs elsewhere",
    )
    host: str = Field(
        "127.0.0.1",
        pattern=HOST_PATTERN,
        description="where it listens (embedded) or is (external)",
    )
    port: int = Field(61613, ge=1, le=65535, description="its STOMP port")


class MonitorSection(_Strict):
    """``[monitor]``: the embedded monitor (web + ingest, run by supervisord) or an external one."""

    mode: Literal["embedded", "external"] = Field(
        "embedded",
        description="embedded: supervisord runs `monitor serve` and `monitor ingest`; "
        "external: elsewhere",
    )
    host: str = Field(
        "127.0.0.1", pattern=HOST_PATTERN, description="where the embedded web listens"
    )
    port: int = Field(8002, ge=1, le=65535, description="the embedded web's HTTP port")
    url: str | None = Field(None, min_length=1, description="base URL of an external monitor")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port out of range
        except ValueError as exc:
            raise ValueError(f"not a valid URL ({exc}): {value[:200]!r}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"expected an http:// or https:// URL with a host, got {value[:200]!r}"
            )
        return value


class DatabaseSection(_Strict):
    """``[database]``: the monitor's DB (``sqlite:///…``, ``postgres://…``); empty: default."""

    url: str = Field(
        "", description="sqlite:///path or postgres://…; empty = SQLite in the runtime directory"
    )


class TestbedConfig(_Strict):
    """A whole testbed.toml."""

    __test__ = False

    testbed: TestbedSection
    workflow: WorkflowSection = Field(default_factory=WorkflowSection)
    agents: dict[str, AgentSection] = Field(default_factory=dict)
    parameters: dict[str, Any] = Field(
        default_factory=dict, description="workflow config overrides"
    )
    broker: BrokerSection = Field(default_factory=BrokerSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)
    database: DatabaseSection = Field(default_factory=DatabaseSection)

    @property
    def namespace(self) -> str:
        return self.testbed.namespace

    def enabled_agents(self) -> dict[str, AgentSection]:
        return {name: agent for name, agent in self.agents.items() if agent.enabled}

    def local_agents(self) -> dict[str, AgentSection]:
        """The enabled agents this testbed's supervisord runs."""
        return {name: a for name, a in self.enabled_agents().items() if not a.remote}

    def remote_agents(self) -> dict[str, AgentSection]:
        """The enabled agents that run elsewhere and report through the monitor."""
        return {name: a for name, a in self.enabled_agents().items() if a.remote}


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config and where it came from."""

    config: TestbedConfig
    path: Path
    source: str  # the file name as the user gave it, for messages

    @property
    def namespace(self) -> str:
        return self.config.testbed.namespace


# --------------------------------------------------------------------------- loading


def load(path: str | Path, *, check_modules: bool = True) -> LoadedConfig:
    """Read and validate a testbed.toml; :class:`ConfigError` on any problem."""
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            source, [f"no such file (create one with `swf-testbed init {source}`)"]
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(source, [f"cannot read: {exc}"]) from None
    config = parse(text, source, check_modules=check_modules, base_dir=path.resolve().parent)
    return LoadedConfig(config, path.resolve(), source)


def parse(
    text: str,
    source: str = DEFAULT_FILE,
    *,
    check_modules: bool = True,
    base_dir: Path | None = None,
) -> TestbedConfig:
    """Validate the text of a testbed.toml (``base_dir``: where its agents start, for paths)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [_toml_error(exc)]) from None
    except RecursionError:  # tomllib recurses into nested arrays / inline tables
        raise ConfigError(source, ["invalid TOML: arrays or tables nested too deeply"]) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits (int() refuses it)
        raise ConfigError(source, [f"invalid TOML: {exc}"]) from None
    # every problem of the file at once: the schema's, then the [parameters] overrides against the
    # workflow config they are for, then what the schema cannot say
    problems: list[str] = []
    config: TestbedConfig | None = None
    try:
        config = TestbedConfig.model_validate(data)
    except ValidationError as exc:
        problems += _describe(exc, data)
    problems += _check_parameters(data)
    if config is not None:
        problems += _check_agents(
            config, check_modules=check_modules, base_dir=base_dir or Path.cwd()
        )
    if problems:
        raise ConfigError(source, problems)
    assert config is not None
    return config


def _toml_error(exc: tomllib.TOMLDecodeError) -> str:
    text = str(exc)
    m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", text)
    if m:
        return f"line {m.group(1)}, column {m.group(2)}: invalid TOML: {text[: m.start()]}"
    m = re.search(r"\s*\(at end of document\)$", text)
    if m:
        return f"end of file: invalid TOML: {text[: m.start()]}"
    return f"invalid TOML: {text}"


_EXPECTED = {
    "bool_type": "expected a boolean (true or false)",
    "bool_parsing": "expected a boolean (true or false)",
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "dict_type": "expected a table",
    "model_type": "expected a table",
    "list_type": "expected an array",
}


def _describe(exc: ValidationError, data: dict[str, Any]) -> list[str]:
    problems: list[str] = []
    for problem in problems_of(exc):
        loc = list(problem.loc)
        key = dotted(loc)
        kind = problem.kind
        got = _show(problem.input)
        if kind == "missing":
            problems.append(f"{key}: missing (required)")
        elif kind == "extra_forbidden":
            problems.append(_unknown(loc))
        elif kind in _EXPECTED:
            problems.append(f"{key}: {_EXPECTED[kind]}, got {got}")
        elif kind == "literal_error":
            expected = problem.ctx.get("expected", "")
            problems.append(f"{key}: expected {expected}, got {got}")
        elif kind == "string_pattern_mismatch" and loc == ["testbed", "namespace"]:
            problems.append(
                f"{key}: expected letters, digits, '_', '.' or '-' (at most 64), got {got}"
            )
        elif kind == "string_pattern_mismatch" and loc[-1:] == ["host"]:
            problems.append(
                f"{key}: expected a host name or address (letters, digits, '.', '-', '_', ':', "
                f"'[', ']'), got {got}"
            )
        elif kind == "finite_number":
            problems.append(f"{key}: expected a finite number, got {got}")
        elif kind == "value_error":
            msg = problem.msg.removeprefix("Value error, ")
            problems.append(f"{key}: {msg}" if key else msg)
        else:
            problems.append(
                f"{key}: {(problem.msg or kind)[:1].lower()}{(problem.msg or kind)[1:]}, got {got}"
            )
    return problems


def dotted(parts: list[str]) -> str:
    """A dotted key for a message: a part with a '.', a quote or an unprintable character is quoted
    and escaped, so that the key is unambiguous and the message stays one line."""
    out = []
    for part in parts:
        if part and part.isprintable() and not any(c in part for c in '."\\'):
            out.append(part)
            continue
        quoted = json.dumps(part, ensure_ascii=False)
        out.append(
            "".join(
                c
                if c.isprintable()
                else f"\\u{ord(c):04x}"
                if ord(c) <= 0xFFFF
                else f"\\U{ord(c):08x}"
                for c in quoted
            )
        )
    return ".".join(out)


def _unknown(loc: list[str]) -> str:
    key = dotted(loc)
    model: type[BaseModel] | None = TestbedConfig
    for part in loc[:-1]:
        if model is None:
            break
        if model is TestbedConfig and part == "agents":
            model = None  # next part is an agent name
            continue
        field = model.model_fields.get(part) if model is not None else None
        annotation = field.annotation if field is not None else None
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
    if model is None and len(loc) >= 3 and loc[0] == "agents":
        model = AgentSection
    what = "unknown section" if len(loc) == 1 else "unknown key"
    known = list(model.model_fields) if model is not None else []
    hint = ""
    close = difflib.get_close_matches(loc[-1], known, n=1)
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    elif known:
        hint = f"; expected one of: {', '.join(known)}"
    return f"{key}: {what}{hint}"


def _show(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    if isinstance(value, str):
        return repr(value) if len(value) <= 200 else repr(value[:200]) + "…"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


_COMMENT = re.compile(r"\s[;#]")


def _module_findable(module_name: str, extra_paths: list[str]) -> bool:
    """Importable here, or from the agent's own PYTHONPATH (which only its process will have)."""
    try:
        if importlib.util.find_spec(module_name) is not None:
            return True
    except (ImportError, ValueError):
        pass
    top = module_name.split(".")[0]
    return (
        bool(extra_paths) and importlib.machinery.PathFinder.find_spec(top, extra_paths) is not None
    )


def _check_agents(config: TestbedConfig, *, check_modules: bool, base_dir: Path) -> list[str]:
    """What the schema cannot say: agent names, modules, what supervisord can carry (URLs too)."""
    problems: list[str] = []
    # these reach supervisord's config (as environment values): say so here, naming the key
    for key, value in (
        ("database.url", config.database.url),
        ("monitor.url", config.monitor.url or ""),
    ):
        problem = unrepresentable(value) if value else ""
        if problem:
            problems.append(f"{key}: {problem}")
    for name, agent in config.agents.items():
        key = dotted(["agents", name])
        if not AGENT_NAME_RE.match(name):
            problems.append(f"{key}: agent names are letters, digits, '_' and '-' (at most 64)")
            continue
        if name in SERVICE_NAMES:
            problems.append(
                f"{key}: {name!r} is the name of a testbed service; choose another agent name"
            )
        for env_key, value in agent.env.items():
            if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", env_key):
                problems.append(
                    f"{dotted(['agents', name, 'env', env_key])}: "
                    "not a valid environment variable name"
                )
            problem = unrepresentable(value)
            if problem:
                problems.append(f"{dotted(['agents', name, 'env', env_key])}: {problem}")
        texts = [("script", agent.script or "")] + [
            (f"args[{i}]", a) for i, a in enumerate(agent.args)
        ]
        for what, text in texts:
            if "\n" in text or "\r" in text or _COMMENT.search(text):
                problems.append(
                    f"{key}.{what}: newlines and ' ;' / ' #' cannot be passed through "
                    f"supervisord's config; put the command in a script file"
                )
        for opt, value in agent.options.items():
            if not _jsonable(value):  # passed as --set key=<JSON>
                problems.append(
                    f"{dotted(['agents', name, 'options', opt])}: expected a value JSON can carry "
                    f"(no dates, times, inf or nan)"
                )
        if check_modules and agent.enabled and not agent.remote and agent.module:
            module_name = agent.module.partition(":")[0]
            agent_paths = [
                str(base_dir / entry)
                for entry in agent.env.get("PYTHONPATH", "").split(os.pathsep)
                if entry
            ]
            if not _module_findable(module_name, agent_paths):
                problems.append(
                    f"{key}.module: cannot find module {module_name!r} (is it installed, "
                    f"or on PYTHONPATH in agents.{name}.env?)"
                )
    return problems


def _check_parameters(data: dict[str, Any]) -> list[str]:
    """``[parameters]`` checked as the workflow runner will check them: each key must be a parameter
    of the workflow config, of its type and within its bounds. One line per bad key."""
    from swf_testbed.workflows.config import ConfigError as WorkflowConfigError
    from swf_testbed.workflows.config import (
        ConfigTypeError,
        UnknownParameter,
        available_configs,
        load_config,
    )

    params = data.get("parameters", {})
    workflow = data.get("workflow", {})
    name = (
        workflow.get("config", WorkflowSection.model_fields["config"].default)
        if isinstance(workflow, dict)
        else None
    )
    if not isinstance(params, dict) or not isinstance(name, str):
        return []  # the schema says what is wrong with them
    available = available_configs()
    if name not in available:
        return [
            f"workflow.config: unknown workflow config {_show(name)}; "
            f"available: {', '.join(available)}"
        ]
    problems: list[str] = []
    for key, value in params.items():
        where = dotted(["parameters", str(key)])
        if not _jsonable(value):  # sent in run_workflow, a JSON body
            problems.append(
                f"{where}: expected a value JSON can carry (no dates, times, inf or nan)"
            )
            continue
        try:
            load_config(name, {key: value})
        except UnknownParameter as exc:
            hint = (
                f"did you mean {' or '.join(repr(s) for s in exc.suggestions)}?"
                if exc.suggestions
                else f"known parameters: {', '.join(sorted(_parameter_names(name)))}"
            )
            problems.append(f"{where}: not a parameter of workflow config {name!r} ({hint})")
        except ConfigTypeError as exc:
            problems.append(
                f"{where}: expected {exc.expected}, got {_show(value)} (workflow config {name!r})"
            )
        except WorkflowConfigError as exc:
            text = str(exc).removeprefix(f"workflow config {name!r}: ")
            text = re.sub(r"^[\w.]+ \(override\): ", "", text)
            problems.append(
                f"{where}: {text[:1].lower()}{text[1:]}, got {_show(value)} "
                f"(workflow config {name!r})"
            )
    if not problems and params:
        try:  # each key is fine alone; together too?
            load_config(name, params)
        except WorkflowConfigError as exc:
            problems.append(f"parameters: {exc}")
    return problems


def _parameter_names(config_name: str) -> list[str]:
    from swf_testbed.workflows.config import load_config

    merged = load_config(config_name)
    return [key for table in merged.values.values() for key in table]


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def unrepresentable(value: str) -> str:
    """Why a value cannot be written in supervisord's ``environment=``, or ''."""
    if "\n" in value or "\r" in value or "\0" in value:
        return "newlines cannot be passed through supervisord's config"
    if _COMMENT.search(value):
        return "' ;' and ' #' start a comment in supervisord's config"
    if '"' in value and "'" in value:
        return "a value may contain single or double quotes, not both"
    if value[:1] in ("'", '"') or value[-1:] in ("'", '"'):
        return "a value may not begin or end with a quote (supervisord strips them)"
    return ""


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class Services:
    """Where the broker, monitor and database are, after the environment had its say."""

    broker_mode: str
    broker: BrokerSettings
    monitor_mode: str
    monitor_url: str
    monitor_host: str
    monitor_port: int
    database_url: str

    @property
    def broker_address(self) -> str:
        return f"{self.broker.host}:{self.broker.port}"


def resolve_services(config: TestbedConfig, settings: Settings) -> Services:
    """File values for addresses, overridden by whatever the environment sets."""
    env_broker = settings.broker.model_fields_set
    host = settings.broker.host if "host" in env_broker else config.broker.host
    port = settings.broker.port if "port" in env_broker else config.broker.port
    broker = settings.broker.model_copy(update={"host": host, "port": port})

    if "monitor_url" in settings.monitor.model_fields_set:
        url = settings.monitor.monitor_url
    elif config.monitor.url:
        url = config.monitor.url
    else:
        url = f"http://{_url_host(config.monitor.host)}:{config.monitor.port}"
    url = url.rstrip("/")
    parts = urlsplit(url)
    mon_host = parts.hostname or config.monitor.host
    try:
        mon_port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        mon_port = config.monitor.port
    database_url = (
        settings.database_url
        if "database_url" in settings.model_fields_set
        else config.database.url
    )
    return Services(
        broker_mode=config.broker.mode,
        broker=broker,
        monitor_mode=config.monitor.mode,
        monitor_url=url,
        monitor_host=mon_host,
        monitor_port=mon_port,
        database_url=database_url,
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host

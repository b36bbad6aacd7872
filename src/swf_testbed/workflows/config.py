"""Workflow configurations: TOML files shipped with the package, merged and overridden.

A config is a TOML file ``<name>.toml``. It may name others to build on::

    include = ["daq_state_machine"]       # merged first, in order, recursively
    description = "…"

    [daq]                                 # sections of parameters
    stf_count = 10

:func:`load_config` resolves the includes depth-first (a cycle is an error),
merges every file over what came before it (section by section, key by key),
then applies the caller's overrides. Overrides are flat (``{"stf_count": 5}``);
a key that is in more than one section is written qualified
(``"daq.stf_count"``). An override must name a parameter that exists in the
merged config and have its type (an int is accepted for a float); anything
else is a :class:`ConfigError` naming the key and what was expected.

Sections with a schema (``[daq]`` → :class:`~swf_testbed.daq.DaqConfig`,
``[fast_processing]`` → :class:`FastProcessingConfig`) are validated after the
merge, so a bad value in a file or an override is caught at load time, and are
available typed as :attr:`MergedConfig.daq` / :attr:`MergedConfig.fast_processing`.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from swf_testbed.daq.simulator import DaqConfig
from swf_testbed.errors import Problem, describe

__all__ = [
    "SECTION_MODELS",
    "ConfigError",
    "ConfigTypeError",
    "FastProcessingConfig",
    "IncludeCycle",
    "MergedConfig",
    "UnknownConfig",
    "UnknownParameter",
    "available_configs",
    "load_config",
    "parse_overrides",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
META_KEYS = frozenset({"include", "description"})
"""Top-level keys of a config file that are not sections."""
RESERVED_SECTIONS = frozenset({"name", "sources", "overrides"}) | META_KEYS
"""Names that :meth:`MergedConfig.to_dict` uses for itself."""

SearchPath = Path | Traversable


# --------------------------------------------------------------------------- errors


class ConfigError(ValueError):
    """A workflow config that cannot be loaded; the message says what and where."""


class UnknownConfig(ConfigError):
    def __init__(
        self, name: str, available: Sequence[str], *, included_from: str | None = None
    ) -> None:
        self.name = name
        self.available = list(available)
        where = f" (included from {included_from!r})" if included_from else ""
        listed = ", ".join(self.available) or "none"
        super().__init__(f"unknown workflow config {name!r}{where}; available: {listed}")


class UnknownParameter(ConfigError):
    def __init__(self, key: str, config: str, known: Iterable[str]) -> None:
        self.key = key
        known = sorted(set(known))
        self.suggestions = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
        if not self.suggestions and "." in key:  # section.typo: match the parameter part
            param = key.rpartition(".")[2]
            self.suggestions = difflib.get_close_matches(param, known, n=3, cutoff=0.6)
        hint = ""
        if self.suggestions:
            hint = f"; did you mean {' or '.join(repr(s) for s in self.suggestions)}?"
        super().__init__(
            f"unknown parameter {key!r} for workflow config {config!r}{hint} "
            f"(known parameters: {', '.join(known)})"
        )


class ConfigTypeError(ConfigError):
    def __init__(self, key: str, expected: str, value: Any, where: str) -> None:
        self.key = key
        self.expected = expected
        self.value = value
        super().__init__(
            f"parameter {key!r} ({where}) must be {expected}, got {type(value).__name__} "
            f"{_short(value)}"
        )


def _short(value: Any) -> str:
    """A value for a message: never huge (nor a 5000-digit integer, which repr() refuses)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        return f"of about {int(value.bit_length() * 0.30103)} digits"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


class IncludeCycle(ConfigError):
    def __init__(self, chain: Sequence[str]) -> None:
        self.chain = list(chain)
        super().__init__(f"workflow config include cycle: {' -> '.join(self.chain)}")


# --------------------------------------------------------------------------- section schemas


class FastProcessingConfig(BaseModel):
    """Parameters of the fast-processing chain (sampling, slicing, worker pool)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    # upper bounds: beyond them a value is a typo (each slice is a message, each worker a process)
    target_worker_count: int = Field(30, ge=0, le=10_000, description="workers ramped up for a run")
    stf_sampling_rate: float = Field(0.05, ge=0, le=1, description="fraction of STFs sampled")
    slices_per_sample: int = Field(
        15, ge=1, le=10_000, description="slices a TF sample is cut into"
    )
    slice_processing_time: float = Field(30.0, ge=0, description="seconds a worker takes per slice")
    worker_rampup_time: float = Field(300.0, ge=0)
    worker_rampdown_time: float = Field(60.0, ge=0)
    tf_sample_fraction: float = Field(0.15, gt=0, le=1, description="fraction of TFs sampled")
    processing_time: float = Field(1.0, ge=0, description="seconds of prompt processing per STF")
    max_slice_retries: int = Field(3, ge=0, le=100)


SECTION_MODELS: dict[str, type[BaseModel]] = {
    "daq": DaqConfig,
    "fast_processing": FastProcessingConfig,
}
"""Sections validated against a schema; other sections are carried as they are."""


# --------------------------------------------------------------------------- the merged config


@dataclass(frozen=True)
class MergedConfig:
    """A resolved workflow config: includes merged, overrides applied, sections validated."""

    name: str
    description: str
    sources: tuple[str, ...]
    """Config names in merge order (includes first, ``name`` last)."""
    overrides: dict[str, Any]
    """The overrides applied, by qualified key (``section.key``)."""
    values: dict[str, dict[str, Any]]
    """section → parameter → value."""
    _models: dict[str, BaseModel] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serializable dict, as an execution records it."""
        out: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "sources": list(self.sources),
            "overrides": copy.deepcopy(self.overrides),
        }
        out.update(copy.deepcopy(self.values))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def section(self, name: str) -> dict[str, Any]:
        if name not in self.values:
            sections = ", ".join(self.values) or "none"
            raise ConfigError(
                f"workflow config {self.name!r} has no [{name}] section; sections: {sections}"
            )
        return copy.deepcopy(self.values[name])

    def get(self, key: str, default: Any = None) -> Any:
        """A parameter by flat (``stf_count``) or qualified (``daq.stf_count``) key."""
        try:
            section, name = _locate(key, self.values, self.name)
        except ConfigError:
            return default
        return copy.deepcopy(self.values[section][name])

    @property
    def daq(self) -> DaqConfig:
        model = self._models.get("daq")
        if model is None:
            raise ConfigError(
                f"workflow config {self.name!r} has no [daq] section (include daq_state_machine)"
            )
        assert isinstance(model, DaqConfig)
        return model

    @property
    def fast_processing(self) -> FastProcessingConfig | None:
        """The fast-processing parameters, or None for a workflow without fast processing."""
        model = self._models.get("fast_processing")
        assert model is None or isinstance(model, FastProcessingConfig)
        return model


# --------------------------------------------------------------------------- loading


def _roots(search_paths: Sequence[SearchPath]) -> list[SearchPath]:
    return [*search_paths, resources.files("swf_testbed.workflows").joinpath("configs")]


def available_configs(search_paths: Sequence[SearchPath] = ()) -> list[str]:
    """Names of the configs that can be loaded: shipped ones plus those in ``search_paths``."""
    names: set[str] = set()
    for root in _roots(search_paths):
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.name.endswith(".toml") and entry.is_file():
                stem = entry.name[: -len(".toml")]
                if _NAME_RE.match(stem):
                    names.add(stem)
    return sorted(names)


def _find(
    name: str, search_paths: Sequence[SearchPath], included_from: str | None
) -> Traversable | Path:
    if _NAME_RE.match(name):
        for root in _roots(search_paths):
            candidate = root.joinpath(f"{name}.toml")
            if candidate.is_file():
                return candidate
    raise UnknownConfig(name, available_configs(search_paths), included_from=included_from)


def _read(
    name: str, search_paths: Sequence[SearchPath], included_from: str | None
) -> dict[str, Any]:
    source = _find(name, search_paths, included_from)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"workflow config {name!r} is not valid TOML: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"workflow config {name!r} is not valid TOML: arrays or tables nested too deeply"
        ) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise ConfigError(f"workflow config {name!r} is not valid TOML: {exc}") from None
    include = data.get("include", [])
    if not isinstance(include, list) or not all(isinstance(i, str) for i in include):
        raise ConfigError(f"workflow config {name!r}: include must be a list of config names")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(f"workflow config {name!r}: description must be a string")
    for key, value in data.items():
        if key in META_KEYS:
            continue
        if not isinstance(value, dict):
            raise ConfigError(
                f"workflow config {name!r}: top-level key {key!r} must be inside a [section] "
                f"(only {', '.join(sorted(META_KEYS))} may be top-level)"
            )
        if key in RESERVED_SECTIONS:
            raise ConfigError(
                f"workflow config {name!r}: [{key}] is a reserved name, not a section"
            )
    return data


def _resolve(
    name: str,
    search_paths: Sequence[SearchPath],
    stack: list[str],
    included_from: str | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """Files to merge for ``name``, in merge order (its includes, recursively, then itself)."""
    if name in stack:
        raise IncludeCycle([*stack[stack.index(name) :], name])
    data = _read(name, search_paths, included_from)
    out: list[tuple[str, dict[str, Any]]] = []
    for inc in data.get("include", []):
        out.extend(_resolve(inc, search_paths, [*stack, name], included_from=name))
    out.append((name, data))
    return out


def _locate(key: str, values: Mapping[str, Mapping[str, Any]], config: str) -> tuple[str, str]:
    """``key`` (flat or ``section.key``) → (section, key); unknown or ambiguous keys raise."""
    known = _known_keys(values)
    if "." in key:
        section, _, name = key.partition(".")
        if section in values and name in values[section]:
            return section, name
        raise UnknownParameter(key, config, known)
    sections = [s for s, table in values.items() if key in table]
    if not sections:
        raise UnknownParameter(key, config, known)
    if len(sections) > 1:
        qualified = " or ".join(repr(f"{s}.{key}") for s in sections)
        raise ConfigError(
            f"parameter {key!r} is in several sections of workflow config {config!r} "
            f"({', '.join(sections)}); write it as {qualified}"
        )
    return sections[0], key


def _known_keys(values: Mapping[str, Mapping[str, Any]]) -> list[str]:
    counts: dict[str, int] = {}
    for table in values.values():
        for key in table:
            counts[key] = counts.get(key, 0) + 1
    flat = [k for k, n in counts.items() if n == 1]
    qualified = [f"{s}.{k}" for s, table in values.items() for k in table if counts[k] > 1]
    return flat + qualified


def _expected_type(section: str, key: str, current: Any) -> type:
    """The type a parameter must have: its schema default's type, else its current value's."""
    model = SECTION_MODELS.get(section)
    if model is not None and key in model.model_fields:
        default = model.model_fields[key].default
        if default is not None:
            return type(default)
    return type(current)


_TYPE_NAMES = {
    bool: "a boolean",
    int: "an integer",
    float: "a number",
    str: "a string",
    list: "a list",
    dict: "a table",
}


def _coerce(qualified: str, value: Any, expected: type, where: str) -> Any:
    """``value`` as ``expected`` (int → float only), or :class:`ConfigTypeError`."""
    if expected is bool:
        ok = isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif expected is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            try:
                value = float(value)
            except OverflowError:  # an integer beyond any float
                raise ConfigTypeError(
                    qualified, "a number within the range of a float", value, where
                ) from None
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigTypeError(qualified, _TYPE_NAMES.get(expected, expected.__name__), value, where)
    return value


def _section_problem(
    config: str, section: str, model_cls: type[BaseModel], origin: Mapping[str, str]
) -> Callable[[Problem], str]:
    """How a problem of ``[section]`` is worded: its qualified key, and where it was set."""

    def word(problem: Problem) -> str:
        qualified = f"{section}.{problem.key}" if problem.key else section
        where = origin.get(qualified, config)
        if problem.kind == "extra_forbidden":
            known = ", ".join(model_cls.model_fields)
            return f"{qualified} ({where}): unknown parameter; [{section}] knows {known}"
        return f"{qualified} ({where}): {problem.msg}"

    return word


def _validate_sections(
    config: str,
    values: dict[str, dict[str, Any]],
    origin: Mapping[str, str],
) -> dict[str, BaseModel]:
    """Check types and constraints of sections with a schema; normalize their values in place."""
    models: dict[str, BaseModel] = {}
    for section, model_cls in SECTION_MODELS.items():
        if section not in values:
            continue
        table = values[section]
        for key, value in table.items():
            if key in model_cls.model_fields:
                qualified = f"{section}.{key}"
                expected = _expected_type(section, key, value)
                table[key] = _coerce(qualified, value, expected, origin.get(qualified, config))
        try:
            model = model_cls.model_validate(table)
        except ValidationError as exc:
            word = _section_problem(config, section, model_cls, origin)
            raise ConfigError(f"workflow config {config!r}: " + describe(exc, word=word)) from None
        models[section] = model
        values[section] = model.model_dump(mode="json")
    return models


def load_config(
    name: str,
    overrides: Mapping[str, Any] | None = None,
    *,
    search_paths: Sequence[SearchPath] = (),
) -> MergedConfig:
    """Load workflow config ``name``: includes merged, ``overrides`` applied, sections validated.

    ``search_paths``: directories searched for ``<name>.toml`` before the
    shipped configs (a user's own configs, tests).
    """
    files = _resolve(name, search_paths, [])
    values: dict[str, dict[str, Any]] = {}
    origin: dict[str, str] = {}  # qualified key -> where its value came from
    description = ""
    for source, data in files:
        if data.get("description"):
            description = data["description"]
        for section, table in data.items():
            if section in META_KEYS:
                continue
            merged = values.setdefault(section, {})
            for key, value in table.items():
                merged[key] = copy.deepcopy(value)
                origin[f"{section}.{key}"] = f"in {source}.toml"

    applied: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key:
            raise ConfigError(f"override keys must be non-empty strings, got {key!r}")
        section, param = _locate(key, values, name)
        qualified = f"{section}.{param}"
        expected = _expected_type(section, param, values[section][param])
        value = _coerce(key, copy.deepcopy(value), expected, "override")
        values[section][param] = value
        origin[qualified] = "override"
        applied[qualified] = value

    models = _validate_sections(name, values, origin)
    result = MergedConfig(
        name=name,
        description=description,
        sources=tuple(source for source, _ in files),
        overrides=applied,
        values=values,
        _models=models,
    )
    try:
        json.dumps(result.to_dict())
    except (TypeError, ValueError) as exc:  # e.g. a TOML datetime in a schema-less section
        raise ConfigError(
            f"workflow config {name!r} holds a value that is not JSON-serializable: {exc}"
        ) from None
    return result


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["stf_count=5", "style=dated"]`` → ``{"stf_count": 5, "style": "dated"}``.

    Values are read as TOML values (``5``, ``2.5``, ``true``, ``"x"``, ``[1, 2]``);
    anything that is not one is taken as a bare string. For command lines.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key=value")
        text = text.strip()
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key] = value
    return out

"""Find an agent class from a ``module:Class`` reference (no exec of files)."""

from __future__ import annotations

import importlib
import json
from typing import Any

from swf_testbed.agents.runtime import Agent


class AgentLoadError(ValueError):
    pass


def load_agent_class(target: str) -> type[Agent]:
    """``package.module:ClassName`` → the class, checked to be an :class:`Agent`."""
    module_name, sep, class_name = target.partition(":")
    if not sep or not module_name or not class_name:
        raise AgentLoadError(f"agent {target!r}: expected 'package.module:ClassName'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AgentLoadError(f"agent {target!r}: cannot import {module_name!r}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise AgentLoadError(f"agent {target!r}: module {module_name!r} has no {class_name!r}")
    if not (isinstance(cls, type) and issubclass(cls, Agent)):
        raise AgentLoadError(
            f"agent {target!r}: {class_name!r} is not a subclass of swf_testbed.agents.Agent"
        )
    return cls


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise AgentLoadError(
                f"option {pair!r}: expected key=value with a Python identifier as key"
            )
        try:
            options[key] = json.loads(raw)
        except ValueError:
            options[key] = raw
    return options

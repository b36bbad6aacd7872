"""Workflow configurations (TOML shipped as package data) and their loading."""

from swf_testbed.workflows.config import (
    ConfigError,
    ConfigTypeError,
    FastProcessingConfig,
    IncludeCycle,
    MergedConfig,
    UnknownConfig,
    UnknownParameter,
    available_configs,
    load_config,
    parse_overrides,
)

__all__ = [
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

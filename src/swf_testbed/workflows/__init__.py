"""Workflow configurations (TOML shipped as package data), their loading, and workflows as code."""

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
from swf_testbed.workflows.registry import (
    UnknownWorkflow,
    WorkflowContext,
    WorkflowDefinition,
    WorkflowError,
    WorkflowOutcome,
    available_workflows,
    get_workflow,
    workflow,
)

__all__ = [
    "ConfigError",
    "ConfigTypeError",
    "FastProcessingConfig",
    "IncludeCycle",
    "MergedConfig",
    "UnknownConfig",
    "UnknownParameter",
    "UnknownWorkflow",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowOutcome",
    "available_configs",
    "available_workflows",
    "get_workflow",
    "load_config",
    "parse_overrides",
    "workflow",
]

"""Workflows as code: Python functions registered by name.

A workflow is a function of a :class:`WorkflowContext` that drives one
execution (typically: a DAQ simulator run) and returns a
:class:`WorkflowOutcome`. It is registered under a name with the
:func:`workflow` decorator in an ordinary module of a package::

    VERSION = "1.0"

    @workflow("stf_datataking", version=VERSION, default_config="stf_datataking_default")
    def run(ctx: WorkflowContext) -> WorkflowOutcome:
        ...

Nothing is ever executed from a file: the registry only holds functions of
modules that were imported. The built-in workflows (:data:`BUILTIN_MODULES`)
are imported on the first lookup; other modules register theirs by being
imported (:func:`import_workflow_modules`, e.g. from the workflow runner's
``workflow_modules`` option).

A definition records its version (a constant of its module), its source
module and file, and the git commit of the source tree when there is one
(:func:`git_commit`, best effort, never failing).
"""

from __future__ import annotations

import importlib
import inspect
import logging
import subprocess
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from swf_testbed.messages import Message
from swf_testbed.workflows.config import MergedConfig

__all__ = [
    "BUILTIN_MODULES",
    "UnknownWorkflow",
    "WorkflowContext",
    "WorkflowDefinition",
    "WorkflowError",
    "WorkflowOutcome",
    "available_workflows",
    "get_workflow",
    "git_commit",
    "import_workflow_modules",
    "register",
    "workflow",
]

log = logging.getLogger(__name__)

BUILTIN_MODULES: tuple[str, ...] = ("swf_testbed.workflows.stf_datataking",)
"""Modules holding the workflows shipped with the package (imported on first lookup)."""


class WorkflowError(ValueError):
    """A workflow that cannot be registered, found or imported."""


class UnknownWorkflow(WorkflowError):
    def __init__(self, name: str, known: Iterable[str]) -> None:
        self.name = name
        self.known = sorted(known)
        super().__init__(f"unknown workflow {name!r}; known: {', '.join(self.known) or 'none'}")


# --------------------------------------------------------------------------- context and outcome


@dataclass
class WorkflowOutcome:
    """What an execution did, as its workflow function reports it."""

    stf_count: int = 0
    """STFs announced."""
    end_reason: str = "completed"
    """completed, stopped (stop_workflow) or duration (the duration limit)."""
    run_started: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkflowContext:
    """Everything a workflow function gets for one execution.

    ``emit`` publishes a run message (the runner sends it to the run topic);
    ``pace`` (None unless the time scale is 0) is to be called before each
    STF is announced and blocks while the consumers lag behind. A workflow
    registers what stops it with :meth:`on_stop`; the runner calls
    :meth:`stop` on ``stop_workflow``.
    """

    definition: WorkflowDefinition
    config: MergedConfig
    namespace: str
    execution_id: str
    run_id: int
    sender: str
    time_scale: float
    duration: float
    emit: Callable[[Message], None]
    pace: Callable[[], None] | None = None
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _stoppers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def on_stop(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` when the execution is stopped (at once if it already is)."""
        with self._lock:
            if not self._stop.is_set():
                self._stoppers.append(fn)
                return
        fn()

    def stop(self) -> None:
        """Stop the execution cleanly; safe from any thread, any number of times."""
        with self._lock:
            if self._stop.is_set():
                return
            self._stop.set()
            stoppers = list(self._stoppers)
        for fn in stoppers:
            try:
                fn()
            except Exception:  # noqa: BLE001 - a stopper must not prevent the others
                log.exception("stopping execution %s", self.execution_id)


WorkflowFn = Callable[[WorkflowContext], WorkflowOutcome]


# --------------------------------------------------------------------------- definitions


def _git(directory: str, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", *args], cwd=directory, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


@lru_cache(maxsize=64)
def _git_commit_of(directory: str, filename: str) -> str | None:
    commit = _git(directory, "rev-parse", "HEAD")
    if (
        not commit
        or len(commit) not in (40, 64)
        or not all(c in "0123456789abcdef" for c in commit)
    ):
        return None
    # like `git describe --dirty`: the file differs from that commit (modified, untracked, or
    # ignored, e.g. an installed copy under a virtualenv inside the tree)
    status = _git(directory, "status", "--porcelain", "--ignored", "--", filename)
    return f"{commit}-dirty" if status is None or status else commit


def git_commit(path: str | Path | None) -> str | None:
    """The commit checked out in the git tree holding file ``path`` (``<sha>-dirty`` when the file
    differs from it), or None: no git, not in a tree, any error. Never raises; cached per file."""
    if path is None:
        return None
    try:
        p = Path(path).resolve()
        if not p.is_file():
            return None
        return _git_commit_of(str(p.parent), p.name)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class WorkflowDefinition:
    """A registered workflow: name, version, where its code lives, how to run it."""

    name: str
    version: str
    run: WorkflowFn
    default_config: str
    description: str = ""
    module: str = ""
    source_file: str | None = None
    check_config: Callable[[MergedConfig], None] | None = None
    """Raises :class:`~swf_testbed.workflows.config.ConfigError` for a config the workflow cannot
    run.
    """

    def check(self, config: MergedConfig) -> None:
        """Refuse a config this workflow cannot run (before anything starts)."""
        if self.check_config is not None:
            self.check_config(config)

    @property
    def git_commit(self) -> str | None:
        """Git commit of the tree the source module comes from (best effort, cached)."""
        return git_commit(self.source_file)

    def describe(self) -> dict[str, Any]:
        """Identity of the code that runs, as an execution records it."""
        return {
            "name": self.name,
            "version": self.version,
            "module": self.module,
            "source_file": self.source_file,
            "git_commit": self.git_commit,
            "default_config": self.default_config,
        }


_registry: dict[str, WorkflowDefinition] = {}
_registry_lock = threading.RLock()
_builtins_loaded = False


def register(definition: WorkflowDefinition, *, replace: bool = False) -> WorkflowDefinition:
    """Add a definition; the same name from another function is an error unless ``replace``."""
    with _registry_lock:
        existing = _registry.get(definition.name)
        if (
            existing is not None
            and not replace
            and (existing.module, existing.run.__qualname__)
            != (definition.module, definition.run.__qualname__)
        ):
            raise WorkflowError(
                f"workflow {definition.name!r} is already registered by "
                f"{existing.module}.{existing.run.__qualname__}"
            )
        _registry[definition.name] = definition
    return definition


def workflow(
    name: str,
    *,
    version: str,
    default_config: str,
    description: str = "",
    check_config: Callable[[MergedConfig], None] | None = None,
    replace: bool = False,
) -> Callable[[WorkflowFn], WorkflowFn]:
    """Register the decorated function as workflow ``name`` (at import of its module)."""
    if not name or not version:
        raise WorkflowError("a workflow needs a name and a version")

    def decorate(fn: WorkflowFn) -> WorkflowFn:
        try:
            source = inspect.getsourcefile(fn)
        except TypeError:
            source = None
        doc = description or ((inspect.getdoc(fn) or "").splitlines() or [""])[0]
        register(
            WorkflowDefinition(
                name=name,
                version=str(version),
                run=fn,
                default_config=default_config,
                description=doc,
                module=fn.__module__,
                source_file=source,
                check_config=check_config,
            ),
            replace=replace,
        )
        return fn

    return decorate


def import_workflow_modules(modules: Iterable[str]) -> None:
    """Import modules so that their workflows register (module names, never files)."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise WorkflowError(f"cannot import workflow module {module!r}: {exc}") from exc


def _load_builtins() -> None:
    global _builtins_loaded
    with _registry_lock:
        if _builtins_loaded:
            return
        _builtins_loaded = True
    import_workflow_modules(BUILTIN_MODULES)


def get_workflow(name: str) -> WorkflowDefinition:
    """The definition registered as ``name``, or :class:`UnknownWorkflow`."""
    _load_builtins()
    with _registry_lock:
        definition = _registry.get(name)
        if definition is None:
            raise UnknownWorkflow(name, _registry)
        return definition


def available_workflows() -> list[WorkflowDefinition]:
    _load_builtins()
    with _registry_lock:
        return [_registry[k] for k in sorted(_registry)]

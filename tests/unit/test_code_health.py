"""The structure the code is held to (issue 14): measured, so that it cannot drift.

- no import circle among the ``swf_testbed`` modules: the imports at module
  level (read from the source, not run), each ``from x import y`` counted as an
  import of ``x.y`` when that is a module, else of ``x``; an import inside a
  function or under ``if TYPE_CHECKING:`` is allowed (it runs later, or never);
- the orchestrator never imports the CLI, not even inside a function;
- no file in ``src/`` over 800 lines, except migrations and the models;
- no function over complexity 15: ruff's mccabe rule (C901), as CI runs it.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "swf_testbed"
MAX_LINES = 800


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: at module level, also in try/if blocks."""
    found: list[ast.Import | ast.ImportFrom] = []

    def walk(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                found.append(node)
            elif isinstance(node, ast.If):
                if not _is_type_checking(node.test):
                    walk(node.body)
                walk(node.orelse)
            elif isinstance(node, ast.Try):
                for block in (node.body, node.orelse, node.finalbody):
                    walk(block)
                for handler in node.handlers:
                    walk(handler.body)
            elif isinstance(node, (ast.With, ast.For, ast.While)):
                walk(node.body)

    walk(tree.body)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module → the ``swf_testbed`` modules it imports at module level."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                    for alias in node.names
                ]
            for target in targets:
                # importing a.b.c imports its packages a and a.b first; those count too
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(graph)))
    try:
        for node in sorted(graph):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return found


def test_the_import_checker_sees_a_circle() -> None:
    """The checker itself: a circle of three, and a chain without one."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_graph_reads_the_package() -> None:
    graph = import_graph()
    assert "swf_testbed.messages.schema" in graph["swf_testbed.messages"]
    assert "swf_testbed.messages.schema" in graph["swf_testbed.messages.v28"]
    # a TYPE_CHECKING import is not a runtime edge (recording imports facets)
    assert "swf_testbed.monitor.api.recording" not in graph["swf_testbed.monitor.api.facets"]


def test_no_import_circles() -> None:
    assert cycles(import_graph()) == []


def _imports_anywhere(path: Path) -> set[str]:
    """Every module a file imports, at any level (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_the_orchestrator_does_not_import_the_cli() -> None:
    """The CLI depends on the orchestrator, never the reverse, not even inside a function.

    (An import inside a function is no circle at import time, so the check above
    allows it; this one is the direction issue 14 asks for.)
    """
    offenders = {
        _module_name(path): sorted(
            m
            for m in _imports_anywhere(path)
            if m == "swf_testbed.cli" or m.startswith("swf_testbed.cli.")
        )
        for path in sorted((PACKAGE / "orchestrator").rglob("*.py"))
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def _too_long() -> dict[str, int]:
    return {
        path.relative_to(SRC).as_posix(): n
        for path in sorted(SRC.rglob("*.py"))
        if "migrations" not in path.parts
        and path.name != "models.py"
        and (n := len(path.read_text().splitlines())) > MAX_LINES
    }


def _too_complex() -> dict[str, str]:
    """``file:function`` → ruff's C901 finding, at the threshold pyproject sets."""
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    if ruff is None:
        pytest.skip("ruff is not installed (it is in the test extras)")
    done = subprocess.run(
        [ruff, "check", "--select", "C901", "--output-format", "concise", "--no-cache", "."],
        cwd=SRC,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    found = {}
    for line in done.stdout.splitlines():
        match = re.match(r"^(\S+?):\d+:\d+: C901 `([^`]+)`", line)
        if match:
            found[f"{Path(match[1]).as_posix()}:{match[2]}"] = line
    return found


def test_no_file_in_src_over_800_lines() -> None:
    assert _too_long() == {}


def test_no_function_over_complexity_15() -> None:
    """ruff's C901 (mccabe); CI's ``./dev lint`` runs it too."""
    found = _too_complex()
    assert found == {}, "\n".join(found.values())

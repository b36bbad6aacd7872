"""The documentation stays true to the code.

* every generated reference file (docs/reference/) equals what the code generates now;
* ``swf-testbed docs write --check`` notices a stale file, and ``docs write`` fixes it;
* every environment variable in the configuration reference is the name the settings really read;
* every relative link in README.md and docs/ points at a file (and heading) that exists;
* every ``swf-testbed …`` command shown in them is a real command, with real options.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import subprocess
import sys
import unicodedata
from enum import Enum
from pathlib import Path
from typing import Any

import pytest

from swf_testbed import reference

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
REGENERATE = "regenerate: swf-testbed docs write"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


# --------------------------------------------------------------------------- generated files


@pytest.mark.parametrize("name", ["cli.md", "config.md"])
def test_generated_reference_is_current(name: str) -> None:
    committed = (DOCS / "reference" / name).read_text()
    assert committed == reference.GENERATED[name](), (
        f"docs/reference/{name} is out of date; {REGENERATE}"
    )


def test_openapi_schema_is_current(tmp_path: Path) -> None:
    """The committed OpenAPI schema is what the monitor serves at /api/schema/ (generated in a clean
    process).
    """
    env = {**os.environ, "SWF_HOME": str(tmp_path)}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-m", "swf_testbed.cli", "docs", "openapi"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("openapi: 3")
    assert "/api/workflow-messages/" in result.stdout
    committed = (DOCS / "reference" / "openapi.yaml").read_text()
    assert committed == result.stdout, f"docs/reference/openapi.yaml is out of date; {REGENERATE}"


@pytest.mark.slow
def test_docs_write_check_finds_and_fixes_stale_files(tmp_path: Path) -> None:
    env = {**os.environ, "SWF_HOME": str(tmp_path / "home")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    out = tmp_path / "reference"
    out.mkdir()
    (out / "cli.md").write_text("stale\n")

    def docs_write(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "swf_testbed.cli", "docs", "write", "--dir", str(out), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    check = docs_write("--check")
    assert check.returncode == 1
    assert "cli.md" in check.stderr and "config.md" in check.stderr
    assert (out / "cli.md").read_text() == "stale\n", "--check must not write"
    assert not (out / "config.md").exists()

    assert docs_write().returncode == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(reference.GENERATED)
    assert (out / "cli.md").read_text() == reference.cli_markdown()
    again = docs_write("--check")
    assert again.returncode == 0, again.stderr


def test_cli_reference_covers_every_command() -> None:
    text = reference.cli_markdown()
    paths = [path for path, _cmd, _ctx in reference.iter_commands()]
    assert {"swf-testbed run", "swf-testbed monitor prune", "swf-testbed docs write"} <= set(paths)
    for path in paths:
        assert f"## `{path}`" in text, path
    assert "| `--older-than` | number (DAYS) | **required** |" in text


# ------------------------------------------------------------------------ settings and testbed.toml


def _probe(model: Any, name: str) -> tuple[str, Any]:
    """An environment value for the field and the value the settings should then hold (not the
    default).
    """
    field = model.model_fields[name]
    default = field.get_default(call_default_factory=True)
    annotation = field.annotation
    if isinstance(default, Enum):
        other = next(m for m in type(default) if m != default)
        return other.value, other
    if annotation is bool or annotation == bool | None:
        return ("false", False) if default else ("true", True)
    if annotation is int:
        return str(default + 1), default + 1
    if annotation is float:
        return str(default + 1.5), default + 1.5
    if "Path" in str(annotation):
        return "/probe/path", Path("/probe/path")
    if field.examples:  # a string with a format of its own (a time zone, networks, rates)
        return str(field.examples[0]), field.examples[0]
    return "probe-value", "probe-value"


def test_every_setting_is_described_and_read_under_its_documented_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from swf_testbed.settings import BrokerSettings, MonitorSettings, Settings

    variables = reference.settings_variables()
    names = [env for env, _m, _f in variables]
    assert {
        "ACTIVEMQ_HOST",
        "ACTIVEMQ_USE_SSL",
        "SWF_PROFILE",
        "DATABASE_URL",
        "SWF_INGEST_DURABLE",
    } <= set(names)
    documented = reference.config_markdown()
    for env, model, name in variables:
        assert model.model_fields[name].description, f"{model.__name__}.{name} has no description"
        assert f"| `{env}` |" in documented, env
        raw, expected = _probe(model, name)
        with monkeypatch.context() as m:
            for other in names:
                m.delenv(other, raising=False)
                m.delenv(f"{other}_FILE", raising=False)
            m.setenv(env, raw)
            settings = Settings()
            holder = {
                Settings: settings,
                BrokerSettings: settings.broker,
                MonitorSettings: settings.monitor,
            }[model]
            assert getattr(holder, name) == expected, (
                f"{env}={raw} did not set {model.__name__}.{name}"
            )


def test_every_testbed_key_is_described() -> None:
    from pydantic import BaseModel

    from swf_testbed.orchestrator.config import AgentSection, TestbedConfig

    documented = reference.config_markdown()
    sections: list[type[BaseModel]] = [AgentSection]
    for field in TestbedConfig.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            sections.append(field.annotation)
    for section in sections:
        for name, field in section.model_fields.items():
            assert field.description, f"{section.__name__}.{name} has no description"
            assert f"| `{name}` |" in documented


# --------------------------------------------------------------------------- links

_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`+[^`]*?`+", re.S)
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _strip_code(text: str) -> str:
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors: set[str] = set()
    counts: dict[str, int] = {}
    for line in _FENCE.sub("", text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        title = re.sub(r"<[^>]+>", "", m.group(1)).lower()
        slug = "".join(
            ch for ch in title if ch.isalnum() or ch in "-_ " or unicodedata.category(ch) == "Mn"
        )
        slug = slug.replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    anchors |= set(re.findall(r"<a (?:id|name)=\"([^\"]+)\"", text))
    return anchors


def test_github_anchor_rules() -> None:
    text = (
        "# A `swf-testbed run [testbed.toml]` title\n## Health\n## Health\n"
        "```\n# not a heading\n```\n"
    )
    assert github_anchors(text) == {"a-swf-testbed-run-testbedtoml-title", "health", "health-1"}


def test_every_relative_link_points_at_something_that_exists() -> None:
    broken = []
    checked = 0
    for doc in doc_files():
        for target in _LINK.findall(_strip_code(doc.read_text())):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            path_part, _, anchor = target.partition("#")
            dest = (doc.parent / path_part).resolve() if path_part else doc
            where = f"{doc.relative_to(ROOT)}: ({target})"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in github_anchors(dest.read_text()):
                broken.append(f"{where}: no heading #{anchor} in {dest.relative_to(ROOT)}")
    assert checked > 20, "the link pattern found almost nothing: is it still right?"
    assert not broken, "broken links:\n" + "\n".join(broken)


# ----------------------------------------------------------------------- commands shown in the docs

_STOP = {"|", "||", "&&", ";", "&", ">", ">>", "2>&1", "#", ")", "<"}
_PROMPT = re.compile(
    r"^\s*(?:\$\s+|Exec\w+=)?"  # a shell prompt, or a systemd Exec*= line
    r"(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:export\s+[A-Z_]+=\$\()?"  # VAR=value prefixes, export X=$(
    r"(?:[^\s=]*/)?swf-testbed(?:\s+(.*)|$)"  # the command, maybe with a path
)


def commands_in(text: str) -> list[str]:
    """``swf-testbed …`` command lines: in fenced blocks at a command position, and whole inline
    code spans.
    """
    found = []
    for block in _FENCE.finditer(text):
        lines = block.group(0).splitlines()[1:-1]
        joined: list[str] = []
        for line in lines:  # backslash continuations
            if joined and joined[-1].endswith("\\"):
                joined[-1] = joined[-1][:-1] + " " + line.strip()
            else:
                joined.append(line)
        for line in joined:
            m = _PROMPT.match(line)
            if m:
                found.append(("swf-testbed " + (m.group(1) or "")).strip())
    for span in _INLINE_CODE.findall(_FENCE.sub("", text)):
        code = " ".join(span.strip("`").split())
        m = re.match(r"^(?:\S*/)?swf-testbed(?:\s+(.*))?$", code)
        if m:
            found.append(("swf-testbed " + (m.group(1) or "")).strip())
    return found


@functools.cache
def _root() -> Any:
    return reference.cli_root()


def check_command(line: str) -> str | None:
    """None when ``line`` names a real command with real options; else what is wrong."""
    root = _root()
    core = reference._click_parts()
    try:
        tokens = shlex.split(line.replace("\\|", "|"), comments=True)
    except ValueError:
        tokens = line.split()
    tokens = [t.strip("[]") for t in tokens[1:]]
    command, ctx = root, core.Context(root, info_name="swf-testbed")
    path = "swf-testbed"
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token or token in _STOP or token.startswith(("$", "<", "…")):
            break
        if token.startswith("-"):
            if not _known_option(command, ctx, token):
                return f"{path}: no option {token}"
            i += 1
            continue
        if re.fullmatch(r"[A-Z][A-Z0-9_.]*", token):  # a placeholder: NAME, COMMAND, [OPTIONS]
            break
        if hasattr(command, "list_commands"):
            sub = command.get_command(ctx, token)
            if sub is None:
                return f"{path}: no command {token!r}"
            command, ctx = sub, core.Context(sub, info_name=token, parent=ctx)
            path += f" {token}"
            i += 1
            continue
        i += 1  # an argument or an option's value
    return None


def _known_option(command: Any, ctx: Any, token: str) -> bool:
    settings = getattr(command, "context_settings", None) or {}
    if settings.get("ignore_unknown_options"):
        return True
    name = token.split("=", 1)[0]
    if name in command.get_help_option_names(ctx):
        return True
    return any(name in (*p.opts, *getattr(p, "secondary_opts", ())) for p in command.params)


def test_command_checker_catches_mistakes() -> None:
    assert check_command("swf-testbed monitor prune --older-than 30 --dry-run") is None
    assert check_command("swf-testbed stop [--all] -c examples/testbed.toml") is None
    assert check_command("swf-testbed monitor manage createsuperuser --anything") is None
    assert (
        check_command("swf-testbed monitor prune --older 30")
        == "swf-testbed monitor prune: no option --older"
    )
    assert check_command("swf-testbed monitr serve") == "swf-testbed: no command 'monitr'"
    assert commands_in(
        "text `swf-testbed status --json` and\n```bash\n$ FOO=1 swf-testbed run x.toml  # c\n"
        "echo swf-testbed up\n```\n"
    ) == ["swf-testbed run x.toml  # c", "swf-testbed status --json"]


def test_every_command_in_the_docs_is_real() -> None:
    wrong = []
    seen = 0
    for doc in doc_files():
        for line in commands_in(doc.read_text()):
            seen += 1
            problem = check_command(line)
            if problem:
                wrong.append(f"{doc.relative_to(ROOT)}: `{line}`: {problem}")
    assert seen > 40, "the command pattern found almost nothing: is it still right?"
    assert not wrong, "commands in the docs that do not exist:\n" + "\n".join(wrong)


# ------------------------------------------------------------------ hand-written tables vs the code


def _table_rows(text: str, header_start: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def _codes(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


def test_concepts_agent_table_matches_the_agents() -> None:
    """Each built-in agent's handlers and subscriptions are the ones docs/concepts.md shows."""
    import importlib

    from swf_testbed.agents.runtime import Listen

    rows = _table_rows(
        (DOCS / "concepts.md").read_text(), "| agent | class | listens on | handles |"
    )
    assert len(rows) == 6
    for row in rows:
        module_name, _, class_name = row[1].strip("`").partition(":")
        cls = getattr(importlib.import_module(f"swf_testbed.agents.{module_name}"), class_name)
        assert _codes(row[3]) == set(cls.handled_types()), f"{class_name}: handles"
        agent = cls("doc-check", "NS")
        listens = {
            str(item.destination if isinstance(item, Listen) else item)
            for item in agent.listens_on()
        }
        assert _codes(row[2]) == listens, f"{class_name}: listens on"


def test_api_endpoint_table_matches_the_schema() -> None:
    import yaml

    schema = yaml.safe_load((DOCS / "reference" / "openapi.yaml").read_text())
    in_schema = {
        path: {m.upper() for m in ops if m in ("get", "post", "put", "patch", "delete")}
        for path, ops in schema["paths"].items()
    }
    rows = _table_rows((DOCS / "reference" / "api.md").read_text(), "| path | methods |")
    documented = {row[0].strip("`"): {m.strip() for m in row[1].split(",")} for row in rows}
    assert documented == in_schema

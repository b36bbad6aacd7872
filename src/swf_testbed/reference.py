"""Reference documentation generated from the code (so it can never drift)."""

from __future__ import annotations

import inspect
from typing import Any

from swf_testbed.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message
from swf_testbed.settings import env_variable

_CATEGORY_TITLES = {
    "run": "Run lifecycle (DAQ simulator → run topic)",
    "data": "Data flow (agents)",
    "control": "Control (workflow runner)",
    "agent": "Agents",
    "other": "Other",
}


def _type_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return str(schema["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in schema:
        return " or ".join(_type_name(s) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    if kind == "array":
        return f"list of {_type_name(schema.get('items', {}))}"
    if kind == "object":
        return "object"
    if schema.get("format") == "date-time":
        return "datetime (UTC)"
    return str(kind)


def _constraints(schema: dict[str, Any]) -> str:
    parts = []
    for key, label in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("pattern", "pattern"),
    ):
        if key in schema:
            value = schema[key]
            parts.append(f"{label} `{value}`" if key == "pattern" else f"{label} {value}")
    return ", ".join(parts)


def _message_section(model: type[Message]) -> list[str]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    defs = schema.get("$defs", {})
    msg_type = model.model_fields["msg_type"].default
    lines = [
        f"### `{msg_type}`",
        "",
        inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " "),
        "",
        "| field | type | required | default | notes |",
        "|---|---|---|---|---|",
    ]
    for name, prop in schema["properties"].items():
        if name == "msg_type":
            continue
        ref = prop.get("$ref") or (prop.get("allOf") or [{}])[0].get("$ref")
        type_name = _type_name(prop)
        if ref:
            target = defs.get(ref.rsplit("/", 1)[-1], {})
            if "enum" in target:
                type_name = _type_name(target)
        default_text = (
            f"`{prop['default']!r}`" if "default" in prop and name not in required else ""
        )
        if name == "msg_id":
            default_text = "new UUID"
        if name == "timestamp":
            default_text = "now"
        notes = "; ".join(x for x in (prop.get("description", ""), _constraints(prop)) if x)
        lines.append(
            f"| `{name}` | {type_name} | {'yes' if name in required else ''} | {default_text} | "
            f"{notes} |"
        )
    lines.append("")
    return lines


def messages_markdown() -> str:
    """The message reference, one table per ``msg_type``."""
    lines = [
        "# Message reference",
        "",
        "Generated from `swf_testbed.messages` by `swf-testbed docs messages`; do not edit by "
        "hand.",
        "",
        f"Schema version: {SCHEMA_VERSION}. Every body is a JSON object; unknown fields are "
        f"rejected.",
        "Sends carry the STOMP headers `msg_type`, `namespace`, `msg_id` and `persistent`.",
        "",
    ]
    by_category: dict[str, list[type[Message]]] = {}
    for model in MESSAGE_TYPES.values():
        by_category.setdefault(model.category, []).append(model)
    for category, title in _CATEGORY_TITLES.items():
        if category not in by_category:
            continue
        lines += [f"## {title}", ""]
        for model in by_category[category]:
            lines += _message_section(model)
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the command line


def _cell(text: object) -> str:
    """One Markdown table cell: a single line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def _click_parts() -> Any:
    """Typer's click (it vendors its own since 0.2x); the plain ``click`` package otherwise."""
    try:
        from typer._click import core
    except ImportError:  # pragma: no cover - older typer
        import click.core as core  # type: ignore[no-redef]  # the same module, from click itself
    return core


def cli_root() -> Any:
    """The click command tree of the ``swf-testbed`` Typer app."""
    import typer

    from swf_testbed.cli import app

    return typer.main.get_command(app)


def _param_type(param: Any) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    names = {str: "text", int: "integer", float: "number", bool: "flag"}
    args = getattr(annotation, "__args__", None)
    if args:  # list[str], an Option given several times
        annotation = args[0]
    if annotation in names:
        kind = names[annotation]
    elif getattr(annotation, "__name__", "") in ("Path", "PosixPath"):
        kind = "path"
    else:
        kind = getattr(annotation, "__name__", str(annotation)).lower()
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        kind += f" {low}…{high}"
    elif low is not None:
        kind += f" ≥ {low}"
    elif high is not None:
        kind += f" ≤ {high}"
    if getattr(param, "metavar", None) and param.param_type_name == "option":
        kind += f" ({param.metavar})"
    if getattr(param, "multiple", False):
        kind += ", repeatable"
    return kind


def _param_default(param: Any) -> str:
    if param.required:
        return "**required**"
    default = param.default
    if callable(default) or default is None or getattr(param, "multiple", False) and not default:
        return ""
    if getattr(param, "secondary_opts", None) and isinstance(default, bool):
        return f"`{param.opts[0] if default else param.secondary_opts[0]}`"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


def _param_row(param: Any) -> str:
    if param.param_type_name == "argument":
        name = f"`{param.name.upper()}`"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
    help_text = getattr(param, "help", None) or ""
    if param.envvar:
        envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        help_text += " Environment: " + ", ".join(f"`{e}`" for e in envvars) + "."
    cells = (
        name,
        _cell(_param_type(param)),
        _cell(_param_default(param)),
        _cell(help_text.strip()),
    )
    return "| " + " | ".join(cells) + " |"


def _usage(command: Any, ctx: Any) -> str:
    pieces = [ctx.command_path, "[OPTIONS]"]
    for param in command.params:
        if param.param_type_name != "argument":
            continue
        name = param.name.upper() + ("..." if param.nargs == -1 else "")
        pieces.append(name if param.required else f"[{name}]")
    if hasattr(command, "list_commands"):
        pieces.append("COMMAND [ARGS]...")
    elif (getattr(command, "context_settings", None) or {}).get("ignore_unknown_options"):
        pieces.append("[ARGS]...")
    return " ".join(pieces)


def iter_commands(root: Any | None = None) -> list[tuple[str, Any, Any]]:
    """Every command and group under ``root``, depth first: (path, command, click context)."""
    core = _click_parts()
    root = root if root is not None else cli_root()
    out: list[tuple[str, Any, Any]] = []

    def walk(command: Any, ctx: Any) -> None:
        out.append((ctx.command_path, command, ctx))
        if hasattr(command, "list_commands"):
            for name in command.list_commands(ctx):
                sub = command.get_command(ctx, name)
                if sub is None or getattr(sub, "hidden", False):
                    continue
                walk(sub, core.Context(sub, info_name=name, parent=ctx))

    walk(root, core.Context(root, info_name="swf-testbed"))
    return out


def _anchor(path: str) -> str:
    return path.replace(" ", "-")


def cli_markdown() -> str:
    """The command line reference: every command and subcommand, its arguments and options."""
    commands = iter_commands()
    lines = [
        "# Command line reference",
        "",
        "Generated from the `swf-testbed` Typer app by `swf-testbed docs cli`; do not edit by "
        "hand.",
        "Every command also takes `--help`. Exit codes of the orchestrator's commands: 0 success, "
        "1 something",
        "failed, 2 a bad testbed.toml or option (nothing started), 130 interrupted.",
        "",
        "## Commands",
        "",
    ]
    for path, command, _ctx in commands:
        depth = path.count(" ")
        summary = inspect.cleandoc(command.help or "").split("\n\n")[0].replace("\n", " ")
        lines.append(f"{'  ' * max(depth - 1, 0)}- [`{path}`](#{_anchor(path)}): {summary}")
    lines.append("")
    for path, command, ctx in commands:
        lines += [f"## `{path}`", ""]
        help_text = inspect.cleandoc(command.help or "")
        if help_text:
            lines += [help_text, ""]
        lines += ["```", _usage(command, ctx), "```", ""]
        settings = getattr(command, "context_settings", None) or {}
        if settings.get("ignore_unknown_options"):
            lines += ["Every further argument is passed on unchanged.", ""]
        params = [p for p in command.params if not getattr(p, "hidden", False)]
        if params:
            lines += ["| argument / option | type | default | meaning |", "|---|---|---|---|"]
            lines += [_param_row(p) for p in params]
            lines.append("")
        if hasattr(command, "list_commands"):
            subs = command.list_commands(ctx)
            if subs:
                lines += [
                    "Subcommands: "
                    + ", ".join(f"[`{path} {s}`](#{_anchor(f'{path} {s}')})" for s in subs)
                    + ".",
                    "",
                ]
    return "\n".join(lines).rstrip() + "\n"


def cli_envvars() -> list[tuple[str, str, str]]:
    """(variable, command path, option) for every option that reads an environment variable."""
    found = []
    for path, command, _ctx in iter_commands():
        for param in command.params:
            if param.envvar:
                envvars = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
                for env in envvars:
                    found.append((env, path, (param.opts or [param.name])[0]))
    return sorted(found)


# --------------------------------------------------------------------------- configuration


def _json_type(schema: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in schema:
        target = defs.get(schema["$ref"].rsplit("/", 1)[-1], {})
        return _json_type(target, defs) if "enum" in target else "table"
    if "anyOf" in schema:
        kinds = [_json_type(s, defs) for s in schema["anyOf"] if s.get("type") != "null"]
        return " or ".join(kinds)
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{schema['const']}`"
    kind = schema.get("type", "any")
    names = {
        "string": "string",
        "integer": "integer",
        "number": "number",
        "boolean": "boolean",
        "object": "table",
        "array": "array",
    }
    if kind == "array":
        return f"array of {names.get(schema.get('items', {}).get('type', ''), 'values')}s"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        inner = schema["additionalProperties"].get("type")
        return f"table of {names[inner]}s" if inner in names else "table"
    if schema.get("format") == "path":
        return "path"
    return names.get(str(kind), str(kind))


def _all_constraints(schema: dict[str, Any]) -> str:
    """Constraints of a property, also of an optional one (``anyOf`` with null)."""
    parts = [_constraints(schema)] + [_constraints(s) for s in schema.get("anyOf", [])]
    return ", ".join(p for p in parts if p)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{}" if not value else repr(value)
    if isinstance(value, list):
        return "[]" if not value else repr(value)
    return str(value)


def _model_rows(model: Any, table: str) -> list[str]:
    """One row per key of a pydantic model (a TOML table)."""
    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a sub-table: its own section
        prop = schema["properties"].get(name, {})
        if field.is_required():
            default = "**required**"
        elif field.default is not PydanticUndefined:
            default = "" if field.default is None else f"`{_toml_value(field.default)}`"
        else:
            factory = field.default_factory
            default = f"`{_toml_value(factory())}`" if factory else ""
        notes = "; ".join(x for x in (field.description or "", _all_constraints(prop)) if x)
        rows.append(f"| `{name}` | {_json_type(prop, defs)} | {default} | {_cell(notes)} |")
    return rows


def settings_variables() -> list[tuple[str, Any, str]]:
    """(environment variable, settings model, field name) for every setting read from the
    environment.
    """
    from pydantic_settings import BaseSettings

    from swf_testbed.settings import Settings

    found: list[tuple[str, Any, str]] = []

    def walk(model: Any) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseSettings):
                walk(annotation)
                continue
            found.append((env_variable(model, name), model, name))

    walk(Settings)
    return found


def _settings_rows(group: Any) -> list[str]:
    from pydantic_core import PydanticUndefined

    from swf_testbed.settings import default_home

    rows = []
    schemas: dict[Any, dict[str, Any]] = {}
    for env, model, name in settings_variables():
        if model is not group:
            continue
        schema = schemas.setdefault(model, model.model_json_schema())
        prop = schema["properties"].get(name) or schema["properties"].get(
            env_variable(model, name), {}
        )
        field = model.model_fields[name]
        if field.default_factory is default_home:
            default = "`$XDG_STATE_HOME/swf-testbed`, else `~/.local/state/swf-testbed`"
        elif field.default is PydanticUndefined or field.default is None or field.default == "":
            default = "empty"
        else:
            value = field.default
            default = (
                f"`{value.value if hasattr(value, 'value') else _toml_value(value).strip(chr(34))}`"
            )
        notes = "; ".join(x for x in (field.description or "", _all_constraints(prop)) if x)
        secret = "" if field.repr else " (secret: kept out of logs and reprs)"
        if env in _secret_variables():
            secret += f"; or `{env}_FILE`: a file holding it"
        rows.append(
            f"| `{env}` | {_json_type(prop, schema.get('$defs', {}))} | {default} | "
            f"{_cell(notes + secret)} |"
        )
    return rows


def _model_doc(model: Any) -> str:
    """The first paragraph of a model's docstring, without its leading ``[table]``: label."""
    doc = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    label, sep, rest = doc.partition(": ")
    if sep and label.startswith("``") and label.endswith("``"):
        doc = rest[:1].upper() + rest[1:]
    return doc.replace("``", "`")


def _secret_variables() -> tuple[str, ...]:
    from swf_testbed import settings

    return tuple(getattr(settings, "SECRET_VARIABLES", ()))


def config_markdown() -> str:
    """testbed.toml keys and environment variables, from the pydantic models."""
    from swf_testbed.orchestrator.config import AgentSection, TestbedConfig
    from swf_testbed.settings import BrokerSettings, MonitorSettings, Settings

    lines = [
        "# Configuration reference",
        "",
        "Generated by `swf-testbed docs config` from the pydantic models in",
        "`swf_testbed.orchestrator.config` (testbed.toml) and `swf_testbed.settings` "
        "(environment);",
        "do not edit by hand. The prose is in [../orchestrator.md](../orchestrator.md) and",
        "[../operations.md](../operations.md).",
        "",
        "## testbed.toml",
        "",
        'Unknown tables and keys are errors, types are strict (`enabled = "yes"` is refused), and '
        "an error",
        "names the file, the key and what was expected. Addresses in the file give way to the "
        "environment",
        "(`ACTIVEMQ_HOST`, `ACTIVEMQ_PORT`, `SWF_MONITOR_URL`, `DATABASE_URL`).",
        "",
    ]
    from pydantic import BaseModel

    for name, field in TestbedConfig.model_fields.items():
        annotation = field.annotation
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        if name == "agents":
            model, table = AgentSection, "[agents.NAME]"
        else:
            table = f"[{name}]"
        lines += [f"### `{table}`", ""]
        if model is None:
            what = field.description or "a table"
            lines += [f"{what[:1].upper()}{what[1:]}: any keys and values, passed on as given.", ""]
            continue
        lines += [_model_doc(model), "", "| key | type | default | meaning |", "|---|---|---|---|"]
        lines += _model_rows(model, table)
        lines.append("")
    lines += [
        "## Environment",
        "",
        "Read by every program through `swf_testbed.settings.get_settings()` (names are "
        "case-insensitive).",
        "What the orchestrator sets for the programs it starts is in "
        "[../orchestrator.md](../orchestrator.md).",
        "",
    ]
    for title, group in (
        ("Runtime", Settings),
        ("Broker (`ACTIVEMQ_*`)", BrokerSettings),
        ("Monitor (`SWF_*`)", MonitorSettings),
    ):
        doc = (
            _model_doc(group)
            if group is not Settings
            else "Runtime directory, profile, the monitor's database."
        )
        lines += [
            f"### {title}",
            "",
            doc,
            "",
            "| variable | type | default | meaning |",
            "|---|---|---|---|",
        ]
        lines += _settings_rows(group)
        lines.append("")
    secrets = _secret_variables()
    if secrets:
        names = ", ".join(f"`{name}`" for name in secrets)
        lines += [
            "### Secrets from files",
            "",
            f"Each of {names} can be given instead as `<NAME>_FILE`, the path of a file holding "
            f"the value",
            "(surrounding whitespace stripped). The file must not be open to group or others "
            "(`chmod 600`);",
            "setting both `NAME` and `NAME_FILE` is an error. The orchestrator hands the `_FILE` "
            "variable on",
            "to its programs, never the value.",
            "",
        ]
    lines += [
        "### Read by command options",
        "",
        "| variable | command | option |",
        "|---|---|---|",
    ]
    lines += [f"| `{env}` | `{path}` | `{opt}` |" for env, path, opt in cli_envvars()]
    lines.append("")
    return "\n".join(lines).rstrip() + "\n"


# --------------------------------------------------------------------------- the monitor's REST API


def openapi_yaml() -> str:
    """The monitor's OpenAPI schema (what ``/api/schema/`` serves), as YAML."""
    from swf_testbed import monitor

    monitor.setup()
    from drf_spectacular.generators import SchemaGenerator
    from drf_spectacular.renderers import OpenApiYamlRenderer

    # drf-spectacular's generator and renderer carry no annotations
    make_generator: Any = SchemaGenerator
    make_renderer: Any = OpenApiYamlRenderer
    generator, renderer = make_generator(), make_renderer()
    schema = generator.get_schema(request=None, public=True)
    return str(renderer.render(schema, renderer_context={}).decode())


# --------------------------------------------------------------------------- all of them

GENERATED: dict[str, Any] = {
    "messages.md": messages_markdown,
    "cli.md": cli_markdown,
    "config.md": config_markdown,
    "openapi.yaml": openapi_yaml,
}
"""Files under docs/reference/ and the functions that generate them."""

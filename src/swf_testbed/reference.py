"""Reference documentation generated from the code (so it can never drift)."""

from __future__ import annotations

from typing import Any

from swf_testbed.messages import MESSAGE_TYPES, SCHEMA_VERSION, Message

_CATEGORY_TITLES = {
    "run": "Run lifecycle (DAQ simulator → run topic)",
    "data": "Data flow (agents)",
    "control": "Control (workflow runner)",
    "agent": "Agents",
    "other": "Other",
}


def _type_name(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
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
    for key, label in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"),
                       ("minLength", "min length"), ("maxLength", "max length"), ("pattern", "pattern")):
        if key in schema:
            value = schema[key]
            parts.append(f"{label} `{value}`" if key == "pattern" else f"{label} {value}")
    return ", ".join(parts)


def _message_section(model: type[Message]) -> list[str]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    defs = schema.get("$defs", {})
    msg_type = model.model_fields["msg_type"].default
    lines = [f"### `{msg_type}`", "", ((model.__doc__ or "").strip().splitlines() or [""])[0], "",
             "| field | type | required | default | notes |", "|---|---|---|---|---|"]
    for name, prop in schema["properties"].items():
        if name == "msg_type":
            continue
        ref = prop.get("$ref") or (prop.get("allOf") or [{}])[0].get("$ref")
        type_name = _type_name(prop)
        if ref:
            target = defs.get(ref.rsplit("/", 1)[-1], {})
            if "enum" in target:
                type_name = _type_name(target)
        default_text = f"`{prop['default']!r}`" if "default" in prop and name not in required else ""
        if name == "msg_id":
            default_text = "new UUID"
        if name == "timestamp":
            default_text = "now"
        notes = "; ".join(x for x in (prop.get("description", ""), _constraints(prop)) if x)
        lines.append(f"| `{name}` | {type_name} | {'yes' if name in required else ''} | {default_text} | {notes} |")
    lines.append("")
    return lines


def messages_markdown() -> str:
    """The message reference, one table per ``msg_type``."""
    lines = [
        "# Message reference",
        "",
        "Generated from `swf_testbed.messages` by `swf-testbed docs messages`; do not edit by hand.",
        "",
        f"Schema version: {SCHEMA_VERSION}. Every body is a JSON object; unknown fields are rejected.",
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

from __future__ import annotations

from pathlib import Path

import pytest

from swf_testbed.agents.loader import AgentLoadError, load_agent_class, parse_options
from swf_testbed.reference import messages_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_message_reference_in_docs_is_current() -> None:
    committed = (ROOT / "docs" / "reference" / "messages.md").read_text()
    assert committed == messages_markdown(), (
        "regenerate: swf-testbed docs messages -o docs/reference/messages.md"
    )


def test_message_reference_documents_every_type() -> None:
    text = messages_markdown()
    for name in (
        "run_imminent",
        "stf_gen",
        "slice_result",
        "run_workflow",
        "heartbeat",
        "dead_letter",
    ):
        assert f"### `{name}`" in text


def test_load_agent_class() -> None:
    from tests.support.agents import EchoAgent

    assert load_agent_class("tests.support.agents:EchoAgent") is EchoAgent


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("nocolon", "expected 'package.module:ClassName'"),
        ("no.such.module:X", "cannot import"),
        ("tests.support.agents:Missing", "has no 'Missing'"),
        ("tests.support.agents:stf_ready", "not a subclass"),
    ],
)
def test_load_agent_class_errors(target: str, fragment: str) -> None:
    with pytest.raises(AgentLoadError, match=fragment):
        load_agent_class(target)


def test_parse_options() -> None:
    assert parse_options(["a=1", "b=x", "c=[1,2]", "d=true"]) == {
        "a": 1,
        "b": "x",
        "c": [1, 2],
        "d": True,
    }
    with pytest.raises(AgentLoadError):
        parse_options(["1bad=3"])

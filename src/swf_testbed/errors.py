"""One way to say what a pydantic ``ValidationError`` found.

The message schema, the testbed config, the workflow configs and the
environment settings each report a failed validation in their own words (a
field path, a config key with the file it came from, an environment variable),
but they all read the error the same way: one :class:`Problem` per error, its
location dotted. :func:`problems` does that reading, :func:`describe` joins
the problems into one line; the callers only choose how a problem is worded.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

__all__ = ["Problem", "describe", "problems"]


@dataclass(frozen=True, slots=True)
class Problem:
    """One error of a ``ValidationError``: where, what kind, pydantic's wording, the value."""

    loc: tuple[str, ...]
    kind: str
    msg: str
    input: Any = None
    ctx: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The location dotted (``agents.0.name``); empty for the whole object."""
        return ".".join(self.loc)


def problems(exc: ValidationError, *, skip: Collection[str] = ()) -> list[Problem]:
    """The errors of ``exc`` in order; location parts in ``skip`` (e.g. a union tag) left out."""
    return [
        Problem(
            loc=tuple(str(part) for part in err["loc"] if str(part) not in skip),
            kind=err["type"],
            msg=err["msg"],
            input=err.get("input"),
            ctx=dict(err.get("ctx") or {}),
        )
        for err in exc.errors(include_url=False)
    ]


def _key_and_msg(problem: Problem) -> str:
    return f"{problem.key or '(body)'}: {problem.msg}"


def describe(
    exc: ValidationError,
    *,
    skip: Collection[str] = (),
    word: Callable[[Problem], str] = _key_and_msg,
    sep: str = "; ",
) -> str:
    """The problems of ``exc`` in one text: each worded by ``word``, ``sep`` between."""
    return sep.join(word(p) for p in problems(exc, skip=skip))

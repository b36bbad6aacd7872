"""Selectors on SUBSCRIBE: the JMS / SQL-92 subset that ActiveMQ Classic accepts on STOMP.

Kept for ActiveMQ parity: a client written against ActiveMQ may filter a
subscription with ``selector``, and the testbed's client passes one through
(``BrokerClient.subscribe(selector=...)``). See docs/broker.md.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class SelectorError(ValueError):
    """A selector that cannot be parsed."""


_SEL_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^']|'')*')
      | (?P<num>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)[lLfFdD]?
      | (?P<op><>|<=|>=|!=|=|<|>|\(|\)|,|\+|-|\*|/)
      | (?P<id>[A-Za-z_$][A-Za-z0-9_$.]*)
    )""",
    re.VERBOSE,
)
_SEL_KEYWORDS = frozenset(
    {"AND", "OR", "NOT", "BETWEEN", "IN", "LIKE", "ESCAPE", "IS", "NULL", "TRUE", "FALSE"}
)

Value = Any
Evaluator = Callable[[dict[str, str]], Value]


def _sel_tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _SEL_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise SelectorError(f"unexpected character at position {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group("str") is not None:
            out.append(("lit", m.group("str")[1:-1].replace("''", "'")))
        elif m.group("num") is not None:
            num = m.group("num")
            out.append(("lit", float(num) if any(c in num for c in ".eE") else int(num)))
        elif m.group("op") is not None:
            op = m.group("op")
            out.append(("op", "<>" if op == "!=" else op))
        else:
            word = m.group("id")
            upper = word.upper()
            if upper in _SEL_KEYWORDS:
                if upper in ("TRUE", "FALSE"):
                    out.append(("lit", upper == "TRUE"))
                elif upper == "NULL":
                    out.append(("null", None))
                else:
                    out.append(("kw", upper))
            else:
                out.append(("id", word))
    out.append(("end", None))
    return out


def _to_number(v: Value) -> Value:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return v
    if isinstance(v, str):
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return None
    return None


def _to_bool(v: Value) -> Value:
    if isinstance(v, bool):
        return v
    if isinstance(v, str):
        low = v.lower()
        if low == "true":
            return True
        if low == "false":
            return False
    return None


def _compare(op: str, a: Value, b: Value) -> Value:
    if a is None or b is None:
        return None
    if isinstance(a, bool) or isinstance(b, bool):
        a, b = _to_bool(a), _to_bool(b)
        if a is None or b is None or op not in ("=", "<>"):
            return None
        return (a == b) if op == "=" else (a != b)
    if isinstance(a, str) and isinstance(b, str):
        if op == "=":
            return a == b
        if op == "<>":
            return a != b
        na, nb = _to_number(a), _to_number(b)
        if na is None or nb is None:
            return None
        a, b = na, nb
    else:
        a, b = _to_number(a), _to_number(b)
        if a is None or b is None:
            return None
    if op == "=":
        return a == b
    if op == "<>":
        return a != b
    if op == "<":
        return a < b
    if op == "<=":
        return a <= b
    if op == ">":
        return a > b
    return a >= b


def _like_regex(pattern: str, esc: str | None) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if esc is not None and c == esc and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "%" else "." if c == "_" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class _SelectorParser:
    def __init__(self, text: str) -> None:
        self.toks = _sel_tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, Any]:
        return self.toks[self.i]

    def take(self) -> tuple[str, Any]:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def accept(self, kind: str, value: Any = None) -> bool:
        k, v = self.toks[self.i]
        if k == kind and (value is None or v == value):
            self.i += 1
            return True
        return False

    def expect(self, kind: str, value: Any = None) -> Any:
        k, v = self.take()
        if k != kind or (value is not None and v != value):
            raise SelectorError(f"expected {value or kind}, found {v!r}")
        return v

    def parse(self) -> Evaluator:
        ev = self.or_()
        if self.peek()[0] != "end":
            raise SelectorError(f"unexpected {self.peek()[1]!r}")
        return ev

    def or_(self) -> Evaluator:
        left = self.and_()
        while self.accept("kw", "OR"):
            right = self.and_()
            left = _combine(_or, left, right)
        return left

    def and_(self) -> Evaluator:
        left = self.not_()
        while self.accept("kw", "AND"):
            right = self.not_()
            left = _combine(_and, left, right)
        return left

    def not_(self) -> Evaluator:
        if self.accept("kw", "NOT"):
            inner = self.not_()
            return lambda h: _not(inner(h))
        return self.cmp()

    def _between(self, left: Evaluator) -> Evaluator:
        lo = self.sum_()
        self.expect("kw", "AND")
        hi = self.sum_()

        def between(h: dict[str, str]) -> Value:
            x = left(h)
            return _and(_compare(">=", x, lo(h)), _compare("<=", x, hi(h)))

        return between

    def _in(self, left: Evaluator) -> Evaluator:
        self.expect("op", "(")
        items = [self.expect("lit")]
        while self.accept("op", ","):
            items.append(self.expect("lit"))
        self.expect("op", ")")
        strs = frozenset(str(x) for x in items)

        def in_(h: dict[str, str]) -> Value:
            x = left(h)
            if x is None:
                return None
            return str(x) in strs

        return in_

    def _like(self, left: Evaluator) -> Evaluator:
        pattern = self.expect("lit")
        esc = None
        if self.accept("kw", "ESCAPE"):
            esc = self.expect("lit")
            if not isinstance(esc, str) or len(esc) != 1:
                raise SelectorError("ESCAPE takes one character")
        if not isinstance(pattern, str):
            raise SelectorError("LIKE takes a string pattern")
        rx = _like_regex(pattern, esc)

        def like(h: dict[str, str]) -> Value:
            x = left(h)
            if not isinstance(x, str):
                return None
            return rx.fullmatch(x) is not None

        return like

    def cmp(self) -> Evaluator:
        left = self.sum_()
        k, v = self.peek()
        if k == "op" and v in ("=", "<>", "<", "<=", ">", ">="):
            self.take()
            right = self.sum_()
            return lambda h: _compare(v, left(h), right(h))
        negate = False
        if k == "kw" and v == "NOT":
            self.take()
            negate = True
            k, v = self.peek()
        if k == "kw" and v in ("BETWEEN", "IN", "LIKE"):
            self.take()
            test = {"BETWEEN": self._between, "IN": self._in, "LIKE": self._like}[v](left)
            return (lambda h: _not(test(h))) if negate else test
        if negate:
            raise SelectorError("NOT must be followed by BETWEEN, IN or LIKE here")
        if k == "kw" and v == "IS":
            self.take()
            is_not = self.accept("kw", "NOT")
            self.expect("null")
            if is_not:
                return lambda h: left(h) is not None
            return lambda h: left(h) is None
        return left

    def sum_(self) -> Evaluator:
        left = self.prod()
        while True:
            k, v = self.peek()
            if k == "op" and v in ("+", "-"):
                self.take()
                right = self.prod()
                left = _arith_node(v, left, right)
            else:
                return left

    def prod(self) -> Evaluator:
        left = self.unary()
        while True:
            k, v = self.peek()
            if k == "op" and v in ("*", "/"):
                self.take()
                right = self.unary()
                left = _arith_node(v, left, right)
            else:
                return left

    def unary(self) -> Evaluator:
        if self.accept("op", "-"):
            inner = self.unary()
            return lambda h: _arith("-", 0, inner(h))
        if self.accept("op", "+"):
            return self.unary()
        return self.primary()

    def primary(self) -> Evaluator:
        k, v = self.take()
        if k == "op" and v == "(":
            inner = self.or_()
            self.expect("op", ")")
            return inner
        if k == "lit":
            return lambda h: v
        if k == "null":
            return lambda h: None
        if k == "id":
            return lambda h: h.get(v)
        raise SelectorError(f"unexpected {v!r}" if k != "end" else "unexpected end of selector")


def _combine(fn: Callable[[Value, Value], Value], a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda h: fn(a(h), b(h))


def _arith_node(op: str, a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda h: _arith(op, a(h), b(h))


def _and(a: Value, b: Value) -> Value:
    a, b = _to_bool(a), _to_bool(b)
    if a is False or b is False:
        return False
    if a is None or b is None:
        return None
    return True


def _or(a: Value, b: Value) -> Value:
    a, b = _to_bool(a), _to_bool(b)
    if a is True or b is True:
        return True
    if a is None or b is None:
        return None
    return False


def _not(a: Value) -> Value:
    a = _to_bool(a)
    return None if a is None else not a


def _arith(op: str, a: Value, b: Value) -> Value:
    a, b = _to_number(a), _to_number(b)
    if a is None or b is None:
        return None
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    return a / b


def compile_selector(text: str) -> Callable[[dict[str, str]], bool]:
    """Compile a JMS-style selector into ``f(headers) -> bool`` (True: the message is selected)."""
    ev = _SelectorParser(text).parse()
    return lambda headers: _to_bool(ev(headers)) is True

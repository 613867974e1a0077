"""A tiny, safe expression language for analysis conditions on a query's `result`.

Argo Rollouts judges a Prometheus measurement with a `successCondition` such as
`result[0] >= 0.95`. shipflow accepts the same shape of text, but never hands it to
`eval`: it is parsed here, once, when the flow is validated (so a typo fails the flow
with the field's path), into a small tree that only knows numbers, `result`,
`result[i]`, `len(result)`, the six comparisons, `and`/`or`/`not` and parentheses.

`result` is the list of the query's sample values (a scalar result is a list of one).
A bare `result` in a comparison stands for its only value. A value the result does not
have (an empty vector, `result[3]` of two series, NaN) makes the measurement
inconclusive: `Inconclusive` is raised, never a silent pass or fail.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
    r"|(?P<op>==|!=|<=|>=|&&|\|\||[<>!()\[\]-])|(?P<word>[A-Za-z_][A-Za-z0-9_]*))"
)
_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}
MAX_LENGTH = 500


class ConditionError(ValueError):
    """The condition's text is not in the grammar; the message says where."""


class Inconclusive(Exception):
    """The result lacks a value the condition reads (empty, out of range, NaN)."""


# ---------------------------------------------------------------- the tree


@dataclass(frozen=True)
class _Number:
    value: float

    def value_of(self, result: Sequence[float]) -> float:
        return self.value


@dataclass(frozen=True)
class _Result:
    index: int | None  # None: the bare `result`, its only value

    def value_of(self, result: Sequence[float]) -> float:
        if self.index is None:
            if len(result) != 1:
                raise Inconclusive(f"`result` has {len(result)} values, the condition reads one")
            value = result[0]
        elif self.index >= len(result):
            raise Inconclusive(f"`result[{self.index}]` does not exist ({len(result)} values)")
        else:
            value = result[self.index]
        if math.isnan(value):
            raise Inconclusive("the value is NaN")
        return value


@dataclass(frozen=True)
class _Len:
    def value_of(self, result: Sequence[float]) -> float:
        return float(len(result))


@dataclass(frozen=True)
class _Negative:
    inner: _Number | _Result | _Len

    def value_of(self, result: Sequence[float]) -> float:
        return -self.inner.value_of(result)


_Value = _Number | _Result | _Len | _Negative


@dataclass(frozen=True)
class _Compare:
    left: _Value
    op: str
    right: _Value

    def holds(self, result: Sequence[float]) -> bool:
        return _COMPARE[self.op](self.left.value_of(result), self.right.value_of(result))


@dataclass(frozen=True)
class _Not:
    inner: _Node

    def holds(self, result: Sequence[float]) -> bool:
        return not self.inner.holds(result)


@dataclass(frozen=True)
class _Both:
    left: _Node
    right: _Node

    def holds(self, result: Sequence[float]) -> bool:
        return self.left.holds(result) and self.right.holds(result)


@dataclass(frozen=True)
class _Either:
    left: _Node
    right: _Node

    def holds(self, result: Sequence[float]) -> bool:
        return self.left.holds(result) or self.right.holds(result)


_Node = _Compare | _Not | _Both | _Either


@dataclass(frozen=True)
class Condition:
    """A parsed condition. `holds(values)` is True, False, or raises `Inconclusive`."""

    text: str
    _root: _Node

    def holds(self, result: Sequence[float]) -> bool:
        return self._root.holds(result)


# ---------------------------------------------------------------- the parser


def parse_condition(text: str) -> Condition:
    """Parse `text`; raise `ConditionError` naming the problem and its position."""
    if len(text) > MAX_LENGTH:
        raise ConditionError(f"a condition is at most {MAX_LENGTH} characters")
    parser = _Parser(text)
    root = parser.expression()
    if parser.peek() is not None:
        parser.fail(f"unexpected {parser.peek()!r}")
    return Condition(text, root)


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.tokens: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                start = len(text) - len(text[pos:].lstrip())
                raise ConditionError(f"unexpected character {text[start]!r} at position {start}")
            token = match.group("num") or match.group("op") or match.group("word") or ""
            self.tokens.append((token, match.start(match.lastgroup or 0)))
            pos = match.end()
        self.at = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.at][0] if self.at < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise ConditionError(f"the condition {self.text!r} ends too early")
        self.at += 1
        return token

    def expect(self, token: str) -> None:
        if self.peek() != token:
            self.fail(f"expected {token!r}")
        self.at += 1

    def fail(self, message: str) -> None:
        where = self.tokens[self.at][1] if self.at < len(self.tokens) else len(self.text)
        raise ConditionError(f"{message} at position {where} of {self.text!r}")

    def expression(self) -> _Node:
        self.depth += 1
        if self.depth > 50:
            self.fail("nested too deeply")
        node = self.conjunction()
        while self.peek() in ("or", "||"):
            self.take()
            node = _Either(node, self.conjunction())
        self.depth -= 1
        return node

    def conjunction(self) -> _Node:
        node = self.negation()
        while self.peek() in ("and", "&&"):
            self.take()
            node = _Both(node, self.negation())
        return node

    def negation(self) -> _Node:
        if self.peek() in ("not", "!"):
            self.take()
            return _Not(self.negation())
        if self.peek() == "(":
            # A parenthesised condition (a parenthesised value is not in the grammar).
            self.take()
            inner = self.expression()
            self.expect(")")
            return inner
        return self.comparison()

    def comparison(self) -> _Node:
        left = self.value()
        op = self.peek()
        if op not in _COMPARE:
            self.fail("expected a comparison (==, !=, <, <=, >, >=)")
        assert op is not None
        self.take()
        return _Compare(left, op, self.value())

    def value(self) -> _Value:
        token = self.peek()
        if token == "-":
            self.take()
            inner = self.value()
            if isinstance(inner, _Negative):
                self.fail("a double minus")
            assert not isinstance(inner, _Negative)
            return _Negative(inner)
        if token is not None and (token[0].isdigit() or token[0] == "."):
            self.take()
            return _Number(float(token))
        if token == "result":
            self.take()
            if self.peek() != "[":
                return _Result(None)
            self.take()
            index = self.peek()
            if index is None or not index.isdigit():
                self.fail("expected a whole number index")
            assert index is not None
            self.take()
            self.expect("]")
            return _Result(int(index))
        if token == "len":
            self.take()
            self.expect("(")
            self.expect("result")
            self.expect(")")
            return _Len()
        self.fail(
            "expected a number, result, result[N] or len(result)"
            + (f", got {token!r}" if token is not None else "")
        )
        raise AssertionError  # unreachable: fail raises

"""Just enough PromQL to check a dashboard: the series each expression selects.

A small tokenizer, no PromQL engine: an identifier followed by ``(`` (or by ``by``) is a
function or an aggregation; ``by (...)`` / ``without (...)`` name labels the aggregation's
argument must carry; any other identifier, not a keyword, is a metric name, with its
``{...}`` matchers.
Range brackets (``[5m]``, ``[$__rate_interval]``) are skipped. Vector matching (``on``,
``ignoring``, ``group_left``) is refused rather than guessed at: the dashboard does not use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}])
    """,
    re.VERBOSE,
)
GROUPING = frozenset({"by", "without"})
KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})
VECTOR_MATCHING = frozenset({"on", "ignoring", "group_left", "group_right"})
# Grafana's variables, as they stand inside an expression ($x, ${x}, [[x]]).
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


@dataclass
class Selector:
    """One vector selector: a metric name, its matchers, and the labels it is grouped by."""

    metric: str
    matchers: list[tuple[str, str, str]] = field(default_factory=list)  # (label, op, value)
    grouped_by: set[str] = field(default_factory=set)

    @property
    def labels(self) -> set[str]:
        return {label for label, _, _ in self.matchers} | self.grouped_by


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables replaced by ``values`` (a variable not there is an error)."""

    def value(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise ValueError(f"{expr!r}: no value for the variable ${name}")
        return values[name]

    return VARIABLE.sub(value, expr)


def tokens(expr: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    while position < len(expr):
        match = _TOKEN.match(expr, position)
        if match is None:
            raise ValueError(f"{expr!r}: cannot read {expr[position : position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            found.append((kind, match.group()))
        position = match.end()
    return found


def _unquote(text: str) -> str:
    if text.startswith("`"):
        return text[1:-1]
    return re.sub(r"\\(.)", r"\1", text[1:-1])


class _Reader:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.tokens = tokens(expr)
        self.at = 0

    def peek(self, ahead: int = 0) -> tuple[str, str] | None:
        index = self.at + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (text is not None and token[1] != text):
            raise ValueError(f"{self.expr!r}: expected {text or 'more'}, found {token}")
        self.at += 1
        return token

    def label_list(self) -> set[str]:
        self.take("(")
        labels: set[str] = set()
        while self.peek() != ("op", ")"):
            kind, name = self.take()
            if kind != "ident":
                raise ValueError(f"{self.expr!r}: {name!r} is no label name")
            labels.add(name)
            if self.peek() == ("op", ","):
                self.take(",")
        self.take(")")
        return labels

    def matchers(self) -> list[tuple[str, str, str]]:
        self.take("{")
        found = []
        while self.peek() != ("op", "}"):
            kind, label = self.take()
            _, op = self.take()
            value_kind, value = self.take()
            if kind != "ident" or op not in ("=", "!=", "=~", "!~") or value_kind != "string":
                raise ValueError(f"{self.expr!r}: bad matcher {label}{op}{value}")
            found.append((label, op, _unquote(value)))
            if self.peek() == ("op", ","):
                self.take(",")
        self.take("}")
        return found


def selectors(expr: str) -> list[Selector]:
    """Every vector selector of ``expr``, each with the labels its enclosing aggregations
    group by (after Grafana's variables were substituted)."""
    reader = _Reader(expr)
    # One frame per open parenthesis: the selectors read inside it, and the labels of a
    # `by (...)` written before it; a frame's selectors join its parent's when it closes.
    frames: list[tuple[list[Selector], set[str]]] = [([], set())]
    pending: set[str] = set()  # a prefix `sum by (x)`'s labels, for the next "("
    closed: list[Selector] = []  # the selectors of the group that closed last (postfix `by`)
    while (token := reader.peek()) is not None:
        kind, text = token
        following = reader.peek(1)
        if kind == "ident" and text in VECTOR_MATCHING:
            raise ValueError(f"{expr!r}: vector matching ({text}) is not supported here")
        if kind == "ident" and text in GROUPING:
            reader.take()
            labels = reader.label_list()
            if reader.peek() == ("op", "("):  # sum by (x) (...)
                pending = labels
            else:  # sum (...) by (x)
                for selector in closed:
                    selector.grouped_by |= labels
            continue
        aggregation = following is not None and following[0] == "ident" and following[1] in GROUPING
        if kind == "ident" and (following == ("op", "(") or aggregation):  # sum by (x) (...)
            reader.take()
            continue
        if kind == "ident" and text not in KEYWORDS:
            reader.take()
            selector = Selector(text)
            if reader.peek() == ("op", "{"):
                selector.matchers = reader.matchers()
            frames[-1][0].append(selector)
            continue
        if token == ("op", "{"):
            raise ValueError(f"{expr!r}: a selector without a metric name is not supported here")
        if token == ("op", "("):
            frames.append(([], pending))
            pending = set()
        elif token == ("op", ")"):
            if len(frames) == 1:
                raise ValueError(f"{expr!r}: unbalanced parentheses")
            inner, labels = frames.pop()
            for selector in inner:
                selector.grouped_by |= labels
            frames[-1][0].extend(inner)
            closed = inner
        reader.take()
    if len(frames) != 1:
        raise ValueError(f"{expr!r}: unbalanced parentheses")
    return frames[0][0]

"""A fast path for the simplest jq filters: paths, literals, comparisons, and/or/not, select().

Most record filters are `.a.b == "x"`, `.n > 3 and .ok`; running them through the jq binding costs
~10 µs a record (JSON in and out of libjq). Expressions inside this subset are compiled to Python
closures with jq's semantics (truthiness, ordering across types, index errors); anything else
returns None and runs on real jq. A property test checks both agree.
"""
from __future__ import annotations

import re
from typing import Any, Callable

Pred = Callable[[Any], Any]

_TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)'
                    r'|(?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|\||\.)|(?P<name>[A-Za-z_][A-Za-z0-9_]*))')


class JqError(Exception):
    """The same failure jq would report (e.g. indexing a string)."""


def _tokens(src: str) -> list[tuple[str, str]] | None:
    out = []
    pos = 0
    src = src.strip()
    while pos < len(src):
        m = _TOKEN.match(src, pos)
        if not m or m.end() == pos:
            return None
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


def _rank(v: Any) -> int:
    if v is None:
        return 0
    if v is False:
        return 1
    if v is True:
        return 2
    t = type(v)
    if t is int or t is float:
        return 3
    if t is str:
        return 4
    if t is list:
        return 5
    return 6


def jq_cmp(a: Any, b: Any) -> int:
    """jq's total order: null < false < true < numbers < strings < arrays < objects."""
    ra, rb = _rank(a), _rank(b)
    if ra != rb:
        return -1 if ra < rb else 1
    if ra == 3:
        fa, fb = float(a), float(b)
        return (fa > fb) - (fa < fb)
    if ra == 4:
        return (a > b) - (a < b)
    if ra == 5:
        for x, y in zip(a, b):
            c = jq_cmp(x, y)
            if c:
                return c
        return (len(a) > len(b)) - (len(a) < len(b))
    if ra == 6:
        c = jq_cmp(sorted(a), sorted(b))
        if c:
            return c
        for k in sorted(a):
            c = jq_cmp(a[k], b[k])
            if c:
                return c
    return 0


def _index(v: Any, key: Any) -> Any:
    if v is None:
        return None
    if isinstance(key, str):
        if type(v) is dict:
            return v.get(key)
        raise JqError(f'Cannot index {_jq_type(v)} with "{key}"')
    if type(v) is list:
        return v[key] if -len(v) <= key < len(v) else None
    raise JqError(f"Cannot index {_jq_type(v)} with number")


def _jq_type(v: Any) -> str:
    return ["null", "boolean", "boolean", "number", "string", "array", "object"][_rank(v)]


class _P:
    def __init__(self, toks: list[tuple[str, str]]) -> None:
        self.t = toks
        self.i = 0

    def peek(self) -> tuple[str, str]:
        return self.t[self.i] if self.i < len(self.t) else ("eof", "")

    def take(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("op", "name"):
            self.i += 1
            return True
        return False

    def expr(self) -> Pred | None:
        left = self.and_()
        while left is not None and self.take("or"):
            right = self.and_()
            if right is None:
                return None
            left = (lambda a, b: lambda r: bool(_truthy(a(r)) or _truthy(b(r))))(left, right)
        return left

    def and_(self) -> Pred | None:
        left = self.cmp()
        while left is not None and self.take("and"):
            right = self.cmp()
            if right is None:
                return None
            left = (lambda a, b: lambda r: bool(_truthy(a(r)) and _truthy(b(r))))(left, right)
        return left

    def cmp(self) -> Pred | None:
        left = self.pipe_not()
        kind, text = self.peek()
        if left is None or kind != "op" or text not in ("==", "!=", "<", "<=", ">", ">="):
            return left
        self.i += 1
        right = self.pipe_not()
        if right is None:
            return None
        return _compare(text, left, right, getattr(right, "literal", _NOLIT))

    def pipe_not(self) -> Pred | None:
        v = self.primary()
        while v is not None and self.peek() == ("op", "|"):
            self.i += 1
            if not self.take("not"):
                return None
            v = (lambda f: lambda r: not _truthy(f(r)))(v)
        return v

    def primary(self) -> Pred | None:
        kind, text = self.peek()
        if kind == "str":
            import json
            self.i += 1
            return _lit(json.loads(text))
        if kind == "num":
            self.i += 1
            return _lit(float(text) if any(c in text for c in ".eE") else int(text))
        if kind == "name" and text in ("true", "false", "null"):
            self.i += 1
            return _lit({"true": True, "false": False, "null": None}[text])
        if kind == "name" and text == "select" and self.t[self.i + 1:self.i + 2] == [("op", "(")]:
            self.i += 2
            inner = self.expr()
            if inner is None or not self.take(")"):
                return None
            return (lambda f: lambda r: r if _truthy(f(r)) else _EMPTY)(inner)
        if kind == "op" and text == "(":
            self.i += 1
            inner = self.expr()
            if inner is None or not self.take(")"):
                return None
            return inner
        if kind == "op" and text == ".":
            return self.path()
        return None

    def path(self) -> Pred | None:
        keys: list[Any] = []
        self.take(".")
        while True:
            kind, text = self.peek()
            if kind == "name" and (not keys or keys[-1] is _DOT):
                if keys:
                    keys.pop()
                keys.append(text)
                self.i += 1
            elif kind == "str" and (not keys or keys[-1] is _DOT):
                import json
                if keys:
                    keys.pop()
                keys.append(json.loads(text))
                self.i += 1
            elif kind == "op" and text == "[":
                if keys and keys[-1] is _DOT:
                    keys.pop()
                self.i += 1
                k2, t2 = self.peek()
                if k2 == "str":
                    import json
                    keys.append(json.loads(t2))
                elif k2 == "num" and t2.lstrip("-").isdigit():
                    keys.append(int(t2))
                else:
                    return None
                self.i += 1
                if not self.take("]"):
                    return None
            elif kind == "op" and text == "." and keys and keys[-1] is not _DOT:
                keys.append(_DOT)
                self.i += 1
            else:
                break
        if keys and keys[-1] is _DOT:
            return None
        return _path(tuple(keys))


_DOT = object()
_NOLIT = object()
_EMPTY = object()  # `select` produced nothing: the record does not pass


def _truthy(v: Any) -> bool:
    return v is not None and v is not False and v is not _EMPTY


def _lit(value: Any) -> Pred:
    f = lambda r: value  # noqa: E731
    f.literal = value  # type: ignore[attr-defined]
    return f


def _path(keys: tuple[Any, ...]) -> Pred:
    if not keys:
        return lambda r: r
    if all(isinstance(k, str) for k in keys):
        if len(keys) == 1:
            (a,) = keys
            return lambda r: r.get(a) if type(r) is dict else _index(r, a)
        if len(keys) == 2:
            a, b = keys

            def two(r: Any) -> Any:
                if type(r) is dict:
                    v = r.get(a)
                    if type(v) is dict:
                        return v.get(b)
                    return _index(v, b)
                return _index(_index(r, a), b)
            return two

    def walk(r: Any) -> Any:
        for k in keys:
            r = _index(r, k)
        return r
    return walk


def _compare(op: str, left: Pred, right: Pred, lit: Any) -> Pred:
    if lit is not _NOLIT and op in ("==", "!=") and type(lit) is str:
        if op == "==":
            return lambda r: left(r) == lit
        return lambda r: left(r) != lit
    test = {"==": lambda c: c == 0, "!=": lambda c: c != 0, "<": lambda c: c < 0,
            "<=": lambda c: c <= 0, ">": lambda c: c > 0, ">=": lambda c: c >= 0}[op]
    return lambda r: test(jq_cmp(left(r), right(r)))


def compile_fast(expression: str) -> Pred | None:
    """A Python predicate with jq's result for `expression`, or None if it's outside the subset."""
    toks = _tokens(expression)
    if not toks:
        return None
    p = _P(toks)
    try:
        f = p.expr()
    except (ValueError, IndexError):
        return None
    if f is None or p.i != len(toks):
        return None
    return lambda r: _truthy(f(r))

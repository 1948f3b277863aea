"""Compiles the mapping tree into Python closures and runs them on one record at a time.

Semantics follow Bloblang where it matters: a mapping builds a new document `root` (empty unless
`root = ...`), `this` is the input and is never changed, a missing field reads as null, `deleted()`
assigned to `root` drops the record and to a field removes it, `+` adds numbers or joins strings and
refuses to mix them, conditions must be booleans. Runtime failures raise `MappingError` with the
position of the failing expression.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import uuid
from typing import Any, Callable

from clipipe.records.mapping.parser import Node

DELETED = object()   #: `deleted()`: drop the record / remove the field
NOTHING = object()   #: an `if` expression without a matching branch: the assignment is skipped

Fn = Callable[["Env"], Any]


class MappingError(Exception):
    """A mapping failed on a record; line/col point into the mapping text."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


class Env:
    """The state of one mapping run: input, output document, metadata, variables."""

    __slots__ = ("this", "root", "meta", "vars", "owned")

    def __init__(self, this: Any, meta: dict[str, Any]) -> None:
        self.this = this
        self.root: Any = {}
        self.meta = meta
        self.vars: dict[str, Any] = {}
        self.owned: set[int] = {id(self.root)}


def type_name(v: Any) -> str:
    """The mapping language's name for a value's type."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _norm(v: float | int) -> float | int:
    if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53:
        return int(v)
    return v


def _get(obj: Any, key: Any, node: Node) -> Any:
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(str(key) if not isinstance(key, str) else key)
    if isinstance(obj, list):
        if isinstance(key, str) and key.lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            return obj[key] if -len(obj) <= key < len(obj) else None
    raise MappingError(f"can't read field {key!r} of a {type_name(obj)}", node.line, node.col)


def _eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_eq(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_eq(x, y) for x, y in zip(a, b))
    return a == b


def _binop(op: str, a: Any, b: Any, node: Node) -> Any:
    if op == "==":
        return _eq(a, b)
    if op == "!=":
        return not _eq(a, b)
    if op == "+":
        if _is_num(a) and _is_num(b):
            return a + b
        if isinstance(a, str) and isinstance(b, str):
            return a + b
        raise MappingError(f"can't add {type_name(a)} and {type_name(b)}"
                           + (" (a field is missing?)" if a is None or b is None else ""), node.line, node.col)
    if op in ("<", "<=", ">", ">="):
        if not ((_is_num(a) and _is_num(b)) or (isinstance(a, str) and isinstance(b, str))):
            raise MappingError(f"can't compare {type_name(a)} {op} {type_name(b)}", node.line, node.col)
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if op in ("&&", "||"):
        raise AssertionError("short-circuit operators are compiled separately")
    if not (_is_num(a) and _is_num(b)):
        raise MappingError(f"can't apply {op} to {type_name(a)} and {type_name(b)}", node.line, node.col)
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise MappingError("division by zero", node.line, node.col)
    if op == "/":
        return _norm(a / b)
    return a % b


def _bool(v: Any, node: Node, what: str) -> bool:
    if not isinstance(v, bool):
        raise MappingError(f"{what} must be a boolean, got {type_name(v)}", node.line, node.col)
    return v


def _to_number(v: Any, node: Node) -> Any:
    if _is_num(v):
        return v
    if isinstance(v, str):
        try:
            f = float(v.strip())
        except ValueError:
            raise MappingError(f"can't turn {v!r} into a number", node.line, node.col) from None
        return _norm(f)
    raise MappingError(f"can't turn a {type_name(v)} into a number", node.line, node.col)


def _to_string(v: Any) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if _is_num(v):
        return str(_norm(v))
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def _want(v: Any, types: tuple[type, ...], node: Node, method: str) -> None:
    if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
        names = "/".join(sorted({type_name(t()) if t is not bool else "bool" for t in types}))
        raise MappingError(f".{method}() needs a {names}, got {type_name(v)}", node.line, node.col)


def _method(name: str, v: Any, args: list[Any], node: Node) -> Any:
    """Apply a method to a receiver value."""
    m = name
    if m == "uppercase":
        _want(v, (str,), node, m)
        return v.upper()
    if m == "lowercase":
        _want(v, (str,), node, m)
        return v.lower()
    if m == "capitalize":
        _want(v, (str,), node, m)
        return v[:1].upper() + v[1:]
    if m == "trim":
        _want(v, (str,), node, m)
        return v.strip() if not args else v.strip(str(args[0]))
    if m == "length":
        _want(v, (str, list, dict), node, m)
        return len(v)
    if m == "contains":
        _want(v, (str, list, dict), node, m)
        if isinstance(v, str):
            return isinstance(args[0], str) and args[0] in v
        if isinstance(v, dict):
            return args[0] in v
        return any(_eq(x, args[0]) for x in v)
    if m == "replace_all":
        _want(v, (str,), node, m)
        return v.replace(_to_string(args[0]), _to_string(args[1]))
    if m == "split":
        _want(v, (str,), node, m)
        return v.split(_to_string(args[0])) if args[0] != "" else list(v)
    if m == "join":
        _want(v, (list,), node, m)
        return _to_string(args[0] if args else "").join(_to_string(x) for x in v)
    if m == "has_prefix":
        _want(v, (str,), node, m)
        return v.startswith(_to_string(args[0]))
    if m == "has_suffix":
        _want(v, (str,), node, m)
        return v.endswith(_to_string(args[0]))
    if m == "slice":
        _want(v, (str, list), node, m)
        return v[args[0]:args[1]] if len(args) > 1 else v[args[0]:]
    if m == "number":
        return _to_number(v, node) if v is not None or not args else args[0]
    if m == "int":
        return int(_to_number(v, node))
    if m == "string":
        return _to_string(v)
    if m == "type":
        return type_name(v)
    if m == "not_null":
        if v is None:
            raise MappingError("value is null", node.line, node.col)
        return v
    if m == "or":
        return args[0] if v is None else v
    if m in ("abs", "floor", "ceil"):
        _want(v, (int, float), node, m)
        return abs(v) if m == "abs" else (math.floor(v) if m == "floor" else math.ceil(v))
    if m == "round":
        _want(v, (int, float), node, m)
        return _norm(round(v, int(args[0]))) if args else int(round(v))
    if m == "keys":
        _want(v, (dict,), node, m)
        return sorted(v)
    if m == "values":
        _want(v, (dict,), node, m)
        return list(v.values())
    if m == "parse_json":
        _want(v, (str,), node, m)
        try:
            return json.loads(v)
        except ValueError as exc:
            raise MappingError(f"invalid JSON: {exc}", node.line, node.col) from None
    if m == "format_json":
        return json.dumps(v, separators=(",", ":"), ensure_ascii=False)
    if m == "exists":
        cur = v
        for part in _to_string(args[0]).split("."):
            if not isinstance(cur, dict) or part not in cur:
                return False
            cur = cur[part]
        return True
    raise MappingError(f"unknown method .{name}()", node.line, node.col)


#: method name -> (min args, max args); checked when the mapping is parsed
METHODS = {"uppercase": (0, 0), "lowercase": (0, 0), "capitalize": (0, 0), "trim": (0, 1),
           "length": (0, 0), "contains": (1, 1), "replace_all": (2, 2), "split": (1, 1), "join": (0, 1),
           "has_prefix": (1, 1), "has_suffix": (1, 1), "slice": (1, 2), "number": (0, 1), "int": (0, 0),
           "string": (0, 0), "type": (0, 0), "not_null": (0, 0), "or": (1, 1), "catch": (1, 1),
           "abs": (0, 0), "floor": (0, 0), "ceil": (0, 0), "round": (0, 1), "keys": (0, 0),
           "values": (0, 0), "parse_json": (0, 0), "format_json": (0, 0), "exists": (1, 1)}
FUNCTIONS = {"deleted": (0, 0), "meta": (0, 1), "now": (0, 0), "uuid_v4": (0, 0), "throw": (1, 1)}


class Compiler:
    """Turns nodes into closures over `Env`; reports unknown names as (message, line, col)."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, int, int]] = []

    def expr(self, n: Node) -> Fn:
        k = n.kind
        if k == "lit":
            v = n.args[0]
            return lambda e: v
        if k == "this":
            return lambda e: e.this
        if k == "root":
            return lambda e: e.root
        if k == "var":
            name = n.args[0]

            def var(e: Env) -> Any:
                if name not in e.vars:
                    raise MappingError(f"variable ${name} is not set", n.line, n.col)
                return e.vars[name]
            return var
        if k == "get":
            target, key = n.args
            if target.kind == "this":
                return lambda e: e.this.get(key) if type(e.this) is dict else _get(e.this, key, n)
            t = self.expr(target)

            def get(e: Env) -> Any:
                o = t(e)
                if type(o) is dict:
                    return o.get(key)
                return _get(o, key, n)
            return get
        if k == "index":
            t, i = self.expr(n.args[0]), self.expr(n.args[1])
            return lambda e: _get(t(e), i(e), n)
        if k == "bin":
            op, a, b = n.args
            fa, fb = self.expr(a), self.expr(b)
            if op == "&&":
                return lambda e: _bool(fa(e), a, "the left of &&") and _bool(fb(e), b, "the right of &&")
            if op == "||":
                return lambda e: _bool(fa(e), a, "the left of ||") or _bool(fb(e), b, "the right of ||")
            if op == "+":
                def add(e: Env) -> Any:
                    x, y = fa(e), fb(e)
                    if type(x) is str and type(y) is str:
                        return x + y
                    return _binop("+", x, y, n)
                return add
            return lambda e: _binop(op, fa(e), fb(e), n)
        if k == "not":
            f = self.expr(n.args[0])
            return lambda e: not _bool(f(e), n, "the operand of !")
        if k == "neg":
            f = self.expr(n.args[0])

            def neg(e: Env) -> Any:
                v = f(e)
                if not _is_num(v):
                    raise MappingError(f"can't negate a {type_name(v)}", n.line, n.col)
                return -v
            return neg
        if k == "coalesce":
            fa, fb = self.expr(n.args[0]), self.expr(n.args[1])

            def coalesce(e: Env) -> Any:
                try:
                    v = fa(e)
                except MappingError:
                    v = None
                return fb(e) if v is None else v
            return coalesce
        if k == "array":
            items = [self.expr(x) for x in n.args[0]]
            return lambda e: [v for v in (f(e) for f in items) if v is not DELETED and v is not NOTHING]
        if k == "object":
            pairs = [(key, self.expr(v)) for key, v in n.args[0]]

            def obj(e: Env) -> Any:
                out = {}
                for key, f in pairs:
                    v = f(e)
                    if v is not DELETED and v is not NOTHING:
                        out[key] = v
                return out
            return obj
        if k == "if_expr":
            branches = [(self.expr(c), self.expr(v), c) for c, v in n.args[0]]
            orelse = self.expr(n.args[1]) if n.args[1] is not None else None

            def if_expr(e: Env) -> Any:
                for cond, val, cn in branches:
                    if _bool(cond(e), cn, "an if condition"):
                        return val(e)
                return orelse(e) if orelse is not None else NOTHING
            return if_expr
        if k == "method":
            return self.method(n)
        if k == "call":
            return self.call(n)
        raise AssertionError(f"unknown node {k}")

    def _arity(self, table: dict[str, tuple[int, int]], name: str, nargs: int, n: Node, what: str) -> bool:
        if name not in table:
            known = ", ".join(sorted(table))
            self.problems.append((f"unknown {what} {name}() (known: {known})", n.line, n.col))
            return False
        lo, hi = table[name]
        if not lo <= nargs <= hi:
            want = str(lo) if lo == hi else f"{lo} to {hi}"
            self.problems.append((f"{name}() takes {want} argument(s), got {nargs}", n.line, n.col))
            return False
        return True

    def method(self, n: Node) -> Fn:
        target, name, arg_nodes = n.args
        self._arity(METHODS, name, len(arg_nodes), n, "method")
        t = self.expr(target)
        args = [self.expr(a) for a in arg_nodes]
        if name == "catch":
            fallback = args[0]

            def catch(e: Env) -> Any:
                try:
                    return t(e)
                except MappingError:
                    return fallback(e)
            return catch
        if not args:
            return lambda e: _method(name, t(e), [], n)
        return lambda e: _method(name, t(e), [a(e) for a in args], n)

    def call(self, n: Node) -> Fn:
        name, arg_nodes = n.args
        self._arity(FUNCTIONS, name, len(arg_nodes), n, "function")
        args = [self.expr(a) for a in arg_nodes]
        if name == "deleted":
            return lambda e: DELETED
        if name == "meta":
            if not args:
                return lambda e: dict(e.meta)
            key = args[0]
            return lambda e: e.meta.get(_to_string(key(e)))
        if name == "now":
            return lambda e: _dt.datetime.now(_dt.timezone.utc).isoformat()
        if name == "uuid_v4":
            return lambda e: str(uuid.uuid4())
        if name == "throw":
            msg = args[0] if args else (lambda e: "throw()")

            def throw(e: Env) -> Any:
                raise MappingError(_to_string(msg(e)), n.line, n.col)
            return throw
        return lambda e: None

    # -- statements --------------------------------------------------------------------------------
    def block(self, stmts: list[Node]) -> Callable[[Env], None]:
        fns = [self.statement(s) for s in stmts]
        if len(fns) == 1:
            return fns[0]

        def run(e: Env) -> None:
            for f in fns:
                f(e)
        return run

    def statement(self, n: Node) -> Callable[[Env], None]:
        k = n.kind
        if k == "assign":
            path, value = n.args
            f = self.expr(value)
            if not path:
                def set_root(e: Env) -> None:
                    v = f(e)
                    if v is NOTHING:
                        return
                    e.root = v
                    e.owned = set()  # whatever it is, it may be shared with `this`: copy on write
                return set_root
            return lambda e: _set_path(e, path, f(e), n)
        if k == "meta_set":
            key, value = n.args
            f = self.expr(value)

            def meta_set(e: Env) -> None:
                v = f(e)
                if v is NOTHING:
                    return
                if key is None:
                    e.meta.clear()
                    if isinstance(v, dict):
                        e.meta.update(v)
                elif v is DELETED or v is None:
                    e.meta.pop(key, None)
                else:
                    e.meta[key] = v
            return meta_set
        if k == "let":
            name, value = n.args
            f = self.expr(value)

            def let(e: Env) -> None:
                e.vars[name] = f(e)
            return let
        if k == "if_stmt":
            branches = [(self.expr(c), self.block(body), c) for c, body in n.args[0]]
            orelse = self.block(n.args[1]) if n.args[1] else None

            def if_stmt(e: Env) -> None:
                for cond, body, cn in branches:
                    if _bool(cond(e), cn, "an if condition"):
                        body(e)
                        return
                if orelse is not None:
                    orelse(e)
            return if_stmt
        raise AssertionError(f"unknown statement {k}")


def _set_path(e: Env, path: tuple[str, ...], value: Any, n: Node) -> None:
    """Assign into the output document, copying containers shared with the input first."""
    if value is NOTHING:
        return
    if e.root is DELETED or e.root is None or not isinstance(e.root, dict):
        if value is DELETED:
            return
        if not isinstance(e.root, dict) and e.root is not None and e.root is not DELETED:
            raise MappingError(f"can't set field {'.'.join(path)} of a {type_name(e.root)} root",
                               n.line, n.col)
        e.root = {}
        e.owned = {id(e.root)}
    owned = e.owned
    if id(e.root) not in owned:
        e.root = dict(e.root)
        owned.add(id(e.root))
    cur = e.root
    for key in path[:-1]:
        nxt = cur.get(key)
        if not isinstance(nxt, dict):
            if value is DELETED:
                return
            nxt = {}
            cur[key] = nxt
            owned.add(id(nxt))
        elif id(nxt) not in owned:
            nxt = dict(nxt)
            cur[key] = nxt
            owned.add(id(nxt))
        cur = nxt
    if value is DELETED:
        cur.pop(path[-1], None)
    else:
        cur[path[-1]] = value

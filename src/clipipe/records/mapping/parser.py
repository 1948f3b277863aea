"""Parser of the mapping language (a Bloblang subset) into a small tree of `Node`s.

    program   := { statement (newline | ";") }
    statement := "root" path? "=" expr | path "=" expr | "meta" (name | string)? "=" expr
               | "let" name "=" expr | "if" expr "{" program "}" [ "else" ( "{" program "}" | statement-if ) ]
    expr      := or ( "|" or )*                       # `a | b`: b when a is null or fails
    or        := and ( "||" and )* ;  and := cmp ( "&&" cmp )*
    cmp       := sum [ ("=="|"!="|"<"|"<="|">"|">=") sum ]
    sum       := product ( ("+"|"-") product )* ;  product := unary ( ("*"|"/"|"%") unary )*
    unary     := ("!"|"-") unary | postfix
    postfix   := primary ( "." name | "." string | "." number | "." name "(" args ")" | "[" expr "]" )*
    primary   := literal | "this" | "root" | $var | name "(" args ")" | name (= this.name)
               | "(" expr ")" | "[" items "]" | "{" key ":" expr, ... "}" | "if" expr "{" expr "}" ...
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clipipe.records.mapping.lexer import MappingSyntaxError, Token, tokenize

_KEYWORDS = {"root", "this", "meta", "let", "if", "else", "true", "false", "null"}
_CMP = {"==", "!=", "<", "<=", ">", ">="}


@dataclass
class Node:
    """One syntax node; `args` depend on `kind`, `line`/`col` locate it in the mapping text."""

    kind: str
    args: tuple[Any, ...]
    line: int
    col: int
    body: list[Any] = field(default_factory=list)


class Parser:
    """Recursive descent over the token list."""

    def __init__(self, text: str) -> None:
        self.toks = tokenize(text)
        self.i = 0
        self.depth = 0  # > 0 inside ( [ {literal}: newlines are insignificant there

    # -- token helpers -----------------------------------------------------------------------------
    def peek(self, skip_nl: bool = False) -> Token:
        j = self.i
        while (skip_nl or self.depth) and self.toks[j].kind == "nl":
            j += 1
        return self.toks[j]

    def next(self) -> Token:
        self._skip_insignificant()
        t = self.toks[self.i]
        self.i += 1
        return t

    def _skip_insignificant(self) -> None:
        if self.depth:
            while self.toks[self.i].kind == "nl":
                self.i += 1

    def skip_nl(self) -> None:
        while self.toks[self.i].kind == "nl" or (self.toks[self.i].kind == "op" and self.toks[self.i].text == ";"):
            self.i += 1

    def at(self, text: str, skip_nl: bool = False) -> bool:
        t = self.peek(skip_nl)
        return t.kind in ("op", "name") and t.text == text

    def expect(self, text: str, what: str = "") -> Token:
        t = self.next()
        if t.text != text or t.kind not in ("op", "name"):
            raise self.error(t, f"expected {text!r}{what}, got {self.describe(t)}")
        return t

    @staticmethod
    def describe(t: Token) -> str:
        if t.kind == "eof":
            return "the end of the mapping"
        if t.kind == "nl":
            return "a line break"
        return repr(t.text)

    def error(self, t: Token, message: str) -> MappingSyntaxError:
        """A syntax error at `t`; at a line end or the end, right after the last real token."""
        if t.kind in ("eof", "nl"):
            j = self.toks.index(t) - 1 if t in self.toks else self.i - 1
            while j >= 0 and self.toks[j].kind == "nl":
                j -= 1
            if j >= 0:
                prev = self.toks[j]
                return MappingSyntaxError(message, prev.line, prev.col + len(prev.text))
        return MappingSyntaxError(message, t.line, t.col)

    # -- statements --------------------------------------------------------------------------------
    def parse_program(self, until: str | None = None) -> list[Node]:
        stmts: list[Node] = []
        self.skip_nl()
        while True:
            t = self.toks[self.i]
            if t.kind == "eof":
                if until:
                    raise self.error(t, f"expected {until!r} to close the block")
                return stmts
            if until and t.kind == "op" and t.text == until:
                return stmts
            stmts.append(self.statement())
            t = self.toks[self.i]
            if t.kind == "nl" or (t.kind == "op" and t.text == ";"):
                self.skip_nl()
            elif t.kind == "eof" or (until and t.kind == "op" and t.text == until):
                continue
            else:
                raise self.error(t, f"expected a line break after the statement, got {self.describe(t)}")

    def statement(self) -> Node:
        t = self.toks[self.i]
        if t.kind == "name" and t.text == "if":
            return self.if_statement()
        if t.kind == "name" and t.text == "let":
            self.next()
            name = self.next()
            if name.kind != "name":
                raise self.error(name, f"expected a variable name after let, got {self.describe(name)}")
            self.expect("=")
            return Node("let", (name.text, self.expr()), t.line, t.col)
        if t.kind == "name" and t.text == "meta":
            self.next()
            key: str | None = None
            if not self.at("="):
                k = self.next()
                if k.kind not in ("name", "string"):
                    raise self.error(k, f"expected a metadata key after meta, got {self.describe(k)}")
                key = str(k.value)
            self.expect("=")
            return Node("meta_set", (key, self.expr()), t.line, t.col)
        if t.kind in ("name", "string") and (t.text not in _KEYWORDS or t.text == "root"):
            path = self.target_path()
            self.expect("=", " (an assignment)")
            return Node("assign", (tuple(path), self.expr()), t.line, t.col)
        raise self.error(t, f"expected a statement (root = ..., root.field = ..., meta key = ..., let, if), "
                            f"got {self.describe(t)}")

    def target_path(self) -> list[str]:
        t = self.next()
        path: list[str] = []
        if t.kind == "name" and t.text == "root":
            pass
        elif t.kind in ("name", "string"):
            path.append(str(t.value))
        while self.at("."):
            self.next()
            k = self.next()
            if k.kind not in ("name", "string", "number"):
                raise self.error(k, f"expected a field name after '.', got {self.describe(k)}")
            path.append(str(k.value))
        return path

    def if_statement(self) -> Node:
        t = self.expect("if")
        branches = []
        cond = self.expr()
        self.expect("{", " to open the if block")
        body = self.parse_program("}")
        self.expect("}")
        branches.append((cond, body))
        orelse: list[Node] = []
        while self.at("else"):
            self.next()
            if self.at("if"):
                self.next()
                cond = self.expr()
                self.expect("{", " to open the else-if block")
                body = self.parse_program("}")
                self.expect("}")
                branches.append((cond, body))
                continue
            self.expect("{", " to open the else block")
            orelse = self.parse_program("}")
            self.expect("}")
            break
        return Node("if_stmt", (branches, orelse), t.line, t.col)

    # -- expressions -------------------------------------------------------------------------------
    def expr(self) -> Node:
        left = self.or_expr()
        while self.at("|"):
            t = self.next()
            left = Node("coalesce", (left, self.or_expr()), t.line, t.col)
        return left

    def _binary(self, ops: set[str], sub: Any, kind: str = "bin") -> Node:
        left = sub()
        while True:
            t = self.peek()
            if t.kind == "op" and t.text in ops:
                self.next()
                self.skip_nl_in_expr()
                left = Node(kind, (t.text, left, sub()), t.line, t.col)
            else:
                return left

    def skip_nl_in_expr(self) -> None:
        while self.toks[self.i].kind == "nl":
            self.i += 1

    def or_expr(self) -> Node:
        return self._binary({"||"}, self.and_expr)

    def and_expr(self) -> Node:
        return self._binary({"&&"}, self.cmp_expr)

    def cmp_expr(self) -> Node:
        left = self.sum_expr()
        t = self.peek()
        if t.kind == "op" and t.text in _CMP:
            self.next()
            self.skip_nl_in_expr()
            right = self.sum_expr()
            left = Node("bin", (t.text, left, right), t.line, t.col)
            t2 = self.peek()
            if t2.kind == "op" and t2.text in _CMP:
                raise self.error(t2, "comparisons can't be chained; use && between them")
        return left

    def sum_expr(self) -> Node:
        return self._binary({"+", "-"}, self.product_expr)

    def product_expr(self) -> Node:
        return self._binary({"*", "/", "%"}, self.unary_expr)

    def unary_expr(self) -> Node:
        t = self.peek()
        if t.kind == "op" and t.text in ("!", "-"):
            self.next()
            return Node("not" if t.text == "!" else "neg", (self.unary_expr(),), t.line, t.col)
        return self.postfix(self.primary())

    def postfix(self, node: Node) -> Node:
        while True:
            t = self.peek()
            if t.kind == "nl" and self.toks[self.i + 1].kind == "op" and self.toks[self.i + 1].text == "." \
                    and not self.depth:
                self.skip_nl_in_expr()  # a method chain continued on the next line
                t = self.peek()
            if t.kind == "op" and t.text == ".":
                self.next()
                k = self.next()
                if k.kind == "name" and self.peek().kind == "op" and self.peek().text == "(" :
                    args = self.args()
                    node = Node("method", (node, k.text, args), k.line, k.col)
                elif k.kind in ("name", "string", "number"):
                    node = Node("get", (node, k.value), k.line, k.col)
                else:
                    raise self.error(k, f"expected a field or method name after '.', got {self.describe(k)}")
            elif t.kind == "op" and t.text == "[":
                self.next()
                self.depth += 1
                idx = self.expr()
                self.depth -= 1
                self.expect("]")
                node = Node("index", (node, idx), t.line, t.col)
            else:
                return node

    def args(self) -> list[Node]:
        self.expect("(")
        self.depth += 1
        out: list[Node] = []
        while not self.at(")"):
            out.append(self.expr())
            if not self.at(","):
                break
            self.next()
        self.depth -= 1
        self.expect(")", " to close the argument list")
        return out

    def primary(self) -> Node:
        t = self.next()
        if t.kind == "number" or t.kind == "string":
            return Node("lit", (t.value,), t.line, t.col)
        if t.kind == "var":
            return Node("var", (t.text[1:],), t.line, t.col)
        if t.kind == "name":
            if t.text in ("true", "false"):
                return Node("lit", (t.text == "true",), t.line, t.col)
            if t.text == "null":
                return Node("lit", (None,), t.line, t.col)
            if t.text == "this":
                return Node("this", (), t.line, t.col)
            if t.text == "root":
                return Node("root", (), t.line, t.col)
            if t.text == "if":
                return self.if_expr(t)
            if self.peek().kind == "op" and self.peek().text == "(":
                return Node("call", (t.text, self.args()), t.line, t.col)
            if t.text in _KEYWORDS:
                raise self.error(t, f"unexpected {t.text!r} in an expression")
            return Node("get", (Node("this", (), t.line, t.col), t.text), t.line, t.col)
        if t.kind == "op" and t.text == "(":
            self.depth += 1
            inner = self.expr()
            self.depth -= 1
            self.expect(")", " to close '('")
            return inner
        if t.kind == "op" and t.text == "[":
            self.depth += 1
            items = []
            while not self.at("]"):
                items.append(self.expr())
                if not self.at(","):
                    break
                self.next()
            self.depth -= 1
            self.expect("]", " to close the array")
            return Node("array", (items,), t.line, t.col)
        if t.kind == "op" and t.text == "{":
            self.depth += 1
            pairs = []
            while not self.at("}"):
                k = self.next()
                if k.kind not in ("string", "name"):
                    raise self.error(k, f"expected a key in the object, got {self.describe(k)}")
                self.expect(":")
                pairs.append((str(k.value), self.expr()))
                if not self.at(","):
                    break
                self.next()
            self.depth -= 1
            self.expect("}", " to close the object")
            return Node("object", (pairs,), t.line, t.col)
        raise self.error(t, f"expected an expression, got {self.describe(t)}")

    def if_expr(self, t: Token) -> Node:
        branches = []
        cond = self.expr()
        branches.append((cond, self.block_expr()))
        orelse: Node | None = None
        while self.at("else", skip_nl=False):
            self.next()
            if self.at("if"):
                self.next()
                cond = self.expr()
                branches.append((cond, self.block_expr()))
                continue
            orelse = self.block_expr()
            break
        return Node("if_expr", (branches, orelse), t.line, t.col)

    def block_expr(self) -> Node:
        self.expect("{", " to open the if branch")
        self.depth += 1
        value = self.expr()
        self.depth -= 1
        self.expect("}", " to close the if branch")
        return value


def parse(text: str) -> list[Node]:
    """Parse a mapping into its statements; MappingSyntaxError carries the line and column."""
    p = Parser(text)
    return p.parse_program()

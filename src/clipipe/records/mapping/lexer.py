"""Tokens of the mapping language, each with its 1-based line and column in the mapping text."""
from __future__ import annotations

import re
from dataclasses import dataclass

from clipipe.errors import SpecError


@dataclass(frozen=True)
class Token:
    """One token: kind (`name`, `number`, `string`, `var`, `op`, `nl`, `eof`), text, value, position."""

    kind: str
    text: str
    value: object
    line: int
    col: int


_OPS = ["==", "!=", "<=", ">=", "&&", "||", "=", "<", ">", "+", "-", "*", "/", "%", "!", "|", ".",
        ",", "(", ")", "[", "]", "{", "}", ":", ";"]
_SPEC = [
    ("ws", r"[ \t\r]+"),
    ("comment", r"#[^\n]*"),
    ("nl", r"\n"),
    ("number", r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?"),
    ("tstring", r'"""(?:.|\n)*?"""'),
    ("string", r'"(?:[^"\\\n]|\\.)*"'),
    ("var", r"\$[A-Za-z_][A-Za-z0-9_]*"),
    ("name", r"[A-Za-z_][A-Za-z0-9_]*"),
    ("op", "|".join(re.escape(o) for o in _OPS)),
]
_RX = re.compile("|".join(f"(?P<{k}>{p})" for k, p in _SPEC))
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f"}


class MappingSyntaxError(SpecError):
    """A mapping does not parse; `line`/`col` are positions inside the mapping text."""

    def __init__(self, message: str, line: int, col: int) -> None:
        super().__init__(message)
        self.line = line
        self.col = col


def _unescape(body: str, line: int, col: int) -> str:
    out = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1] if i + 1 < len(body) else ""
        if nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        elif nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2:i + 6]):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
        else:
            raise MappingSyntaxError(f"unknown escape \\{nxt} in a string", line, col + i + 1)
    return "".join(out)


def tokenize(text: str) -> list[Token]:
    """Split mapping text into tokens; unknown characters and open strings are syntax errors."""
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _RX.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            ch = text[pos]
            if ch == '"':
                raise MappingSyntaxError("unterminated string", line, col)
            raise MappingSyntaxError(f"unexpected character {ch!r}", line, col)
        kind = m.lastgroup or ""
        tok = m.group(0)
        if kind == "nl":
            tokens.append(Token("nl", tok, None, line, col))
        elif kind in ("ws", "comment"):
            pass
        elif kind == "number":
            value: object = float(tok) if any(c in tok for c in ".eE") else int(tok)
            tokens.append(Token("number", tok, value, line, col))
        elif kind == "tstring":
            tokens.append(Token("string", tok, tok[3:-3], line, col))
        elif kind == "string":
            tokens.append(Token("string", tok, _unescape(tok[1:-1], line, col), line, col))
        else:
            tokens.append(Token(kind, tok, tok, line, col))
        newlines = tok.count("\n")
        if newlines:
            line += newlines
            line_start = pos + tok.rindex("\n") + 1
        pos = m.end()
    tokens.append(Token("eof", "", None, line, pos - line_start + 1))
    return tokens

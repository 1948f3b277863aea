"""The mapping language of `transform` steps: a Bloblang subset, parsed once, run per record.

    root = this
    root.full_name = this.first_name + " " + this.last_name
    root.password = deleted()
    root.tier = if this.score > 90 { "gold" } else { "basic" }
    meta source = "crm"

`compile_mapping(text, locate=...)` parses and checks the mapping (unknown functions and methods,
argument counts), raising SpecError at the file position `locate(line, col)` gives for a position in
the mapping text. `Mapping.apply(record, meta)` returns the new record or `DELETED`.
"""
from __future__ import annotations

from typing import Any, Callable

from clipipe.errors import Mark, SpecError
from clipipe.records.mapping.evaluator import DELETED, Compiler, Env, MappingError
from clipipe.records.mapping.lexer import MappingSyntaxError
from clipipe.records.mapping.parser import parse

__all__ = ["DELETED", "Mapping", "MappingError", "compile_mapping", "locator"]

Locate = Callable[[int, int], Mark | None]


class Mapping:
    """A compiled mapping."""

    def __init__(self, text: str, run: Callable[[Env], None], locate: Locate) -> None:
        self.text = text
        self._run = run
        self.locate = locate

    def apply(self, record: Any, meta: dict[str, Any] | None = None) -> Any:
        """The mapped record (or DELETED); `meta` is updated in place by `meta x = ...`."""
        env = Env(record, meta if meta is not None else {})
        self._run(env)
        return env.root

    def where(self, exc: MappingError) -> str:
        """`file:line:col` (or `line L col C`) of a runtime error, for messages."""
        m = self.locate(exc.line, exc.col)
        return str(m) if m else f"mapping line {exc.line} col {exc.col}"


def compile_mapping(text: str, locate: Locate | None = None) -> Mapping:
    """Parse and compile once; syntax and name errors are SpecErrors at the right position."""
    loc: Locate = locate or (lambda _l, _c: None)

    def fail(message: str, line: int, col: int) -> SpecError:
        m = loc(line, col)
        where = "" if m else f" (mapping line {line}, column {col})"
        return SpecError(f"mapping: {message}{where}", mark=m)

    try:
        stmts = parse(text)
    except MappingSyntaxError as exc:
        raise fail(exc.message, exc.line, exc.col) from None
    comp = Compiler()
    run = comp.block(stmts) if stmts else (lambda e: None)
    if comp.problems:
        raise fail(*comp.problems[0])
    return Mapping(text, run, loc)


def locator(mark: Mark | None, source_lines: list[str] | None) -> Locate:
    """Map (line, col) in a YAML string scalar to a file position, from the scalar's mark.

    Block scalars (`|`, `>`) start on the line after the mark, indented; quoted scalars start one
    column after the quote; plain scalars at the mark. Without the file's text, block scalars are
    assumed to be indented two columns more than their key's line.
    """
    if mark is None:
        return lambda _l, _c: None
    style, indent = "plain", 0
    if source_lines is not None and 0 < mark.line <= len(source_lines):
        line_text = source_lines[mark.line - 1]
        ch = line_text[mark.column - 1:mark.column] if mark.column else ""
        if ch in ("|", ">"):
            style = "block"
            for nxt in source_lines[mark.line:]:
                if nxt.strip():
                    indent = len(nxt) - len(nxt.lstrip(" "))
                    break
        elif ch in ('"', "'"):
            style = "quoted"

    def locate(line: int, col: int) -> Mark:
        if style == "block":
            return Mark(mark.file, mark.line + line, indent + col)
        if line == 1:
            return Mark(mark.file, mark.line, mark.column + col - (0 if style == "plain" else -1) - 1)
        return Mark(mark.file, mark.line + line - 1, col)
    return locate

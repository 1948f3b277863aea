"""The mapping language: evaluation, errors at line:col, parse errors pointing into the YAML file."""
from __future__ import annotations

import pytest

from clipipe.errors import RecordError, SpecError
from clipipe.records.mapping import DELETED, MappingError, compile_mapping
from clipipe.records.testing import load_text, run_text


def apply(text: str, record: object, meta: dict | None = None) -> object:
    return compile_mapping(text).apply(record, meta)


@pytest.mark.parametrize("mapping, record, expected", [
    ("root = this", {"a": 1}, {"a": 1}),
    ('root = this\nroot.full_name = this.first_name + " " + this.last_name',
     {"first_name": "Ada", "last_name": "Lovelace"},
     {"first_name": "Ada", "last_name": "Lovelace", "full_name": "Ada Lovelace"}),
    ("root.x = this.a.b", {"a": {"b": 2}}, {"x": 2}),
    ("root = this\nroot.pw = deleted()", {"pw": 1, "k": 2}, {"k": 2}),
    ("root.n = this.a * 2 + 1", {"a": 3}, {"n": 7}),
    ("root.n = (this.a + 1) * 2", {"a": 3}, {"n": 8}),
    ("root.n = 7 / 2", {}, {"n": 3.5}),
    ("root.n = 8 / 2", {}, {"n": 4}),
    ("root.n = 7 % 3 - -1", {}, {"n": 2}),
    ('root.u = this.s.uppercase()\nroot.l = this.s.lowercase()', {"s": "Ab"}, {"u": "AB", "l": "ab"}),
    ('root.t = this.s.trim()', {"s": "  x "}, {"t": "x"}),
    ('root.n = this.s.length()', {"s": "abc"}, {"n": 3}),
    ('root.c = this.s.contains("b")', {"s": "abc"}, {"c": True}),
    ('root.r = this.s.replace_all("a", "o")', {"s": "banana"}, {"r": "bonono"}),
    ('root.p = this.s.split(",")', {"s": "a,b"}, {"p": ["a", "b"]}),
    ('root.n = this.s.number() + 1', {"s": "41"}, {"n": 42}),
    ('root.f = this.s.number()', {"s": "1.5"}, {"f": 1.5}),
    ('root.s = this.n.string() + "!"', {"n": 5}, {"s": "5!"}),
    ('root.s = this.o.string()', {"o": {"a": [1]}}, {"s": '{"a":[1]}'}),
    ("root.b = this.a > 1 && this.a <= 3", {"a": 2}, {"b": True}),
    ("root.b = this.a == \"x\" || !this.c", {"a": "y", "c": False}, {"b": True}),
    ('root.t = if this.score >= 90 { "gold" } else if this.score >= 50 { "silver" } else { "basic" }',
     {"score": 60}, {"t": "silver"}),
    ('if this.a > 1 {\n  root.big = true\n} else {\n  root.big = false\n}', {"a": 5}, {"big": True}),
    ("root.m = this.missing", {}, {"m": None}),
    ('root.m = this.missing | "default"', {}, {"m": "default"}),
    ("root.x = null", {}, {"x": None}),
    ('root.arr = [1, "two", true, null]\nroot.obj = {"k": this.a, "z": deleted()}', {"a": 1},
     {"arr": [1, "two", True, None], "obj": {"k": 1}}),
    ("root.first = this.items.0\nroot.second = this.items[1]", {"items": [10, 20]}, {"first": 10, "second": 20}),
    ('let x = this.a + 1\nroot.y = $x', {"a": 1}, {"y": 2}),
    ('root.x = this.a # a comment\n# whole line comment\nroot.y = 2', {"a": 1}, {"x": 1, "y": 2}),
    ('root = this\nroot.a.b = 5', {"a": {"c": 1}}, {"a": {"c": 1, "b": 5}}),
    ("full = this.a", {"a": 1}, {"full": 1}),
    ('root.x = this.s.catch("bad").number().catch(0)', {"s": "zz"}, {"x": 0}),
    ('root."with space" = 1', {}, {"with space": 1}),
])
def test_mapping_cases(mapping: str, record: object, expected: object) -> None:
    assert apply(mapping, record) == expected


def test_input_is_not_changed() -> None:
    rec = {"a": {"b": 1}, "c": 2}
    out = apply("root = this\nroot.a.b = 9\nroot.c = deleted()\nroot.d = this.a.b", rec)
    assert rec == {"a": {"b": 1}, "c": 2}
    assert out == {"a": {"b": 9}, "d": 1}


def test_root_deleted_drops_the_record() -> None:
    assert apply('root = if this.keep { this } else { deleted() }', {"keep": False}) is DELETED
    assert apply('root = if this.keep { this } else { deleted() }', {"keep": True}) == {"keep": True}


def test_meta_read_and_write() -> None:
    meta = {"path": "/x"}
    out = apply('meta kind = "user"\nroot.src = meta("path")\nroot.k = meta("kind")', {}, meta)
    assert out == {"src": "/x", "k": "user"}
    assert meta == {"path": "/x", "kind": "user"}


@pytest.mark.parametrize("mapping, record, message, line, col", [
    ('root.x = this.a + " "', {"a": 1}, "can't add number and string", 1, 17),
    ("root = this\nroot.x = this.a.uppercase()", {"a": 1}, ".uppercase() needs a string", 2, 17),
    ('root.x = if this.a { 1 } else { 2 }', {"a": "yes"}, "must be a boolean", 1, 18),
    ('root.x = this.a - 1', {"a": "s"}, "can't apply -", 1, 17),
    ('root.x = "x".number()', {}, "can't turn 'x' into a number", 1, 14),
    ('root.x = throw("nope")', {}, "nope", 1, 10),
])
def test_runtime_errors_have_positions(mapping: str, record: object, message: str, line: int, col: int) -> None:
    with pytest.raises(MappingError) as ei:
        apply(mapping, record)
    assert message in ei.value.message
    assert (ei.value.line, ei.value.col) == (line, col)


@pytest.mark.parametrize("mapping, message, line, col", [
    ("root = this\nroot.x = this.a +", "expected an expression", 2, 18),
    ("root = this\nroot.x = (this.a", "expected ')'", 2, 17),
    ("root = this\n  root.x = this.a.frobnicate()", "unknown method frobnicate()", 2, 19),
    ("root.x = nosuch()", "unknown function nosuch()", 1, 10),
    ('root.x = "abc', "unterminated string", 1, 10),
    ("root.x = 1 2", "expected a line break", 1, 12),
    ("root.x = this.a == 1 == 2", "can't be chained", 1, 22),
    ("root.x = this.s.replace_all(\"a\")", "replace_all() takes 2", 1, 17),
    ("if this.a {\n root.x = 1\n", "expected '}'", 2, 12),
    ("this = 1", "expected a statement", 1, 1),
])
def test_parse_errors(mapping: str, message: str, line: int, col: int) -> None:
    with pytest.raises(SpecError) as ei:
        compile_mapping(mapping)
    assert message in str(ei.value)
    assert f"(mapping line {line}, column {col})" in str(ei.value)


PIPE = """name: map-errors
source:
  type: file
  path: in.ndjson
steps:
  - name: parse
    transform: |
      root = this
      root.full = this.first_name +
output:
  type: stdout
"""


def test_parse_error_points_into_the_yaml_file(tmp_path) -> None:
    (tmp_path / "in.ndjson").write_text('{"first_name": "a"}\n')
    with pytest.raises(SpecError) as ei:
        load_text(PIPE, tmp_path / "p.yaml")
    # line 9 of the file is `      root.full = this.first_name +`; the error is at its end
    assert ei.value.mark.line == 9
    assert ei.value.mark.column == 36
    assert str(ei.value).startswith(f"{tmp_path / 'p.yaml'}:9:36: mapping: expected an expression")


def test_quoted_mapping_error_position(tmp_path) -> None:
    text = PIPE.replace("transform: |\n      root = this\n      root.full = this.first_name +\n",
                        'transform: "root.x = this.a.nope()"\n')
    with pytest.raises(SpecError) as ei:
        load_text(text, tmp_path / "p.yaml")
    assert (ei.value.mark.line, ei.value.mark.column) == (7, 33)


def test_runtime_error_names_step_record_and_position(tmp_path) -> None:
    (tmp_path / "in.ndjson").write_text('{"first_name": "a"}\n{"first_name": 5}\n')
    text = PIPE.replace("this.first_name +", 'this.first_name + "!"')
    with pytest.raises(RecordError) as ei:
        run_text(text, tmp_path / "p.yaml")
    msg = str(ei.value)
    assert "step 'parse': record 1: can't add number and string" in msg
    assert "p.yaml:9:" in msg


def test_runtime_error_skip(tmp_path) -> None:
    (tmp_path / "in.ndjson").write_text('{"first_name": "a"}\n{"first_name": 5}\n{"first_name": "c"}\n')
    text = PIPE.replace("this.first_name +", 'this.first_name + "!"').replace(
        "  - name: parse\n", "  - name: parse\n    on_error: skip\n")
    metrics, out, err = run_text(text, tmp_path / "p.yaml")
    assert [l for l in out.splitlines()] == ['{"first_name":"a","full":"a!"}', '{"first_name":"c","full":"c!"}']
    assert metrics["errors"] == 1
    assert metrics["steps"][0]["errors"] == 1 and metrics["steps"][0]["dropped"] == 0
    assert metrics["error_samples"][0]["index"] == 1
    assert "record 1 skipped" in err

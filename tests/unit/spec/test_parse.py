"""Parsing pipeline files: every seed form accepted, every mistake reported at file:line:col."""
from __future__ import annotations

import pytest

from clipipe.errors import ParamError, SpecError
from clipipe.spec import params as params_mod
from clipipe.spec.parse import parse_duration, parse_pipeline
from clipipe.spec.yamlmarks import loads


def parse(text: str):
    return parse_pipeline(loads(text, "p.yaml"), "p.yaml")


def test_wrapper_and_run_and_command_forms():
    a = parse("pipeline:\n  name: x\n  steps:\n    - name: s\n      command: echo hi\n")
    b = parse("name: x\nsteps:\n  - name: s\n    run: echo hi\n")
    assert a.steps[0].command == b.steps[0].command == "echo hi"
    assert a.name == b.name == "x"


def test_depends_on_string_or_list_and_outputs():
    p = parse("""
steps:
  - {name: a, run: "true", output: stream}
  - {name: b, run: cat, input: pipe, output: "variable:v"}
  - {name: c, run: "echo {{.v}}", depends_on: a}
  - {name: d, run: "true", depends_on: [a, c], output: stderr}
""")
    assert p.steps[2].depends_on == ["a"] and p.steps[3].depends_on == ["a", "c"]
    assert p.steps[1].variable == "v" and p.steps[0].stream_name == "a"


def test_retry_defaults_and_durations():
    p = parse("steps:\n  - {name: a, run: x, on_error: retry, retry: {count: 3, delay: 5s}}\n"
              "  - {name: b, run: x, on_error: retry}\n")
    assert p.steps[0].retry.count == 3 and p.steps[0].retry.delay == 5
    assert p.steps[1].retry is not None
    assert parse_duration("1m") == 60 and parse_duration("250ms") == 0.25 and parse_duration(3) == 3


@pytest.mark.parametrize("text, message, line, col", [
    ("steps:\n  - name: a\n    comand: x\n", "unknown key 'comand' in step 'a' (did you mean 'command'?)", 3, 5),
    ("steps:\n  - name: a\n    run: x\n  - name: a\n    run: y\n", "two steps are called 'a'", 4, 5),
    ("steps:\n  - name: a\n", "step 'a' needs a 'command'", 2, 5),
    ("steps:\n  - {name: a, run: x, on_error: explode}\n", "on_error must be one of", 2, 33),
    ("steps:\n  - {name: a, run: x, retry: {count: 0}}\n", "retry count", 2, 38),
    ("name: x\n", "no 'steps'", 1, 1),
    ("steps: {a: 1}\n", "'steps' must be a list", 1, 8),
    ("params:\n  n: {type: integer}\nsteps:\n  - {name: a, run: x}\n", "type must be one of", 2, 13),
    ("steps:\n  - {name: t, type: tee, input: pipe}\n", "'branches' must be a list, not nothing", 2, 5),
    ("steps:\n  - {name: a, run: x, timeout: soon}\n", "not a duration", 2, 32),
])
def test_schema_errors_point_at_the_spot(text, message, line, col):
    with pytest.raises(SpecError) as err:
        parse(text)
    assert message in str(err.value)
    assert (err.value.mark.line, err.value.mark.column) == (line, col)
    assert str(err.value).startswith(f"p.yaml:{line}:{col}: ")


def test_malformed_yaml_has_position():
    with pytest.raises(SpecError) as err:
        loads("steps:\n  - name: a\n     run: x\n", "p.yaml")
    assert err.value.mark.line == 3 and "invalid YAML" in str(err.value)


def test_duplicate_keys_are_refused():
    with pytest.raises(SpecError, match="duplicate key 'run'"):
        loads("steps:\n  - name: a\n    run: x\n    run: y\n", "p.yaml")


def test_params_are_typed_and_nested():
    p = parse("""
params:
  level: {type: int, default: 9}
  flag: {type: bool, default: false}
  items: {type: list, default: [a, b]}
  base: {type: path, default: /srv}
  file: {type: path, default: "{{.base}}/{{.name}}-{{.date}}.tgz"}
  wait: {type: duration, default: 5s}
  need: {type: string, required: true}
steps: [{name: a, run: x}]
""")
    base = params_mod.builtins("pipe", "op-1")
    values = params_mod.resolve(p, {"need": "x", "level": "3", "flag": "yes"}, base)
    assert values["level"] == 3 and values["flag"] is True and values["items"] == ["a", "b"]
    assert values["file"] == f"/srv/pipe-{base['date']}.tgz"
    with pytest.raises(ParamError, match="param 'need' is required"):
        params_mod.resolve(p, {}, base)
    with pytest.raises(ParamError, match="param 'level' must be an int, not 'high'"):
        params_mod.resolve(p, {"need": "x", "level": "high"}, base)
    with pytest.raises(ParamError, match="unknown param --levle"):
        params_mod.resolve(p, {"need": "x", "levle": "1"}, base)


def test_secrets_are_masked():
    p = parse("params:\n  db_password: {default: hunter22}\n  token: {secret: true, default: abc}\n"
              "  user: {default: bob}\nsteps: [{name: a, run: x}]\n")
    values = params_mod.resolve(p, {}, params_mod.builtins("x", "y"))
    assert params_mod.masked(p, values) == {"db_password": "***", "token": "***", "user": "bob"}

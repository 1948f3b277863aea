"""Loading record pipelines: every component example validates; mistakes point at file:line:col."""
from __future__ import annotations

import pytest

from clipipe.errors import SpecError, TemplateError
from clipipe.records import explain, is_record_pipeline
from clipipe.records.envinterp import interpolate
from clipipe.records.pipeline import example_documents
from clipipe.records.registry import components
from clipipe.records.testing import load_text
from clipipe.spec import yamlmarks

BASE = {
    "source": "source:\n  type: file\n  path: in.ndjson\n",
    "step": "steps:\n  - name: s\n    select: [id]\n",
    "output": "output:\n  type: stdout\n",
}


@pytest.mark.parametrize("kind, name, example", example_documents(),
                         ids=[f"{k}-{n}-{i}" for i, (k, n, _) in enumerate(example_documents())])
def test_every_component_example_validates(tmp_path, kind: str, name: str, example: str) -> None:
    parts = dict(BASE)
    parts[kind] = example
    head = "name: ex\ntype: batch\n"
    if kind == "source" and "batch" not in components("source")[name].modes:  # e.g. kafka
        head = "name: ex\ntype: realtime\nrealtime: {id_field: id}\n"
    text = head + parts["source"] + parts["step"] + parts["output"]
    pipe = load_text(text, tmp_path / "p.yaml", env={"HTTP_USER": "u"})
    assert pipe.name == "ex"


def test_explain_lists_fields() -> None:
    text = explain("source", "sql")
    assert "incremental" in text and "dsn" in text and "example:" in text


def test_is_record_pipeline() -> None:
    assert is_record_pipeline({"type": "batch"})
    assert is_record_pipeline({"pipeline": {"source": {}}})
    assert not is_record_pipeline({"steps": [{"command": "ls"}]})


def _err(tmp_path, text: str, env: dict | None = None) -> SpecError:
    with pytest.raises(SpecError) as ei:
        load_text(text, tmp_path / "p.yaml", env=env or {})
    return ei.value


def test_realtime_needs_its_block(tmp_path) -> None:
    e = _err(tmp_path, "type: realtime\nsource: {type: file, path: x}\noutput: {type: stub}\n")
    assert "needs a realtime: block" in str(e)
    assert e.mark.line == 1


def test_unknown_top_key(tmp_path) -> None:
    e = _err(tmp_path, "type: batch\nsource: {type: file, path: x}\noutput: {type: stub}\nextra: 1\n")
    assert "unknown key 'extra'" in str(e) and e.mark.line == 4


def test_unknown_source_type(tmp_path) -> None:
    e = _err(tmp_path, "source:\n  type: ftp\noutput: {type: stub}\n")
    assert "unknown source type 'ftp'" in str(e)
    assert all(n in str(e) for n in ("file", "http", "kafka", "sql"))
    assert (e.mark.line, e.mark.column) == (2, 9)


def test_unknown_source_key(tmp_path) -> None:
    e = _err(tmp_path, "source:\n  type: file\n  path: x\n  formt: csv\noutput: {type: stub}\n")
    assert "unknown key 'formt'" in str(e) and e.mark.line == 4


def test_wrong_type(tmp_path) -> None:
    e = _err(tmp_path, "source:\n  type: file\n  path: x\n  csv_header: maybe\noutput: {type: stub}\n")
    assert "expected true or false" in str(e) and (e.mark.line, e.mark.column) == (4, 15)


def test_bad_literal_choice(tmp_path) -> None:
    e = _err(tmp_path, "source:\n  type: file\n  path: x\n  format: xml\noutput: {type: stub}\n")
    assert "expected one of" in str(e) and e.mark.line == 4


def test_missing_required(tmp_path) -> None:
    e = _err(tmp_path, "source:\n  type: sql\n  query: select 1\noutput: {type: stub}\n")
    assert "missing required key 'dsn'" in str(e) and e.mark.line == 2


def test_step_without_kind(tmp_path) -> None:
    e = _err(tmp_path, "source: {type: file, path: x}\nsteps:\n  - name: a\n    frobnicate: 1\n"
                       "output: {type: stub}\n")
    assert "say what it does" in str(e) and e.mark.line == 4


def test_step_bad_jq(tmp_path) -> None:
    e = _err(tmp_path, "source: {type: file, path: x}\nsteps:\n  - name: a\n    filter: '.a ==='\n"
                       "output: {type: stub}\n")
    assert "invalid jq expression" in str(e) and e.mark.line == 4


def test_step_explicit_form(tmp_path) -> None:
    pipe = load_text("source: {type: file, path: x}\nsteps:\n  - name: a\n    type: transform\n"
                     "    mapping: root = this\noutput: {type: stub}\n", tmp_path / "p.yaml")
    assert pipe.steps[0].type_name == "transform"


def test_sample_rate_range(tmp_path) -> None:
    e = _err(tmp_path, "source: {type: file, path: x}\nsteps:\n  - sample: 1.5\noutput: {type: stub}\n")
    assert "between 0 and 1" in str(e) and e.mark.line == 3


def test_duplicate_step_names(tmp_path) -> None:
    e = _err(tmp_path, "source: {type: file, path: x}\nsteps:\n  - {name: a, sample: 0.5}\n"
                       "  - {name: a, sample: 0.5}\noutput: {type: stub}\n")
    assert "two steps are named 'a'" in str(e) and e.mark.line == 4


def test_pipeline_wrapper_and_params(tmp_path) -> None:
    text = ("name: outer\nparams:\n  dir: {type: path, default: /x}\npipeline:\n  type: batch\n"
            "  source: {type: file, path: '{{.dir}}/in.ndjson'}\n  output: {type: stub}\n")
    pipe = load_text(text, tmp_path / "p.yaml", params={"dir": "/data"})
    assert pipe.name == "outer"
    assert pipe.source.config.path == "/data/in.ndjson"


def test_unknown_template_param(tmp_path) -> None:
    with pytest.raises(TemplateError) as ei:
        load_text("source: {type: file, path: '{{.nope}}'}\noutput: {type: stub}\n", tmp_path / "p.yaml")
    assert ei.value.mark.line == 1


def test_env_var_missing_points_at_the_string(tmp_path) -> None:
    e = _err(tmp_path, "source:\n  type: http\n  url: https://x\n  auth:\n    type: bearer\n"
                       "    token: ${API_TOKEN}\noutput: {type: stub}\n")
    assert "API_TOKEN is not set" in str(e) and (e.mark.line, e.mark.column) == (6, 12)


def test_env_var_substituted_and_defaults(tmp_path) -> None:
    pipe = load_text("source:\n  type: http\n  url: ${BASE:-http://localhost:1}/users\n  auth:\n"
                     "    type: bearer\n    token: ${API_TOKEN}\noutput: {type: stub}\n",
                     tmp_path / "p.yaml", env={"API_TOKEN": "t0k"})
    assert pipe.source.config.url == "http://localhost:1/users"
    assert pipe.source.config.auth.token == "t0k"


def test_last_sync_time_is_left_for_the_sql_source(tmp_path) -> None:
    pipe = load_text('source:\n  type: sql\n  dsn: x.db\n  query: "SELECT * FROM t WHERE u > ?"\n'
                     '  params: ["${LAST_SYNC_TIME}"]\n  incremental: {column: u, state_key: k}\n'
                     "output: {type: stub}\n", tmp_path / "p.yaml", env={})
    assert pipe.source.config.params == ["${LAST_SYNC_TIME}"]


@pytest.mark.parametrize("text, env, expected", [
    ("a ${X} b", {"X": "1"}, "a 1 b"),
    ("${X:-d}", {}, "d"),
    ("${X:-}", {}, ""),
    ("$${X}", {}, "${X}"),
    ("${X}${Y}", {"X": "${Y}", "Y": "2"}, "${Y}2"),
    ("no vars $HOME", {}, "no vars $HOME"),
])
def test_interpolate(text: str, env: dict, expected: str) -> None:
    assert interpolate(text, env, {}) == expected


def test_yaml_doc_roundtrip_marks() -> None:
    doc = yamlmarks.loads("a: ${X}\n", "f.yaml")
    from clipipe.records.envinterp import interpolate_doc
    out = interpolate_doc(doc, env={"X": "v"})
    assert out["a"] == "v" and out["a"].mark.line == 1

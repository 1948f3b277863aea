"""File source formats, the simple steps, stdout/file outputs, on_error, idempotent runs."""
from __future__ import annotations

import json

import pytest

from clipipe.errors import RecordError
from clipipe.records.testing import run_text

USERS = [{"id": i, "name": f"u{i}", "status": "active" if i % 2 else "inactive",
          "address": {"city": f"c{i}", "zip": str(1000 + i)}, "password": "secret"} for i in range(10)]


def pipe(source: str, steps: str = "", output: str = "output:\n  type: stdout\n") -> str:
    return f"name: t\ntype: batch\nsource:\n{source}" + (f"steps:\n{steps}" if steps else "") + output


def lines(out: str) -> list:
    return [json.loads(x) for x in out.splitlines()]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "u.ndjson").write_text("".join(json.dumps(u) + "\n" for u in USERS))
    (tmp_path / "u.json").write_text(json.dumps(USERS, indent=2))
    (tmp_path / "u.csv").write_text("id;name;status\n1;a;active\n2;b;x\n")
    (tmp_path / "u.txt").write_text("one\n\ntwo\r\nthree")
    (tmp_path / "p1.ndjson").write_text('{"p": 1}\n')
    (tmp_path / "p2.ndjson").write_text('{"p": 2}\n\n')
    return tmp_path


def test_ndjson(files) -> None:
    m, out, _ = run_text(pipe("  type: file\n  path: u.ndjson\n"), files / "p.yaml")
    assert lines(out) == USERS and m["records_in"] == 10 and m["source"]["files"] == 1


def test_json_array(files) -> None:
    _, out, _ = run_text(pipe("  type: file\n  path: u.json\n  format: json\n"), files / "p.yaml")
    assert lines(out) == USERS


def test_json_stream_of_pretty_objects(files) -> None:
    (files / "pretty.json").write_text("".join(json.dumps(u, indent=2) + "\n" for u in USERS[:3]))
    _, out, _ = run_text(pipe("  type: file\n  path: pretty.json\n  format: json\n"), files / "p.yaml")
    assert lines(out) == USERS[:3]


def test_csv_with_header_and_delimiter(files) -> None:
    _, out, _ = run_text(pipe("  type: file\n  path: u.csv\n  format: csv\n  delimiter: ';'\n"),
                         files / "p.yaml")
    assert lines(out) == [{"id": "1", "name": "a", "status": "active"}, {"id": "2", "name": "b", "status": "x"}]


def test_csv_without_header(files) -> None:
    _, out, _ = run_text(pipe("  type: file\n  path: u.csv\n  format: csv\n  delimiter: ';'\n"
                              "  csv_header: false\n  columns: [a, b, c]\n"), files / "p.yaml")
    assert lines(out)[0] == {"a": "id", "b": "name", "c": "status"}


def test_lines(files) -> None:
    _, out, _ = run_text(pipe("  type: file\n  path: u.txt\n  format: lines\n"), files / "p.yaml")
    assert lines(out) == [{"line": "one"}, {"line": "two"}, {"line": "three"}]


def test_globs_in_order(files) -> None:
    m, out, _ = run_text(pipe("  type: file\n  paths: ['p*.ndjson']\n"), files / "p.yaml")
    assert lines(out) == [{"p": 1}, {"p": 2}] and m["source"]["files"] == 2


def test_missing_file_and_empty_glob(files) -> None:
    with pytest.raises(RecordError, match="no such file"):
        run_text(pipe("  type: file\n  path: nope.ndjson\n"), files / "p.yaml")
    with pytest.raises(RecordError, match="no file matches"):
        run_text(pipe("  type: file\n  paths: ['zz*.ndjson']\n"), files / "p.yaml")


def test_bad_json_line_stop_and_skip(files) -> None:
    (files / "bad.ndjson").write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(RecordError, match=r"source: record 1: invalid JSON"):
        run_text(pipe("  type: file\n  path: bad.ndjson\n"), files / "p.yaml")
    m, out, err = run_text("on_error: skip\n" + pipe("  type: file\n  path: bad.ndjson\n"), files / "p.yaml")
    assert lines(out) == [{"a": 1}, {"a": 3}] and m["errors"] == 1 and "record 1 skipped" in err


STEPS = """  - name: parse
    transform: |
      root = this
      root.label = this.name.uppercase() + "-" + this.address.city
  - name: active_only
    filter: '.status == "active"'
  - name: select_fields
    select: [id, label, address.city]
  - name: sample
    sample: {rate: 1.0}
"""


def test_steps_chain_and_metrics(files) -> None:
    m, out, _ = run_text(pipe("  type: file\n  path: u.ndjson\n", STEPS), files / "p.yaml")
    assert lines(out) == [{"id": i, "label": f"U{i}-c{i}", "address": {"city": f"c{i}"}}
                          for i in range(10) if i % 2]
    steps = {s["name"]: s for s in m["steps"]}
    assert steps["active_only"]["records_in"] == 10 and steps["active_only"]["dropped"] == 5
    assert steps["select_fields"]["records_out"] == 5
    assert m["records_in"] == 10 and m["records_out"] == 5 and m["dropped"] == 5


def test_exclude_nested_does_not_touch_input(files) -> None:
    _, out, _ = run_text(pipe("  type: file\n  path: u.ndjson\n",
                              "  - name: x\n    exclude: [password, address.zip, nope.deeper]\n"), files / "p.yaml")
    assert lines(out)[0] == {"id": 0, "name": "u0", "status": "inactive", "address": {"city": "c0"}}


def test_sample_is_deterministic_and_close_to_rate(tmp_path) -> None:
    (tmp_path / "n.ndjson").write_text("".join(f'{{"i": {i}}}\n' for i in range(20000)))
    text = pipe("  type: file\n  path: n.ndjson\n  batch_size: 777\n", "  - name: s\n    sample: 0.1\n")
    _, out1, _ = run_text(text, tmp_path / "p.yaml")
    _, out2, _ = run_text(text.replace("777", "5000"), tmp_path / "p.yaml")
    assert out1 == out2
    assert 1800 < len(out1.splitlines()) < 2200
    _, out3, _ = run_text(text.replace("sample: 0.1", "sample: {rate: 0.1, seed: 7}"), tmp_path / "p.yaml")
    assert out3 != out1


def test_filter_jq_features_and_errors(files) -> None:
    _, out, _ = run_text(pipe("  type: file\n  path: u.ndjson\n",
                              "  - name: f\n    filter: '[.address.zip | tonumber] | add > 1007'\n"),
                         files / "p.yaml")
    assert [r["id"] for r in lines(out)] == [8, 9]
    (files / "mixed.ndjson").write_text('{"a": {"b": 1}}\n{"a": "str"}\n{"a": {"b": 2}}\n')
    with pytest.raises(RecordError, match=r"step 'f': record 1: jq: Cannot index string"):
        run_text(pipe("  type: file\n  path: mixed.ndjson\n", "  - name: f\n    filter: '.a.b > 1'\n"),
                 files / "p.yaml")
    m, out, _ = run_text(pipe("  type: file\n  path: mixed.ndjson\n",
                              "  - name: f\n    on_error: skip\n    filter: {expression: '.a.b >= 1', fast_path: false}\n"),
                         files / "p.yaml")
    assert lines(out) == [{"a": {"b": 1}}, {"a": {"b": 2}}] and m["steps"][0]["errors"] == 1


@pytest.mark.parametrize("fmt", ["ndjson", "json", "csv"])
def test_file_output_formats_and_idempotence(files, fmt: str) -> None:
    text = pipe("  type: file\n  path: u.ndjson\n", "  - name: s\n    select: [id, name, address]\n",
                f"output:\n  type: file\n  path: out/r.{fmt}\n  format: {fmt}\n")
    m, _, _ = run_text(text, files / "p.yaml")
    first = (files / "out" / f"r.{fmt}").read_text()
    run_text(text, files / "p.yaml")
    assert (files / "out" / f"r.{fmt}").read_text() == first
    want = [{"id": u["id"], "name": u["name"], "address": u["address"]} for u in USERS]
    if fmt == "ndjson":
        assert lines(first) == want
    elif fmt == "json":
        assert json.loads(first) == want
    else:
        rows = first.splitlines()
        assert rows[0] == "id,name,address" and rows[1] == '0,u0,"{""city"":""c0"",""zip"":""1000""}"'
    assert m["output"]["records"] == 10 and [p.name for p in (files / "out").iterdir()] == [f"r.{fmt}"]


def test_failed_run_leaves_no_output_file(files) -> None:
    (files / "bad.ndjson").write_text('{"a": 1}\n' * 3000 + "not json\n")
    text = pipe("  type: file\n  path: bad.ndjson\n", "", "output:\n  type: file\n  path: out/r.ndjson\n")
    with pytest.raises(RecordError):
        run_text(text, files / "p.yaml")
    assert not (files / "out").exists() or list((files / "out").iterdir()) == []


def test_stub_logs_and_metrics(files) -> None:
    m, out, err = run_text(pipe("  type: file\n  path: u.ndjson\n", "  - {name: a, select: [id]}\n",
                                "output:\n  type: stub\n  log_format: text\n"), files / "p.yaml")
    assert out.splitlines()[0] == 'INFO record #0 {"id":0}'
    assert "pipeline.records_out = 10" in err and "pipeline.step.a.records_in = 10" in err
    m, out, err = run_text(pipe("  type: file\n  path: u.ndjson\n", "",
                                "output:\n  type: stub\n  log_level: warn\n"), files / "p.yaml")
    assert out == "" and err == "" and m["output"]["records"] == 10
    m, out, err = run_text(pipe("  type: file\n  path: u.ndjson\n", "", "output:\n  type: stub\n"),
                           files / "p.yaml", quiet=True)
    assert err == "" and json.loads(out.splitlines()[0])["record"] == USERS[0]

"""Record pipelines through the real `clipipe` command: run, record, explain, validate, errors."""
from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write

ROOT = Path(__file__).resolve().parents[2]


def test_csv_example_runs_and_is_recorded(clipipe):
    res = clipipe("run", str(ROOT / "examples" / "records" / "files-csv.yaml"))
    assert res.code == 0, res
    rows = [json.loads(line) for line in res.out.splitlines()]
    assert rows and all(set(r) == {"id", "name", "age", "status", "adult"} for r in rows)
    again = clipipe("run", "-q", str(ROOT / "examples" / "records" / "files-csv.yaml"))
    assert again.out == res.out  # batch runs are idempotent (the sample is seeded)
    rec = json.loads(clipipe("ops", "list", "--json", "-n", "1").out.splitlines()[0])
    assert rec["type"] == "records" and rec["status"] == "ok" and rec["metrics"]


def test_params_env_and_errors(clipipe, tmp_path):
    data = write(tmp_path / "in.ndjson", '{"id": 1, "s": "a"}\n{"id": 2, "s": "b"}\n')
    pipe = write(tmp_path / "p.yaml", f"""
name: env-and-params
type: batch
params:
  want: {{default: a}}
source: {{type: file, path: "{data}", format: ndjson}}
steps:
  - {{name: keep, filter: '.s == "{{{{.want}}}}"'}}
  - name: tag
    transform: |
      root = this
      root.who = "${{WHO:-nobody}}"
output: {{type: stdout}}
""")
    res = clipipe("run", "-q", str(pipe), "--want=b", env={"WHO": "ops"})
    assert res.code == 0, res
    assert [json.loads(x) for x in res.out.splitlines()] == [{"id": 2, "s": "b", "who": "ops"}]
    bad = write(tmp_path / "bad.yaml", "type: batch\nsource: {type: nosuch}\noutput: {type: stdout}\n")
    res = clipipe("run", str(bad))
    assert res.code == 2 and f"{bad}:2:" in res.err and "unknown source type 'nosuch'" in res.err, res
    assert clipipe("validate", str(pipe)).code == 0


def test_explain_lists_and_describes(clipipe):
    res = clipipe("explain")
    assert res.code == 0 and "sources:" in res.out and "transform" in res.out
    res = clipipe("explain", "http")
    assert res.code == 0 and "pagination" in res.out
    assert clipipe("explain", "nope").code == 2

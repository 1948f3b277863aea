"""`clipipe test`: a record pipeline's steps against fixture cases (inline `tests:` and NAME.tests/)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from clipipe.errors import SpecError
from clipipe.records.testing import run_fixture_cases

ROOT = Path(__file__).resolve().parents[3]

PIPE = """
name: people
source: {type: sql, driver: postgres, dsn: "host=unreachable.invalid", query: "SELECT 1"}
steps:
  - name: full
    transform: |
      root = this
      root.name = this.first + " " + this.last
  - {name: grown-ups, filter: '.age >= 18'}
  - {name: keep, select: [name, age]}
output: {type: stdout}
"""


def clipipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipipe", *args], capture_output=True, text=True, timeout=60)


def test_inline_and_folder_cases_pass_without_touching_the_source(tmp_path: Path) -> None:
    p = tmp_path / "people.yaml"
    p.write_text(PIPE + """
tests:
  - name: adults only
    input: [{first: Ada, last: L, age: 36}, {first: Kid, last: K, age: 9}]
    expect: [{name: Ada L, age: 36}]
""")
    folder = tmp_path / "people.tests"
    folder.mkdir()
    (folder / "empty.input.ndjson").write_text('{"first": "a", "last": "b", "age": 1}\n')
    (folder / "empty.expected.ndjson").write_text("")
    results = run_fixture_cases(p)                    # the sql source's host doesn't even resolve
    assert [(r.case.name, r.ok) for r in results] == [("adults only", True), ("empty", True)]
    res = clipipe("test", str(p))
    assert res.returncode == 0, res.stderr
    assert "2 cases: 2 passed, 0 failed" in res.stdout
    assert clipipe("validate", str(p)).returncode == 0            # `tests:` is part of a valid file


def test_a_failing_case_shows_the_first_difference_and_exits_1(tmp_path: Path) -> None:
    p = tmp_path / "people.yaml"
    p.write_text(PIPE + """
tests:
  - name: wrong expectation
    input: [{first: Ada, last: L, age: 36}]
    expect: [{name: Ada Lovelace, age: 36}]
  - name: missing one
    input: [{first: A, last: B, age: 20}]
    expect: [{name: A B, age: 20}, {name: C D, age: 30}]
""")
    results = run_fixture_cases(p)
    assert [r.ok for r in results] == [False, False]
    assert 'expected {"age": 36, "name": "Ada Lovelace"}' in results[0].difference
    assert 'got      {"age": 36, "name": "Ada L"}' in results[0].difference
    assert "1 record(s) missing" in results[1].difference
    res = clipipe("test", str(p))
    assert res.returncode == 1
    assert "✗" in res.stdout and f"{p}:" in res.stdout and "2 cases: 0 passed, 2 failed" in res.stdout
    lines = [json.loads(x) for x in clipipe("test", "--json", str(p)).stdout.splitlines()]
    assert [x["ok"] for x in lines] == [False, False] and lines[0]["records_out"] == 1


@pytest.mark.parametrize("extra, message", [
    ("tests: {a: 1}\n", "tests: expected a list"),
    ("tests:\n  - {name: x, input: [{a: 1}]}\n", "a case is {name, input: [records], expect: [records]}"),
    ("tests:\n  - {name: x, input: {a: 1}, expect: []}\n", "input and expect are lists"),
    ("", "has no test cases"),
])
def test_bad_or_missing_cases_are_spec_errors(tmp_path: Path, extra: str, message: str) -> None:
    p = tmp_path / "people.yaml"
    p.write_text(PIPE + extra)
    with pytest.raises(SpecError, match=re.escape(message)):
        run_fixture_cases(p)
    res = clipipe("test", str(p))
    assert res.returncode == 2 and message.split("{")[0] in res.stderr and "Traceback" not in res.stderr


def test_folder_case_without_expected_and_a_shell_pipeline(tmp_path: Path) -> None:
    p = tmp_path / "people.yaml"
    p.write_text(PIPE)
    (tmp_path / "people.tests").mkdir()
    (tmp_path / "people.tests" / "x.input.ndjson").write_text("{}\n")
    with pytest.raises(SpecError, match="has no x.expected.ndjson"):
        run_fixture_cases(p)
    shell = tmp_path / "shell.yaml"
    shell.write_text("steps:\n  - {name: a, command: 'true'}\n")
    with pytest.raises(SpecError, match="not a record pipeline"):
        run_fixture_cases(shell)


def test_the_seed_example_has_passing_cases() -> None:
    res = clipipe("test", str(ROOT / "examples" / "records" / "user-sync.yaml"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 cases: 2 passed" in res.stdout

"""Run a record pipeline from YAML text in one call (tests, benchmarks), and `clipipe test`'s fixture cases."""
from __future__ import annotations

import asyncio
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipipe.errors import Mark, SpecError
from clipipe.records.pipeline import RecordPipeline, load
from clipipe.spec import yamlmarks
from clipipe.spec.yamlmarks import mark_of


def load_text(text: str, path: str | Path, *, params: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, write: bool = True) -> RecordPipeline:
    """Write `text` to `path` (so marks and mapping positions refer to a real file) and load it."""
    p = Path(path)
    if write:
        p.write_text(text, encoding="utf-8")
    doc = yamlmarks.loads(text, str(p))
    return load(doc, path=str(p), params=params or {}, source_text=text, env=env)


def run_text(text: str, path: str | Path, *, store: Any = None, params: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, quiet: bool = False,
             op_id: str = "test") -> tuple[dict[str, Any], str, str]:
    """Load and run; returns (metrics, stdout text, stderr text)."""
    pipe = load_text(text, path, params=params, env=env)
    out, err = io.StringIO(), io.StringIO()
    if store is None:
        from clipipe.state.sqlite import SQLiteStore
        store = SQLiteStore(Path(path).with_suffix(".state.db"))
    metrics = asyncio.run(pipe.run(store=store, op_id=op_id, stdout=out, stderr=err, quiet=quiet))
    return metrics, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------ `clipipe test`
#: Where a pipeline's fixture cases live beside it: `NAME.tests/CASE.input.ndjson` with
#: `CASE.expected.ndjson` (one JSON record per line), besides any `tests:` block in the file itself.
CASES_SUFFIX = ".tests"


@dataclass
class Case:
    """One fixture: records fed to the steps and the records expected out of them."""

    name: str
    input: list[Any]
    expected: list[Any]
    where: str                         #: file:line of the case, for messages


@dataclass
class CaseResult:
    """How a case went: ok, and the first difference when not."""

    case: Case
    ok: bool
    got: list[Any] = field(default_factory=list)
    difference: str = ""
    errors: int = 0


def _ndjson(path: Path) -> list[Any]:
    out = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise SpecError(f"not a JSON record: {exc}", mark=Mark(str(path), i)) from None
    return out


def find_cases(path: str | Path, doc: Any) -> list[Case]:
    """The cases of a pipeline file: its `tests:` block, then `NAME.tests/*.input.ndjson` beside it."""
    p = Path(path)
    cases: list[Case] = []
    block = doc.get("tests") if isinstance(doc, dict) else None
    if block is not None:
        if not isinstance(block, list):
            raise SpecError("tests: expected a list of {name, input, expect}", mark=mark_of(block))
        for i, item in enumerate(block):
            m = mark_of(item)
            if not isinstance(item, dict) or "input" not in item or "expect" not in item:
                raise SpecError(f"tests[{i}]: a case is {{name, input: [records], expect: [records]}}", mark=m)
            inp, exp = item["input"], item["expect"]
            if not isinstance(inp, list) or not isinstance(exp, list):
                raise SpecError(f"tests[{i}]: input and expect are lists of records", mark=m)
            cases.append(Case(str(item.get("name", f"case-{i + 1}")), _plain(inp), _plain(exp), str(m)))
    folder = p.with_name(p.stem + CASES_SUFFIX)
    if folder.is_dir():
        for inp_path in sorted(folder.glob("*.input.ndjson")):
            name = inp_path.name[: -len(".input.ndjson")]
            exp_path = folder / f"{name}.expected.ndjson"
            if not exp_path.exists():
                raise SpecError(f"case {name!r} has no {exp_path.name}", mark=Mark(str(inp_path)))
            cases.append(Case(name, _ndjson(inp_path), _ndjson(exp_path), str(inp_path)))
    return cases


def _plain(value: Any) -> Any:
    """YAML-loaded values as plain JSON-able data (marks dropped)."""
    return json.loads(json.dumps(value, default=str))


def run_case(pipe: RecordPipeline, case: Case) -> CaseResult:
    """Feed the case's records to the pipeline's steps (no source, no output) and compare."""
    from clipipe.records.core import Batch

    run = pipe.begin(store=None, op_id="test", stdout=None, stderr=None, quiet=True)
    batch = pipe._process(Batch(records=[_plain(r) for r in case.input], index=range(len(case.input))))
    got = _plain(batch.records()) if len(batch) else []
    result = CaseResult(case, got == case.expected, got, errors=run.errors)
    if not result.ok:
        result.difference = _difference(case.expected, got)
    return result


def _difference(expected: list[Any], got: list[Any]) -> str:
    for i, (e, g) in enumerate(zip(expected, got)):
        if e != g:
            return (f"record {i} differs:\n    expected {json.dumps(e, sort_keys=True)}\n"
                    f"    got      {json.dumps(g, sort_keys=True)}")
    if len(got) < len(expected):
        return f"{len(expected) - len(got)} record(s) missing, first: {json.dumps(expected[len(got)], sort_keys=True)}"
    return f"{len(got) - len(expected)} record(s) too many, first: {json.dumps(got[len(expected)], sort_keys=True)}"


def run_fixture_cases(path: str | Path, *, params: dict[str, Any] | None = None) -> list[CaseResult]:
    """Every case of a record pipeline file, run against its steps."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"can't read {p}: {exc.strerror or exc}") from exc
    from clipipe.records.pipeline import is_record_pipeline, unwrap
    doc = yamlmarks.loads(text, str(p))
    if not is_record_pipeline(doc):
        raise SpecError(f"{p} is not a record pipeline (no `source:`): `clipipe test` runs record steps",
                        hint="for shell pipelines use `clipipe run --dry-run` or `clipipe validate`")
    doc = unwrap(doc)
    cases = find_cases(p, doc)
    if not cases:
        raise SpecError(f"{p} has no test cases",
                        hint=f"add a `tests:` block ({{name, input, expect}}) or {p.stem}{CASES_SUFFIX}/"
                             "CASE.input.ndjson with CASE.expected.ndjson")
    pipe = load(doc, path=str(p), params=params or {}, source_text=text, env={**os.environ, "CLIPIPE_TEST": "1"})
    return [run_case(pipe, c) for c in cases]

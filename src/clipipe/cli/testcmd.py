"""`clipipe test`: run a record pipeline's steps against its fixture cases."""
from __future__ import annotations

import json

import click

from clipipe.records.testing import CASES_SUFFIX, run_fixture_cases

HELP = f"""Run the record steps of PIPELINE against its fixture cases; exit 1 if one fails.

\b
Cases come from a `tests:` block in the pipeline file:
  tests:
    - name: active users only
      input:  [{{id: 1, status: active}}, {{id: 2, status: gone}}]
      expect: [{{id: 1}}]
and from files beside it: NAME{CASES_SUFFIX}/CASE.input.ndjson with CASE.expected.ndjson.
Each case's input goes through the steps only: the source and the output are not
touched (no database, HTTP or Kafka is needed), and records must come out equal and in order.
"""


@click.command("test", help=HELP)
@click.argument("pipelines", nargs=-1, required=True, metavar="PIPELINE...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per case.")
def test(pipelines: tuple[str, ...], as_json: bool) -> int:
    """Run fixture cases of record pipelines."""
    failed = total = 0
    for path in pipelines:
        for r in run_fixture_cases(path):
            total += 1
            failed += not r.ok
            if as_json:
                click.echo(json.dumps({"pipeline": path, "case": r.case.name, "ok": r.ok, "where": r.case.where,
                                       "records_in": len(r.case.input), "records_out": len(r.got),
                                       "errors": r.errors, "difference": r.difference or None}))
                continue
            mark = "✓" if r.ok else "✗"
            click.echo(f"{mark} {path}: {r.case.name} ({len(r.case.input)} in, {len(r.got)} out"
                       + (f", {r.errors} record errors" if r.errors else "") + ")")
            if not r.ok:
                click.echo(f"  {r.case.where}: {r.difference}")
    if not as_json:
        click.echo(f"{total} case{'s' if total != 1 else ''}: {total - failed} passed, {failed} failed")
    return 1 if failed else 0

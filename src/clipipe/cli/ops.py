"""`clipipe ops list|show`: the operation records kept in the state store."""
from __future__ import annotations

import json

import click

from clipipe.engine.operation import open_store
from clipipe.errors import UserError


@click.group()
def ops() -> None:
    """Operation records of past runs (kept in the state store; $CLIPIPE_HOME overrides its place)."""


@ops.command("list")
@click.option("-n", "--limit", default=20, show_default=True, help="How many, newest first.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def list_ops(limit: int, as_json: bool) -> int:
    """The newest operations: id, status, pipeline, duration."""
    records = open_store().list_ops(limit)
    if as_json:
        for r in records:
            click.echo(json.dumps(r, default=str))
        return 0
    if not records:
        click.echo("no operations yet")
        return 0
    click.echo(f"{'ID':<24} {'STATUS':<10} {'DURATION':>9}  PIPELINE")
    for r in records:
        dur = r.get("duration_ms")
        shown = f"{dur / 1000:.1f}s" if isinstance(dur, (int, float)) else "-"
        click.echo(f"{r['id']:<24} {r.get('status', '?'):<10} {shown:>9}  {r.get('pipeline', '')}")
    return 0


@ops.command("show")
@click.argument("op_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="The whole record as JSON.")
def show_op(op_id: str, as_json: bool) -> int:
    """One operation record (an id prefix is enough when it is unique)."""
    rec = open_store().get_op(op_id)
    if rec is None:
        raise UserError(f"no operation {op_id!r} (or the prefix matches several)",
                        hint="see `clipipe ops list`")
    if as_json:
        click.echo(json.dumps(rec, indent=2, default=str))
        return 0
    click.echo(f"Operation {rec['id']}: {rec.get('pipeline')} — {rec.get('status')}")
    click.echo(f"  started {rec.get('started')}, {rec.get('duration_ms')} ms")
    if rec.get("params"):
        click.echo("  params: " + ", ".join(f"{k}={v}" for k, v in rec["params"].items()))
    for s in rec.get("steps", []):
        extra = f" exit={s.get('exit_code')}" if s.get("exit_code") not in (None, 0) else ""
        click.echo(f"  step {s['name']} [{s.get('context')}]: {s.get('status')} "
                   f"({s.get('duration_ms')} ms, {s.get('attempts')} attempt(s)){extra}")
        if s.get("error"):
            click.echo(f"    error: {s['error']}")
        for b in s.get("branches", []):
            click.echo(f"    branch {b['name']}: {b.get('result') or b.get('status') or b.get('metrics')}")
    for st in rec.get("streams", []):
        click.echo(f"  stream {st['id']} {st['from']} -> {', '.join(st.get('readers', []))}: "
                   f"{st.get('bytes_transferred')} bytes")
    if rec.get("metrics"):
        click.echo("  metrics: " + json.dumps(rec["metrics"], default=str))
    if rec.get("error"):
        click.echo(f"  error: {rec['error']}")
    return 0

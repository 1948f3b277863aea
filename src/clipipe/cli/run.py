"""`clipipe run`: a pipeline file or an ad-hoc command, locally or on contexts."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from clipipe.cli.params import describe_params, split_param_args
from clipipe.engine.operation import (RunOptions, TargetPool, build_record, execute, open_store,
                                      prepare)
from clipipe.engine.output import Console
from clipipe.engine.record import new_op_id
from clipipe.errors import ClipipeError, SpecError, UserError
from clipipe.spec import parse

EXIT_FAILED = 1

RUN_HELP = """Run PIPELINE (a YAML file) or an ad-hoc shell COMMAND.

\b
Params of the pipeline are options: clipipe run backup.yaml --source=/srv --level 3
`clipipe run FILE --help` lists a pipeline's params.

\b
Examples:
  clipipe run examples/backup.yaml
  clipipe run "df -h"
  clipipe run -c prod-server "uptime"
  clipipe run pipeline.yaml --dry-run

Exit status: 0 when every step succeeded, 1 when a step failed, 2 for bad input,
3 when a target could not be reached, 130 when interrupted.
"""


def is_pipeline_file(arg: str) -> bool:
    """A path to an existing file, or anything ending in .yaml/.yml, is a pipeline file."""
    return arg.endswith((".yaml", ".yml")) or (os.path.sep in arg and Path(arg).is_file()) or Path(arg).is_file()


@click.command(help=RUN_HELP, add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("target_arg", metavar="PIPELINE|COMMAND", required=False)
@click.option("-c", "--context", "context", metavar="CONTEXT", help="Context to run on (default: the "
              "contexts.yaml default, else local).")
@click.option("-j", "--jobs", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="How many steps may run at once.")
@click.option("-q", "--quiet", is_flag=True, help="No status lines and no progress; only the steps' output.")
@click.option("--progress", type=click.Choice(["auto", "tty", "plain", "quiet"]), default="auto",
              show_default=True, help="Live progress of streams: a pv-style line on a TTY, periodic lines otherwise.")
@click.option("--dry-run", is_flag=True, help="Show what would run where, and run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the operation record as JSON on stdout "
              "(steps' output goes to stderr).")
@click.option("-h", "--help", "show_help", is_flag=True, help="Show this message (with a PIPELINE: its params).")
@click.pass_context
def run(ctx: click.Context, target_arg: str | None, context: str | None, jobs: int, quiet: bool,
        progress: str, dry_run: bool, as_json: bool, show_help: bool) -> int:
    """Run a pipeline file or an ad-hoc command."""
    root = ctx.find_root().obj or {}
    extra = list(ctx.args)
    if target_arg is None:
        click.echo(ctx.get_help())
        return 0 if show_help else 2
    opts = RunOptions(context=context, contexts_path=root.get("contexts_path"), jobs=jobs, quiet=quiet,
                      progress="quiet" if quiet else progress, dry_run=dry_run)
    if is_pipeline_file(target_arg):
        doc, pipeline = parse.load_pipeline(target_arg)
        if pipeline is None:
            if show_help:
                click.echo(ctx.get_help())
                return 0
            return _run_records(doc, target_arg, extra, opts, as_json)
        if show_help:
            click.echo(describe_params(pipeline))
            return 0
        given = split_param_args(extra, pipeline)
    else:
        if show_help:
            click.echo(ctx.get_help())
            return 0
        if extra:
            raise UserError(f"unexpected arguments after the command: {' '.join(extra)} "
                            "(quote the whole command: clipipe run \"ls -l /tmp\")")
        pipeline = parse.adhoc_pipeline(target_arg)
        given = {}
    return _run_commands(pipeline, given, opts, as_json)


def _run_commands(pipeline: Any, given: dict[str, Any], opts: RunOptions, as_json: bool) -> int:
    pool = TargetPool(opts.contexts_path)
    prep = prepare(pipeline, given, pool, opts.context)
    if opts.dry_run:
        _dry_run(prep)
        return 0
    console = Console(out=sys.stderr if as_json else sys.stdout, err=sys.stderr, scrub=prep.scrub)
    adhoc = pipeline.path == "<command line>"
    if not opts.quiet and not adhoc:
        console.note(f"Operation ID: {prep.op_id}")
        title = pipeline.name + (f" v{pipeline.version}" if pipeline.version else "")
        console.note(f"Pipeline: {title} ({len(pipeline.steps)} steps)")
    for w in prep.plan.warnings:
        console.note(f"warning: {w}")
    progress = _progress(opts)
    store = open_store()
    started = time.time()
    result = None
    status = "failed"
    error = None
    try:
        if progress is not None:
            progress.start()
        try:
            result = asyncio.run(execute(prep, pool, console, opts, progress))
        finally:
            if progress is not None:
                progress.stop()
        status = result.status
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    except ClipipeError as exc:
        error = str(exc)
        raise
    finally:
        record = build_record(prep, result, pool, started, time.time(), status, error)
        store.save_op(record)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
    elif not opts.quiet:
        _summary(record, console, adhoc)
    if status == "cancelled":
        return 130
    if status != "ok":
        return _exit_for(result)
    return 0


def _exit_for(result: Any) -> int:
    """1 for a failed step; 3 when the failure was an unreachable target."""
    if result is not None:
        for name in result.failed:
            err = result.steps[name].error or ""
            if result.steps[name].exit_code is None and result.steps[name].signal is None and err:
                return 3
    return EXIT_FAILED


def _progress(opts: RunOptions) -> Any:
    if opts.progress == "quiet":
        return None
    try:
        from clipipe.progress import ProgressDisplay
    except ImportError:
        return None
    return ProgressDisplay(mode=opts.progress)


def _fmt_duration(ms_: int | None) -> str:
    if ms_ is None:
        return "-"
    s = ms_ / 1000
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


def _summary(record: dict[str, Any], console: Console, adhoc: bool) -> None:
    """Status per step, checksums and sizes, the verdict."""
    from clipipe.engine.output import Console as _C  # noqa: F401 - keeps the import local and cheap

    marks = {"ok": "✓", "failed": "✗", "skipped": "-", "cancelled": "⊘", "pending": "-", "running": "?"}
    if adhoc:  # the runner already said what failed; the output is the command's own
        return
    for s in record["steps"]:
        extra = ""
        if s.get("ignored"):
            extra = f" — {s.get('error')} (ignored: on_error continue)"
        elif s.get("status") == "failed" and s.get("error"):
            extra = f" — {s['error']}"
        if s.get("retries"):
            extra += f" after {s['retries']} retr{'y' if s['retries'] == 1 else 'ies'}"
        console.note(f"{marks.get(s['status'], '?')} {s['name']} [{s['context']}] "
                     f"{s['status']} ({_fmt_duration(s.get('duration_ms'))}){extra}")
        for b in s.get("branches", []):
            if b.get("result"):
                console.note(f"    ✓ {b['name']}: {b.get('algorithm', '')} {b['result']}")
    try:
        from clipipe.progress import format_bytes, format_rate
    except ImportError:  # the display module is optional at this layer
        format_bytes = format_rate = str  # type: ignore[assignment]

    for st in record["streams"]:
        if st.get("bytes_transferred") is None:
            console.note(f"  stream {st['from']} → {', '.join(st['readers'])}: on {st.get('context')} (remote pipe)")
            continue
        line = (f"  stream {st['from']} → {', '.join(st['readers'])}: {format_bytes(st['bytes_transferred'])}"
                f" in {_fmt_duration(st.get('duration_ms'))}")
        if st.get("average_speed"):
            line += f" ({format_rate(st['average_speed'])})"
        console.note(line)
    verdict = "Pipeline completed successfully" if record["status"] == "ok" else f"Pipeline {record['status']}"
    console.note(f"{verdict} in {_fmt_duration(record['duration_ms'])} (operation {record['id']})")


def _dry_run(prep: Any) -> None:
    """Print each step with its rendered command and context; variables stay as placeholders."""
    from clipipe.spec import templates

    values = dict(prep.values)
    for v in prep.plan.variables:
        values.setdefault(v, f"<{v}>")
    click.echo(f"Pipeline {prep.pipeline.name}: would run (operation {prep.op_id} not recorded)")
    for li, level in enumerate(prep.plan.levels, 1):
        for gid in level:
            for name in prep.plan.groups[gid].steps:
                s = prep.plan.steps[name]
                ctx = prep.plan.contexts[name]
                if s.command:
                    cmd = prep.scrub(templates.render(s.command, values, shell=True))
                    click.echo(f"[level {li}] {name} @{ctx}: {cmd}")
                for b in s.branches:
                    cmds = [b.command] if b.command else [x.command for x in b.steps if x.command]
                    shown = " | ".join(prep.scrub(templates.render(c, values, shell=True)) for c in cmds if c)
                    click.echo(f"[level {li}] {name}/{b.name} @{b.context or ctx}: {shown or b.kind}")


def _run_records(doc: Any, path: str, extra: list[str], opts: RunOptions, as_json: bool) -> int:
    """A record pipeline (`type: batch`, `source:`): params, then the records engine."""
    from clipipe import records
    from clipipe.spec import params as params_mod
    from clipipe.spec.parse import parse_param, unwrap

    node = unwrap(doc, path)
    pnode = node.get("params") or {}
    if not isinstance(pnode, dict):
        raise SpecError("'params' must be a mapping", mark=node.mark)
    from clipipe.spec.model import Pipeline

    shell = Pipeline(name=str(node.get("name") or Path(path).stem), steps=[],
                     params={str(k): parse_param(str(k), v, None) for k, v in pnode.items()}, path=path)
    op_id = new_op_id()
    given = split_param_args(extra, shell)
    values = params_mod.resolve(shell, given, params_mod.builtins(shell.name, op_id))
    pipeline = records.load(doc, path=path, params=values)
    store = open_store()
    started = time.time()
    status, metrics, error = "failed", {}, None
    if not opts.quiet:
        click.echo(f"Operation ID: {op_id}", err=True)
    try:
        metrics = asyncio.run(pipeline.run(store=store, op_id=op_id, stdout=sys.stderr if as_json else sys.stdout,
                                           stderr=sys.stderr, quiet=opts.quiet))
        status = "ok"
    except ClipipeError as exc:
        error = str(exc)
        raise
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    finally:
        from clipipe.engine.record import iso, ms

        ended = time.time()
        record = {"id": op_id, "type": "records", "pipeline": pipeline.name, "file": path, "status": status,
                  "started": iso(started), "ended": iso(ended), "started_ts": started,
                  "duration_ms": ms(ended - started), "params": params_mod.masked(shell, values),
                  "metrics": metrics}
        if error:
            record["error"] = error
        store.save_op(record)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
    return 0

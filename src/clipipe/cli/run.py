"""`clipipe run`: a pipeline file or an ad-hoc command, locally or on contexts."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import click

from clipipe.cli.params import describe_params, split_param_args
from clipipe.engine.operation import (RunOptions, TargetPool, build_record, execute, open_store,
                                      prepare)
from clipipe.engine.fleet import DEFAULT_FORKS, OUTPUT_MODES, make_pool
from clipipe.engine.output import Console
from clipipe.engine.record import new_op_id
from clipipe.errors import ClipipeError, SpecError, UserError
from clipipe.spec import parse
from clipipe.targets.selection import select

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


Fleets: when -c selects several contexts, the run goes to all of them,
--forks at a time, each output line shown as `host | line` (--output):
  clipipe run -c webservers "uptime"
  clipipe run -c 'web-*,!web-3' --forks 50 pipeline.yaml
  clipipe run -c all --inventory hosts.ini --limit db "df -h /"
-c takes a context, a group, a glob, a comma list or `all`; `!X` excludes.


Exit status: 0 when every step succeeded (on every host), 1 when a step failed
(on some host), 2 for bad input, 3 when a target could not be reached (in a
fleet: some host unreachable, none failed), 4 in a fleet when some hosts failed
and others were unreachable, 130 when interrupted.
"""


def is_pipeline_file(arg: str) -> bool:
    """A path to an existing file, or anything ending in .yaml/.yml, is a pipeline file."""
    return arg.endswith((".yaml", ".yml")) or (os.path.sep in arg and Path(arg).is_file()) or Path(arg).is_file()


@click.command(help=RUN_HELP, add_help_option=False,
               context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("target_arg", metavar="PIPELINE|COMMAND", required=False)
@click.option("-c", "--context", "context", metavar="TARGETS", help="Context(s) to run on: a context, a "
              "group, a glob, a comma list, `all`; `!X` excludes (default: the contexts.yaml default, else "
              "local). Several make a fleet run.")
@click.option("--limit", metavar="TARGETS", help="Only the contexts -c selects that this also selects.")
@click.option("-i", "--inventory", "inventories", metavar="FILE", multiple=True,
              help="Ansible inventory (INI or YAML) whose hosts and groups become contexts; repeatable.")
@click.option("-f", "--forks", type=click.IntRange(1, 4096), default=DEFAULT_FORKS, show_default=True,
              help="Fleet runs: how many hosts at once.")
@click.option("--output", "output_mode", type=click.Choice(list(OUTPUT_MODES)), default="prefix",
              show_default=True, help="Fleet runs: `host | line` live, each host's output as one block "
              "when it ends (identical outputs folded), or one JSON object per host at the end.")
@click.option("-j", "--jobs", type=click.IntRange(1, 1024), default=8, show_default=True,
              help="How many steps may run at once.")
@click.option("-q", "--quiet", is_flag=True, help="No status lines and no progress; only the steps' output.")
@click.option("--progress", type=click.Choice(["auto", "tty", "plain", "quiet"]), default="auto",
              show_default=True, help="Live progress of streams: a pv-style line on a TTY, periodic lines otherwise.")
@click.option("--dry-run", is_flag=True, help="Show what would run where, and run nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the operation record as JSON on stdout "
              "(steps' output goes to stderr).")
@click.option("--rerun-failed", is_flag=True, help="Run again only what did not succeed last time: "
              "after a fleet run, the hosts that failed, were unreachable or were interrupted (within "
              "-c/--limit when given); after a one-context pipeline run, the steps that did not end ok "
              "and what depends on them (the others' captured variables are reused).")
@click.option("-h", "--help", "show_help", is_flag=True, help="Show this message (with a PIPELINE: its params).")
@click.pass_context
def run(ctx: click.Context, target_arg: str | None, context: str | None, limit: str | None,
        inventories: tuple[str, ...], forks: int, output_mode: str, jobs: int, quiet: bool,
        progress: str, dry_run: bool, as_json: bool, rerun_failed: bool, show_help: bool) -> int:
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
    pool = make_pool(opts.contexts_path, inventories)
    rerun_of = None
    earlier = None
    if rerun_failed and pipeline.path != "<command line>":
        from clipipe.engine import rerun

        earlier = rerun.previous_run(open_store(), pipeline.path)
    if earlier is not None and earlier.get("type") != "fleet":    # the failed steps of one run
        if context is not None and len(select(pool.contexts(), context, limit)) > 1:
            raise UserError(f"--rerun-failed: the last run of this pipeline ({earlier['id']}) was not a "
                            "fleet run; drop -c, or name one context")
        opts.context = context or earlier.get("context")
        return _run_commands(pipeline, given, opts, as_json, pool, rerun_of=earlier)
    if rerun_failed:
        hosts, rerun_of = _hosts_to_rerun(pipeline, pool, context, limit, quiet or as_json, earlier)
        if not hosts:
            return 0
    elif context is not None or limit is not None:
        hosts = select(pool.contexts(), context or "all", limit)
    else:
        return _run_commands(pipeline, given, opts, as_json, pool)
    if len(hosts) > 1 or rerun_of is not None:
        fopts = FleetOptions(hosts, context or "all", limit, forks, output_mode, rerun_of)
        return _run_fleet(pipeline, given, pool, opts, fopts, as_json)
    opts.context = hosts[0]
    return _run_commands(pipeline, given, opts, as_json, pool)


def _fleet_progress(opts: RunOptions, as_json: bool) -> str:
    """tty (a live status line), plain (a status line now and then) or quiet, from --progress/-q."""
    if opts.quiet or opts.progress == "quiet":
        return "quiet"
    if opts.progress in ("tty", "plain"):
        return opts.progress
    return "tty" if sys.stderr.isatty() else ("quiet" if as_json else "plain")


def _hosts_to_rerun(pipeline: Any, pool: TargetPool, context: str | None, limit: str | None,
                    silent: bool, rec: dict[str, Any] | None = None) -> tuple[list[str], str | None]:
    """--rerun-failed: the hosts to run again and the id of the run they failed in ([] = nothing).

    `rec` is the earlier fleet record when the caller found it already (a pipeline file's run).
    """
    from clipipe.engine import rerun

    adhoc = pipeline.path == "<command line>"
    what = "command" if adhoc else "pipeline"
    if rec is None and adhoc:
        rec = rerun.previous_fleet(open_store(), command=pipeline.steps[0].command)
    if rec is None:
        raise UserError(f"--rerun-failed: no earlier fleet run of this {what} in the operation records",
                        hint="run it on a fleet first (clipipe run -c GROUP ...); see `clipipe ops list`")
    again = rerun.hosts_to_rerun(rec)
    known = set(pool.contexts().names()) if pool.contexts() else set()
    if context is not None or limit is not None:
        chosen = set(select(pool.contexts(), context or "all", limit))
        again = [h for h in again if h in chosen]
    gone = [h for h in again if h not in known]
    if gone:
        raise UserError(f"--rerun-failed: {', '.join(gone)} from run {rec['id']} no longer exist in the "
                        "contexts (contexts.yaml or --inventory)")
    if not silent:
        if again:
            click.echo(f"Rerunning {len(again)} host(s) that did not succeed in {rec['id']}: "
                       f"{', '.join(again)}", err=True)
        else:
            click.echo(f"Nothing to rerun: every selected host of {rec['id']} ended ok", err=True)
    return again, rec["id"]


def _run_commands(pipeline: Any, given: dict[str, Any], opts: RunOptions, as_json: bool,
                  pool: TargetPool | None = None, rerun_of: dict[str, Any] | None = None) -> int:
    pool = pool or TargetPool(opts.contexts_path)
    prep = prepare(pipeline, given, pool, opts.context)
    reuse = None
    if rerun_of is not None:
        from clipipe.engine import rerun

        done, variables = rerun.steps_to_reuse(rerun_of, prep.plan)
        again = [n for n in prep.plan.steps if n not in done]
        if not again:
            if not opts.quiet:
                click.echo(f"Nothing to rerun: every step of {rerun_of['id']} ended ok", err=True)
            return 0
        if not opts.quiet and not as_json:
            click.echo(f"Rerunning {len(again)} step(s) that did not succeed in {rerun_of['id']} (or "
                       f"depend on them): {', '.join(again)}", err=True)
        reuse = (done, variables, str(rerun_of["id"]))
    if opts.dry_run:
        _dry_run(prep, pool)
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
            result = asyncio.run(execute(prep, pool, console, opts, progress, reuse))
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
        record["context"] = opts.context
        if rerun_of is not None:
            record["rerun_of"] = rerun_of["id"]
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
        if any(result.steps[name].unreachable for name in result.failed):
            return 3
    return EXIT_FAILED


def _progress(opts: RunOptions) -> Any:
    if opts.progress == "quiet":
        return None
    try:
        from clipipe.progress import Mode, ProgressDisplay
    except ImportError:
        return None
    return ProgressDisplay(mode=cast("Mode", opts.progress))  # a --progress choice; checked there too


def _fmt_duration(ms_: int | None) -> str:
    if ms_ is None:
        return "-"
    s = ms_ / 1000
    return f"{s:.1f}s" if s < 60 else f"{int(s // 60)}m{int(s % 60):02d}s"


_COMPRESSORS = ("gzip", "pigz", "zstd", "xz", "bzip2", "pbzip2", "lz4", "brotli", "lzop")


def _is_compressor(command: str) -> bool:
    """True if a command starts with a compressor (and is not decompressing)."""
    words = command.split()
    return bool(words) and words[0].rsplit("/", 1)[-1] in _COMPRESSORS and "-d" not in words[1:]


def _fmt_bytes(n: int) -> str:
    from clipipe.progress import format_bytes

    return format_bytes(n)


def _summary(record: dict[str, Any], console: Console, adhoc: bool) -> None:
    """Status per step, checksums and sizes, the verdict."""
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
            if b.get("ratio") is not None and _is_compressor(b.get("stage") or ""):
                console.note(f"    ✓ {b['name']}: {_fmt_bytes(b['bytes_in'])} compressed to "
                             f"{_fmt_bytes(b['bytes_out'])} ({100 * (1 - b['ratio']):.0f}% reduction)")
    from clipipe.progress import format_bytes, format_rate

    for st in record["streams"]:
        if st.get("bytes_transferred") is None:
            console.note(f"  stream {st['from']} → {', '.join(st['readers'])}: on {st.get('context')} (remote pipe)")
            continue
        line = (f"  stream {st['from']} → {', '.join(st['readers'])}: {format_bytes(st['bytes_transferred'])}"
                f" in {_fmt_duration(st.get('duration_ms'))}")
        if st.get("average_speed"):
            line += f" ({format_rate(st['average_speed'])})"
        if st.get("placement") == "remote" and st.get("wire"):
            line += f", tee on {st.get('context')} ({format_bytes(st['wire']['bytes_out'])} back over the wire)"
        console.note(line)
    verdict = "Pipeline completed successfully" if record["status"] == "ok" else f"Pipeline {record['status']}"
    console.note(f"{verdict} in {_fmt_duration(record['duration_ms'])} (operation {record['id']})")


def _tee_placement(prep: Any, name: str, remote: set[str]) -> str:
    """Where a tee would run: on its host's agent (when the host runs one), or on the controller, why."""
    from clipipe.engine import remote_tee
    from clipipe.engine.runner import Runner

    ctx = prep.plan.contexts[name]
    if ctx not in remote:
        return "in the controller's stream core (a local tee)"
    runner = Runner(prep.plan, prep.values, None, Console(), remote_contexts=remote)  # type: ignore[arg-type]
    why = remote_tee._blocker(runner, prep.plan.steps[name])
    if why is not None:
        return f"in the controller's stream core: {why}"
    return f"on {ctx} by its agent, when {ctx} runs one (else in the controller's stream core)"


def _dry_run(prep: Any, pool: TargetPool | None = None) -> None:
    """Print each step with its rendered command and context; variables stay as placeholders."""
    from clipipe.spec import templates

    remote = pool.remote_names(set(prep.plan.contexts.values())) if pool is not None else set()

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
                if s.type == "tee":
                    click.echo(f"[level {li}] {name} (tee) @{ctx}: {_tee_placement(prep, name, remote)}")
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
    pipeline.ctx.extra["contexts_path"] = opts.contexts_path  # for sources that run on a context
    store = open_store()
    started = time.time()
    status, metrics, error = "failed", {}, None
    if not opts.quiet:
        click.echo(f"Operation ID: {op_id}", err=True)
    try:
        metrics = asyncio.run(pipeline.run(store=store, op_id=op_id, stdout=sys.stderr if as_json else sys.stdout,
                                           stderr=sys.stderr, quiet=opts.quiet))
        status = metrics.get("status", "ok")  # realtime: "cancelled" after SIGINT, "stopped" after SIGTERM
    except ClipipeError as exc:
        error = str(exc)
        raise
    except KeyboardInterrupt:
        status = "cancelled"
        raise
    finally:
        from clipipe.engine.record import iso, ms

        ended = time.time()
        metrics = metrics or getattr(pipeline, "metrics", None) or {}  # a failed run's figures too
        record = {"id": op_id, "type": "records", "pipeline": pipeline.name, "file": path, "status": status,
                  "started": iso(started), "ended": iso(ended), "started_ts": started,
                  "duration_ms": ms(ended - started), "params": params_mod.masked(shell, values),
                  "metrics": metrics}
        if error:
            record["error"] = error
        store.save_op(record)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
    return 130 if status == "cancelled" else 0


@dataclass
class FleetOptions:
    """What the fleet-only options said."""

    hosts: list[str]
    selection: str
    limit: str | None
    forks: int
    output: str
    rerun_of: str | None = None        #: --rerun-failed: the run whose failed hosts these are


def _run_fleet(pipeline: Any, given: dict[str, Any], pool: TargetPool, opts: RunOptions,
               fopts: FleetOptions, as_json: bool) -> int:
    """The same pipeline or command on every selected host; a summary; the fleet exit status."""
    from clipipe.cli import fleetview
    from clipipe.engine.fleet import Fleet, FleetPool, exit_code, fleet_record

    if not isinstance(pool, FleetPool):
        pool = FleetPool(pool.contexts(), opts.contexts_path)
    adhoc = pipeline.path == "<command line>"
    console = Console(out=sys.stderr if as_json else sys.stdout, err=sys.stderr)
    fleet = Fleet(pipeline, given, fopts.hosts, pool, console, forks=fopts.forks, mode=fopts.output,
                  jobs=opts.jobs, adhoc=adhoc, progress=_fleet_progress(opts, as_json))
    console.scrub = fleet.prep.scrub
    if opts.dry_run:
        for line in fleetview.dry_run_lines(fopts.hosts, pipeline.steps[0].command if adhoc else None):
            click.echo(line)
        _dry_run(fleet.prep, pool)
        return 0
    if not opts.quiet and not as_json:
        what = f"command {pipeline.steps[0].command!r}" if adhoc else f"pipeline {pipeline.name}"
        console.note(f"Operation ID: {fleet.op_id}: {what} on {len(fopts.hosts)} hosts, "
                     f"forks {fopts.forks}")
    store = open_store()
    result = asyncio.run(fleet.run())
    record = fleet_record(fleet, result, fopts.selection, fopts.limit)
    if fopts.rerun_of:
        record["rerun_of"] = fopts.rerun_of
    store.save_op(record)
    if fopts.output == "json":
        fleetview.write_json_lines(result, sys.stderr if as_json else sys.stdout)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
    elif not opts.quiet:
        lines = fleetview.summary_lines(result, fleet.op_id)
        recap = fleetview.recap_lines(result)
        console.block([""] + lines + ([""] + recap if recap else []), err=True)
    return exit_code(result)

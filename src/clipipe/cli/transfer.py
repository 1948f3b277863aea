"""`clipipe transfer`: copy files and directories between contexts (verified, atomic, resumable)."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any, cast

import click

from clipipe.engine.operation import TargetPool, cancel_on_signals, open_store
from clipipe.engine.record import iso, ms, new_op_id
from clipipe.engine.transfer import Endpoint, Job, parse_endpoint, run_jobs
from clipipe.errors import UserError

HELP = """Copy SRC... to DST between contexts, with progress; verified and atomic.

\b
Endpoints are [CONTEXT:]PATH (a bare path is this machine), and for a
Kubernetes context CONTEXT:POD:PATH:
  clipipe transfer ./backup.tar.gz prod-server:/backups/
  clipipe transfer prod-server:/etc/nginx/ local:./nginx-conf/
  clipipe transfer k8s-prod:nginx-pod:/var/log/nginx/ ./logs/
  clipipe transfer a.tar b.tar c.tar backup-server:/srv/in/ -j 3

\b
DST/NAME is written when DST is a directory or ends with `/` (created then).
Each file arrives as DST.clipipe-part and is renamed into place only when the
sha256 of what was written equals the source's; an interrupted transfer is
resumed from its verified part file the next time (--no-resume: start over).
Directories travel as one tar stream and are verified file by file.

\b
Exit status: 0 all copied, 1 a copy failed, 2 bad arguments, 3 a context
could not be reached, 130 interrupted.
"""


@click.command("transfer", help=HELP)
@click.argument("paths", nargs=-1, required=True, metavar="SRC... DST")
@click.option("-j", "--parallel", type=click.IntRange(1, 64), default=4, show_default=True,
              help="How many sources are copied at once.")
@click.option("--no-resume", is_flag=True, help="Ignore a part file left by an interrupted transfer.")
@click.option("--force", is_flag=True, help="Replace an existing destination directory (files are always "
              "replaced, atomically).")
@click.option("-q", "--quiet", is_flag=True, help="No progress and no summary.")
@click.option("--progress", type=click.Choice(["auto", "tty", "plain", "quiet"]), default="auto",
              show_default=True, help="Live progress: a pv-style line per transfer on a TTY, periodic lines otherwise.")
@click.option("--json", "as_json", is_flag=True, help="Print the operation record as JSON.")
@click.pass_context
def transfer(ctx: click.Context, paths: tuple[str, ...], parallel: int, no_resume: bool, force: bool,
             quiet: bool, progress: str, as_json: bool) -> int:
    """Copy files and directories between contexts."""
    if len(paths) < 2:
        raise UserError("transfer needs a source and a destination: clipipe transfer SRC... DST")
    root = ctx.find_root().obj or {}
    pool = TargetPool(root.get("contexts_path"))
    contexts = pool.contexts()
    *sources, dest = paths
    dst = parse_endpoint(dest, contexts)
    if len(sources) > 1 and not dst.path.endswith("/"):
        raise UserError(f"several sources go into a directory: end {dest!r} with `/`")
    jobs = [Job(parse_endpoint(s, contexts), dst) for s in sources]
    op_id = new_op_id()
    display = None if quiet or progress == "quiet" else _display(progress)
    if not quiet and not as_json:
        where = sorted({j.src.context for j in jobs})
        click.echo(f"Operation ID: {op_id}: transfer {', '.join(where)} → {dst.context}", err=True)
    if display is not None:
        for j in jobs:
            display.add(j.src.path.rstrip("/").rsplit("/", 1)[-1] or j.src.path, j.counter)
        display.start()
    started = time.time()
    status = "failed"
    try:
        asyncio.run(_run(jobs, pool, parallel, not no_resume, force))
        status = "ok" if all(j.status == "ok" for j in jobs) else "failed"
    except KeyboardInterrupt:
        status = "cancelled"
    finally:
        if display is not None:
            display.stop()
        record = _record(op_id, jobs, pool, started, status)
        open_store().save_op(record)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
    elif not quiet:
        for line in summary_lines(jobs):
            click.echo(line, err=True)
    if status == "cancelled":
        return 130
    if any(j.status == "unreachable" for j in jobs) and not any(j.status == "failed" for j in jobs):
        return 3
    return 0 if status == "ok" else 1


async def _run(jobs: list[Job], pool: TargetPool, parallel: int, resume: bool, force: bool) -> None:
    contexts = pool.contexts()

    async def target_of(ep: Endpoint) -> Any:
        name = ep.context if ep.pod is None else contexts.variant(ep.context, ep.pod, pod=ep.pod)
        return await pool.get(name)

    work = asyncio.ensure_future(run_jobs(jobs, target_of, parallel=parallel, resume=resume, force=force))
    try:
        with cancel_on_signals(work):
            await work
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        await pool.close()


def _display(mode: str) -> Any:
    from clipipe.progress import Mode, ProgressDisplay
    return ProgressDisplay(mode=cast("Mode", mode))


def _record(op_id: str, jobs: list[Job], pool: TargetPool, started: float, status: str) -> dict[str, Any]:
    from clipipe import __version__

    ended = time.time()
    return {"id": op_id, "type": "transfer", "clipipe": __version__, "pipeline": "transfer",
            "status": status, "started": iso(started), "ended": iso(ended), "started_ts": started,
            "duration_ms": ms(ended - started), "transfers": [j.to_json() for j in jobs],
            "bytes": sum(j.bytes for j in jobs),
            "contexts_used": [{"name": n, **info} for n, info in pool.used.items()]}


def summary_lines(jobs: list[Job]) -> list[str]:
    """One line per transfer: ✓ what → where, size, time, rate, digest (or why it failed)."""
    from clipipe.progress import format_bytes, format_rate

    out = []
    for j in jobs:
        to = Endpoint(j.dst.context, j.final or j.dst.path, j.dst.pod).label
        if j.status != "ok":
            out.append(f"✗ {j.src.label} → {to}: {j.error or j.status}")
            continue
        took = max(j.ended - j.started, 1e-6)
        what = f"{j.files} files, " if j.kind == "dir" else ""
        resumed = f", resumed at {format_bytes(j.resumed_from)}" if j.resumed_from else ""
        out.append(f"✓ {j.src.label} → {to}: {what}{format_bytes(j.bytes)} in {took:.1f}s "
                   f"({format_rate(j.bytes / took)}){resumed}, sha256 {(j.sha256 or '')[:16]}")
    return out


if __name__ == "__main__":  # pragma: no cover
    sys.exit(transfer())

"""Rendering of a fleet run's end: the summary table, the recap of identical outputs, JSON lines."""
from __future__ import annotations

import json
from typing import IO

from clipipe.engine.fleet import FleetResult, compress_hosts, host_json, output_groups

#: Output lines of a group's example shown in the recap.
RECAP_LINES = 3


def _secs(seconds: float) -> str:
    return f"{seconds:.2f}s" if seconds < 60 else f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def summary_lines(result: FleetResult, op_id: str) -> list[str]:
    """The per-host table (host, status, exit code, duration, reason) and the verdict."""
    width = max([len("HOST")] + [len(h.host) for h in result.hosts])
    out = [f"{'HOST':<{width}}  {'STATUS':<11}  {'EXIT':>4}  {'DURATION':>8}  REASON"]
    for h in result.hosts:
        code = "-" if h.exit_code is None else str(h.exit_code)
        if h.signal:
            code = f"sig{h.signal}"
        reason = h.reason or ""
        if h.reason_kind and h.status == "unreachable":
            reason = f"{h.reason_kind}: {reason}"
        out.append(f"{h.host:<{width}}  {h.status:<11}  {code:>4}  {_secs(h.duration):>8}  {reason}".rstrip())
    c = result.counts()
    parts = [f"{c[k]} {k}" for k in ("ok", "failed", "unreachable", "cancelled") if c.get(k)]
    out.append(f"{len(result.hosts)} hosts: {', '.join(parts)} in {_secs(result.ended - result.started)} "
               f"(forks {result.forks}, operation {op_id})")
    return out


def recap_lines(result: FleetResult) -> list[str]:
    """Hosts grouped by identical output (dshbak -c style), with the start of each output."""
    groups = output_groups(result)
    if not groups:
        return []
    out = [f"Recap: {len(groups)} distinct output{'s' if len(groups) != 1 else ''}"]
    for names, example in groups:
        lines = example.output.lines if example.output else []
        n = len(lines)
        label = f"{compress_hosts(names)} ({len(names)} host{'s' if len(names) != 1 else ''})"
        if not lines:
            out.append(f"  {label}: no output")
            continue
        out.append(f"  {label}: {n} line{'s' if n != 1 else ''}")
        for _err, text in lines[:RECAP_LINES]:
            out.append(f"    {text}")
        if n > RECAP_LINES:
            out.append("    ...")
    return out


def write_json_lines(result: FleetResult, stream: IO[str]) -> None:
    """--output=json: one JSON object per host, in selection order."""
    for h in result.hosts:
        stream.write(json.dumps(host_json(h)) + "\n")
    stream.flush()


def dry_run_lines(hosts: list[str], command: str | None) -> list[str]:
    """What a fleet dry run shows before the per-step plan."""
    what = f": {command}" if command else ""
    return [f"Fleet of {len(hosts)} contexts ({compress_hosts(hosts)}){what}"]


__all__ = ["dry_run_lines", "recap_lines", "summary_lines", "write_json_lines"]


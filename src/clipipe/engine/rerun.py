"""`--rerun-failed`: what did not end ok in the newest earlier run of the same work.

"The same work" is the same ad-hoc command (as recorded: secrets masked; fleet runs only) or the
same pipeline file (by absolute path); the newest match wins. After a fleet run the hosts that failed,
were unreachable or were cancelled run again; after a one-context run, the steps (`steps_to_reuse`).
"""
from __future__ import annotations

import os
from typing import Any

#: How many of the newest operation records are searched for the earlier run.
SCAN = 500

NOT_OK = ("failed", "unreachable", "cancelled")


def pipeline_key(path: str) -> str:
    """How a fleet record names its pipeline file, independent of the cwd it was run from."""
    return os.path.abspath(path)


def previous_fleet(store: Any, *, command: str) -> dict[str, Any] | None:
    """The newest fleet record of this ad-hoc command (a pipeline file's: `previous_run`), or None."""
    for rec in store.list_ops(SCAN):
        if rec.get("type") == "fleet" and rec.get("command") == command:
            return rec
    return None


def hosts_to_rerun(record: dict[str, Any]) -> list[str]:
    """The record's hosts that did not end ok, in the record's order."""
    return [h["host"] for h in record.get("hosts", []) if h.get("status") in NOT_OK]


# ------------------------------------------------------------------------------- steps of one run
def previous_run(store: Any, file: str) -> dict[str, Any] | None:
    """The newest record of this pipeline file: a fleet run or a single-context run."""
    key = pipeline_key(file)
    for rec in store.list_ops(SCAN):
        if rec.get("type") in ("fleet", "pipeline", "pipeline-stream") and rec.get("file_abs") == key:
            return rec
    return None


def steps_to_reuse(record: dict[str, Any], plan: Any) -> tuple[set[str], dict[str, str]]:
    """(steps whose earlier success stands, the variables they captured) for a rerun of `record`.

    A step is reused when it ended ok and nothing forces it again: a step that depends on one run
    again runs again, every step of a stream group runs again if one of them must (half a stream
    can't run), and a port-forward runs again for any step that runs again and depends on it (a
    forward ends with its run). A reused step's variables come
    from the record; one that was masked there (a secret) can't be restored, so its step runs again.
    """
    status = {s["name"]: s.get("status") for s in record.get("steps", [])}
    recorded = record.get("variables") or {}
    variables = getattr(plan, "variables", {})           # variable -> the step capturing it
    reuse = {n for n in plan.steps if status.get(n) == "ok"}
    for n, producer in variables.items():
        if producer in reuse and recorded.get(n) in (None, "***"):
            reuse.discard(producer)
    changed = True
    while changed:
        changed = False
        for g in plan.groups:                             # streams run whole or not at all
            if any(n not in reuse for n in g.steps) and any(n in reuse for n in g.steps):
                reuse -= set(g.steps)
                changed = True
        for e in plan.edges:
            if e.src not in reuse and e.dst in reuse:     # what depends on a step run again runs again
                reuse.discard(e.dst)
                changed = True
            elif (e.src in reuse and e.dst not in reuse   # forwards live only within a run
                    and plan.steps[e.src].type == "port-forward"):
                reuse.discard(e.src)
                changed = True
    kept = {n: v for n, v in recorded.items() if variables.get(n) in reuse}
    return reuse, kept

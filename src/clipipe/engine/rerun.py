"""`--rerun-failed`: the hosts that did not end ok in the newest earlier fleet run of the same work.

"The same work" is the same ad-hoc command (as recorded: secrets masked) or the same pipeline file
(by absolute path). Only operation records of fleet runs count; the newest match wins. A host counts
as not ok when it failed, was unreachable or was cancelled by an interrupt.
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


def previous_fleet(store: Any, *, command: str | None = None, file: str | None = None) -> dict[str, Any] | None:
    """The newest fleet record of this command or pipeline file, or None."""
    key = pipeline_key(file) if file else None
    for rec in store.list_ops(SCAN):
        if rec.get("type") != "fleet":
            continue
        if command is not None and rec.get("command") == command:
            return rec
        if key is not None and rec.get("file_abs") == key:
            return rec
    return None


def hosts_to_rerun(record: dict[str, Any]) -> list[str]:
    """The record's hosts that did not end ok, in the record's order."""
    return [h["host"] for h in record.get("hosts", []) if h.get("status") in NOT_OK]

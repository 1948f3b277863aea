"""Operation ids and records: what ran, where, how long, how many bytes, with secrets masked."""
from __future__ import annotations

import datetime as _dt
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable


def new_op_id(now: _dt.datetime | None = None) -> str:
    """An operation id like 2026-11-23-160234-ab12 (sortable, short, unique enough per second)."""
    now = now or _dt.datetime.now()
    return now.strftime("%Y-%m-%d-%H%M%S-") + secrets.token_hex(2)


def ms(seconds: float) -> int:
    """Seconds -> whole milliseconds."""
    return int(round(seconds * 1000))


def iso(ts: float | None) -> str | None:
    """A Unix time as local ISO-8601 with offset."""
    if not ts:
        return None
    return _dt.datetime.fromtimestamp(ts).astimezone().isoformat(timespec="milliseconds")


@dataclass
class StepRecord:
    """One step's fate."""

    name: str
    context: str
    command: str | None = None
    status: str = "pending"      #: pending, running, ok, failed, skipped, cancelled
    exit_code: int | None = None
    signal: int | None = None
    attempts: int = 0
    started: float = 0.0
    ended: float = 0.0
    error: str | None = None
    stderr_tail: list[str] = field(default_factory=list)
    ignored: bool = False        #: failed under on_error: continue
    unreachable: bool = False    #: its context could not be reached
    note: str | None = None      #: e.g. "stopped early by its reader (SIGPIPE)"
    branches: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self, scrub: Callable[[str], str]) -> dict[str, Any]:
        """The JSON form, with secrets scrubbed from the command and stderr."""
        d: dict[str, Any] = {
            "name": self.name, "context": self.context, "status": self.status,
            "command": scrub(self.command) if self.command else None,
            "exit_code": self.exit_code, "signal": self.signal, "attempts": self.attempts,
            "retries": max(0, self.attempts - 1),
            "started": iso(self.started), "ended": iso(self.ended),
            "duration_ms": ms(self.ended - self.started) if self.started and self.ended else None,
        }
        if self.error:
            d["error"] = scrub(self.error)
        if self.stderr_tail:
            d["stderr_tail"] = [scrub(x) for x in self.stderr_tail]
        if self.ignored:
            d["ignored"] = True
        if self.unreachable:
            d["unreachable"] = True
        if self.note:
            d["note"] = self.note
        if self.branches:
            d["branches"] = self.branches
        return d


def make_scrubber(secret_values: list[str]) -> Callable[[str], str]:
    """A function that replaces every secret value in a text by '***'."""
    values = sorted({v for v in secret_values if v}, key=len, reverse=True)
    if not values:
        return lambda s: s

    def scrub(text: str) -> str:
        for v in values:
            text = text.replace(v, "***")
        return text

    return scrub


def now() -> float:
    """The current Unix time (one place to read the clock)."""
    return time.time()

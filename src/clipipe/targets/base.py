"""The target contract: where a segment of piped steps runs (local machine, SSH host, Kubernetes pod).

The engine hands every target the same thing: a *segment* — one or more shell commands joined by pipes
on that target — plus real file descriptors of the controller for the segment's stdin, stdout and each
step's stderr. The target owns those fds from the call on and closes them when the segment ends.

- local: the fds go straight to the child processes (kernel pipes, Python off the byte path).
- ssh / kubernetes: an agent runs the segment on the remote host joined by the remote kernel's pipes;
  only the segment's first stdin, last stdout and the stderrs cross the wire (agent frames, or an
  OpenSSH mux channel for bulk bytes).

Settings of a target type are a dataclass whose fields carry `metadata={"description": ...}`; the
registry maps `type:` names in contexts.yaml to (settings class, target class).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable


@dataclass
class ProcSpec:
    """One step's process inside a segment."""

    name: str
    command: str                       #: a shell command line, already templated and quoted
    env: dict[str, str] = field(default_factory=dict)  #: extra environment on top of the target's
    cwd: str | None = None


@dataclass
class ProcOutcome:
    """How one process of a segment ended."""

    name: str
    exit_code: int | None = None       #: None when killed by a signal or never started
    signal: int | None = None
    error: str | None = None           #: why it could not be started, if it could not
    started: float = 0.0               #: time.time() at start
    ended: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the process exited with status 0."""
        return self.exit_code == 0 and self.error is None

    @property
    def duration(self) -> float:
        """Seconds the process ran."""
        return max(0.0, self.ended - self.started)


@dataclass
class SegmentIO:
    """The controller-side fds of a segment. The target takes ownership and closes each one."""

    stdin: int | None                  #: fd the first process reads; None = /dev/null
    stdout: int | None                 #: fd the last process writes; None = discard
    stderr: list[int | None]           #: one fd per process (None = discard)
    bulk: bool | None = None           #: the engine's hint: a stream worth a bulk data plane (None = guess)

    def close(self) -> None:
        """Close every fd (a target that can't run the segment still owns them)."""
        for fd in (self.stdin, self.stdout, *self.stderr):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass


@dataclass
class StreamStats:
    """What a target measured of bytes crossing its boundary (for the operation record)."""

    bytes_in: int = 0
    bytes_out: int = 0
    path: str = "local"                #: "local" (kernel pipe), "agent" (frames) or "openssh-mux" ...


def tally(totals: dict[str, dict[str, int]], stats: StreamStats) -> None:
    """Add one segment's figures to per-path totals (segments, bytes_in, bytes_out) for describe()."""
    tot = totals.setdefault(stats.path, {"segments": 0, "bytes_in": 0, "bytes_out": 0})
    tot["segments"] += 1
    tot["bytes_in"] += stats.bytes_in
    tot["bytes_out"] += stats.bytes_out


@runtime_checkable
class Target(Protocol):
    """A place where segments run. One instance per context per run, reused by every step."""

    name: str
    kind: str

    async def open(self) -> None:
        """Connect (and boot the agent) if needed; idempotent; raises TargetError subclasses."""

    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Run the procs joined by pipes; return each one's outcome. Cancel kills them all."""

    async def close(self) -> None:
        """Release the connection and everything started on the target."""

    def describe(self) -> dict[str, Any]:
        """A JSON-able description for `context show` and the operation record."""


@dataclass
class ConnectInfo:
    """Measured facts about a target's connection, kept in the operation record."""

    connect_seconds: float = 0.0
    transport: str = "local"
    agent: dict[str, Any] = field(default_factory=dict)  #: the HELLO fields, when an agent runs
    fallback: str | None = None        #: why raw exec is used instead of the agent, if it is
    opened_at: float = field(default_factory=time.time)


TargetFactory = Callable[[str, Any], Target]

#: type name -> (settings dataclass, factory(name, settings) -> Target). Filled by each target module.
REGISTRY: dict[str, tuple[type, TargetFactory]] = {}


def register(kind: str, settings_cls: type) -> Callable[[TargetFactory], TargetFactory]:
    """Class decorator: make a target type available under `type: kind` in contexts.yaml."""

    def deco(factory: TargetFactory) -> TargetFactory:
        REGISTRY[kind] = (settings_cls, factory)
        return factory

    return deco

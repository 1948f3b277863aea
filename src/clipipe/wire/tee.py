"""Tee segments on the agent's host: what the controller asks for, what comes back, live progress.

A tee segment is one RUN_SEGMENT with a fan-out node (see the agent's docstring, "Tee segments"):
the producer chain's stdout is read once by the agent and written to every branch on that host,
hashed and counted there. Only PROGRESS, EXIT and the bytes that must leave the host cross the wire.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from clipipe._fastpipe_py import RateMeter, Snapshot


@dataclass
class TeeBranch:
    """One reader of the tee: a chain of the segment's procs on the host, or a channel off it."""

    procs: list[int] = field(default_factory=list)  #: indices into the segment's procs; [] = leaves the host
    fd: int | None = None           #: controller fd: the chain's last stdout, or the raw stream if it leaves
    on_exit: str = "fail"           #: "fail" or "drop" when this branch stops reading early
    count_links: bool = False       #: the agent relays (and counts) the bytes between the chain's procs

    @property
    def leaves(self) -> bool:
        """True when the branch runs elsewhere and the tee's bytes leave the host for it."""
        return not self.procs


@dataclass
class TeeSpec:
    """The fan-out node of a segment: procs[0..after] produce, branches read."""

    after: int
    branches: list[TeeBranch] = field(default_factory=list)
    checksums: list[str] = field(default_factory=list)
    progress: bool = True

    def request(self, channels: list[int | None]) -> dict[str, Any]:
        """The RUN_SEGMENT `tee` map, given one channel id (or None) per branch."""
        out: list[dict[str, Any]] = []
        for b, ch in zip(self.branches, channels):
            entry: dict[str, Any] = {"on_exit": b.on_exit}
            if b.leaves:
                entry["channel"] = ch
            else:
                entry.update(procs=list(b.procs), stdout=ch, count=b.count_links)
            out.append(entry)
        return {"after": self.after, "branches": out, "checksums": list(self.checksums),
                "progress": self.progress}


@dataclass
class TeeBranchResult:
    """How one branch fared, by the agent's count and ours."""

    status: str = "ok"              #: ok, dropped or failed
    error: str | None = None        #: e.g. "EPIPE" when the branch stopped reading
    bytes: int = 0                  #: stream bytes this branch took
    links: list[int] = field(default_factory=list)  #: bytes between its procs (counted branches)
    wire_bytes: int = 0             #: bytes that reached the controller for it


@dataclass
class TeeResult:
    """The tee's figures from EXIT: bytes read, digests, and each branch's fate."""

    bytes: int = 0
    digests: dict[str, str] = field(default_factory=dict)
    duration: float = 0.0
    failed: int | None = None       #: index of the branch whose `fail` policy stopped the segment
    branches: list[TeeBranchResult] = field(default_factory=list)

    @classmethod
    def from_exit(cls, tee: Any, wire: list[int]) -> TeeResult:
        """Parse EXIT's tee map (tolerating a malformed one: it is the remote's word)."""
        tee = tee if isinstance(tee, dict) else {}
        branches = []
        raw = tee.get("branches")
        for i, b in enumerate(raw if isinstance(raw, list) else []):
            b = b if isinstance(b, dict) else {}
            links = b.get("links")
            links = links if isinstance(links, list) else []
            branches.append(TeeBranchResult(status=str(b.get("status") or "ok"), error=b.get("error"),
                                            bytes=int(b.get("bytes") or 0), links=[int(n) for n in links],
                                            wire_bytes=wire[i] if i < len(wire) else 0))
        failed = tee.get("failed")
        started, ended = float(tee.get("started") or 0.0), float(tee.get("ended") or 0.0)
        return cls(bytes=int(tee.get("bytes") or 0), digests=dict(tee.get("digests") or {}),
                   duration=max(0.0, ended - started), failed=failed if type(failed) is int else None,
                   branches=branches)


class RemoteCounter:
    """A `fastpipe.Counter` look-alike fed by PROGRESS frames, so the progress display can sample it."""

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self.done = False
        self._bytes = 0
        self._start: float | None = None
        self._end: float | None = None
        self._meter = RateMeter()

    @property
    def bytes(self) -> int:
        """Bytes the remote tee has read so far."""
        return self._bytes

    def add(self, n: int) -> None:
        """Count n more bytes."""
        self._bytes += n

    def update(self, nbytes: int) -> None:
        """A PROGRESS frame: the remote total so far (never goes back); sampled for the peak rate."""
        self.start()
        if nbytes > self._bytes:
            self._bytes = nbytes
            self.snapshot()

    def start(self) -> None:
        """Start the clock (at STARTED, or the first PROGRESS); idempotent."""
        if self._start is None:
            self._start = time.monotonic()

    def finish(self, nbytes: int | None = None, duration: float | None = None) -> None:
        """The segment ended: final bytes, and the agent's own duration when it measured one."""
        self.start()
        if nbytes is not None:
            self._bytes = nbytes
        self._end = time.monotonic()
        if duration is not None and duration > 0 and self._start is not None:
            self._start = self._end - duration
        self.done = True

    def snapshot(self) -> Snapshot:
        """Sample bytes, rates, ETA and percent now."""
        return self._meter.snapshot(self._bytes, self.total, self._start, self._end, self.done)

    def __repr__(self) -> str:
        return f"RemoteCounter(bytes={self._bytes}, total={self.total}, done={self.done})"

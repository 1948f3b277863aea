"""Wiring one stream group: pipes between steps, pumps for fan-out/tee, readers for shown output.

Every step's process gets real file descriptors. A stream from a producer to its readers passes through
one *pump* (the stream core, in a thread, GIL released): it counts bytes, computes checksums for tee
`checksum` branches, and copies to every reader (tee(2)/splice(2) where possible). Output that is
shown, captured into a variable or written to a file is read by the controller.
"""
from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from clipipe import fastpipe
from clipipe.engine.output import Capture, Console, LineRelay, Sink
from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO


def close_fd(fd: int | None) -> None:
    """Close an fd, ignoring one already closed."""
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _settle(fut: "asyncio.Future[Any]", result: Any, exc: BaseException | None) -> None:
    """Complete `fut` (on the loop's thread) unless it was cancelled meanwhile."""
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(result)


def run_in_thread(fn: Callable[[], Any]) -> "asyncio.Future[Any]":
    """Run a blocking call in a dedicated thread (pumps block on each other: no shared pool)."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def target() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(_settle, fut, None, exc)  # exc is passed now: the name dies here
        else:
            loop.call_soon_threadsafe(_settle, fut, result, None)

    threading.Thread(target=target, name="clipipe-pump", daemon=True).start()
    return fut


@dataclass
class Proc:
    """A process to start: which step (or branch step) it is, where, and its fds."""

    key: str                       #: "step" or "step/branch" or "step/branch/nested"
    context: str
    spec: ProcSpec
    stdin: int | None = None
    stdout: int | None = None
    stderr: int | None = None
    outcome: ProcOutcome | None = None
    downstream: list[str] = field(default_factory=list)  #: keys of processes reading its stdout
    feeds_pump: "Pump | Any | None" = None  #: the Pump (or remote_tee.RemoteTee) reading its stdout


@dataclass
class Pump:
    """One stream: a producer's stdout copied to its readers, counted and hashed."""

    id: str
    producer: str
    src: int
    sinks: list[int] = field(default_factory=list)
    sink_keys: list[str] = field(default_factory=list)   #: who reads each sink
    policies: list[str] = field(default_factory=list)
    checksums: list[str] = field(default_factory=list)
    counter: Any = None
    kind: str = "pipe"                                   #: "pipe", "fanout" or "tee"
    result: Any = None
    closed_sinks: bool = False

    def add_sink(self, key: str, policy: str = "fail") -> int:
        """A new pipe whose write end the pump feeds; returns the read end for the reader."""
        r, w = os.pipe()
        self.sinks.append(w)
        self.sink_keys.append(key)
        self.policies.append(policy)
        return r

    def run_blocking(self) -> Any:
        """Copy until EOF (in a worker thread)."""
        return fastpipe.pump(self.src, self.sinks, checksums=self.checksums, counter=self.counter,
                             policy=self.policies or "fail", close_sinks=False)

    def close_sinks(self) -> None:
        """Close every sink: EOF for the readers still reading."""
        if not self.closed_sinks:
            self.closed_sinks = True
            for fd in self.sinks:
                close_fd(fd)

    def close_src(self) -> None:
        """Close the read end: a producer still writing gets EPIPE/SIGPIPE."""
        close_fd(self.src)
        self.src = -1


@dataclass
class Wiring:
    """All processes, pumps and readers of one attempt at a group."""

    procs: list[Proc] = field(default_factory=list)
    pumps: list[Pump] = field(default_factory=list)
    readers: list[Any] = field(default_factory=list)     #: LineRelay / Capture / Sink
    relays: dict[str, LineRelay] = field(default_factory=dict)  #: stderr relay per proc key
    captures: dict[str, Capture] = field(default_factory=dict)  #: variable name -> capture
    sinks: list[Sink] = field(default_factory=list)
    loose_fds: list[int] = field(default_factory=list)
    segment_of: dict[str, str] = field(default_factory=dict)  #: proc key -> key of its segment's first proc
    remote_tees: dict[str, Any] = field(default_factory=dict)  #: segment key -> RemoteTee run in it

    def segments(self) -> list[list[Proc]]:
        """Procs grouped into segments (one target call each), in order."""
        by_first: dict[str, list[Proc]] = {}
        for p in self.procs:
            by_first.setdefault(self.segment_of.get(p.key, p.key), []).append(p)
        return list(by_first.values())

    def output_fd(self, key: str, output: str | None, console: Console, *, prefix: str | None,
                  direct: bool) -> int | None:
        """The stdout fd for a process whose output ends here (shown, variable, stderr or file)."""
        if output and output.startswith("variable:"):
            r, w = os.pipe()
            cap = Capture(r, output.split(":", 1)[1])
            self.captures[cap.name] = cap
            self.readers.append(cap)
            return w
        if output and output.startswith("file:"):
            r, w = os.pipe()
            sink = Sink(r, os.path.expanduser(output[5:].strip()))
            self.sinks.append(sink)
            self.readers.append(sink)
            return w
        if direct:  # the console's own stream (stderr under --json, so the record alone is on stdout)
            stream = console.err if output == "stderr" else console.out
            try:
                return os.dup(stream.fileno())
            except (AttributeError, OSError, ValueError):   # not a real file (tests): relay lines
                pass
        r, w = os.pipe()
        self.readers.append(LineRelay(r, console, prefix=prefix, err=output == "stderr"))
        return w

    def stderr_fd(self, key: str, console: Console, *, prefix: str | None) -> int:
        """A pipe for a process's stderr, shown live and kept as a tail."""
        r, w = os.pipe()
        relay = LineRelay(r, console, prefix=prefix, err=True)
        self.relays[key] = relay
        self.readers.append(relay)
        return w

    def close_all(self) -> None:
        """Close whatever the controller still holds (after everything ended or was killed)."""
        for p in self.pumps:
            p.close_sinks()
            if p.src >= 0:
                p.close_src()
        for fd in self.loose_fds:
            close_fd(fd)
        self.loose_fds.clear()


async def run_readers(readers: list[Any]) -> None:
    """Run every reader to EOF."""
    await asyncio.gather(*(r.run() for r in readers))


RunProc = Callable[[Proc], Awaitable[ProcOutcome]]


def segment_io(seg: list[Proc]) -> SegmentIO:
    """The fds a target gets for a segment (it owns and closes them)."""
    streams = seg[0].stdin is not None or seg[-1].feeds_pump is not None  # a stdin always comes from a pump
    return SegmentIO(stdin=seg[0].stdin, stdout=seg[-1].stdout, stderr=[p.stderr for p in seg], bulk=streams)

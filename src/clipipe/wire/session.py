"""AgentSession: the controller's side of one agent connection, over any asyncio byte-stream pair.

One reader task decodes frames and routes them: control replies to the request that waits for them,
PROGRESS to the running segment's counter, DATA/EOF/WINDOW to the channel (see mux.py). Each running
segment pumps its controller fds: the stdin fd into DATA frames within the channel's credit, DATA
frames into the stdout, stderr and tee-branch fds, granting credit back as the fds drain. Several
segments run at once on one session.

Controller fds: pipes and sockets are made non-blocking and driven by loop.add_reader/add_writer;
regular files are read and written in the default executor (they never block for long); other fds
(ttys, character devices) are polled for readiness without changing their flags, because O_NONBLOCK
on a shared terminal would leak to every process that shares it.
"""
from __future__ import annotations

import asyncio
import os
import signal as signal_mod
import stat
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from clipipe.errors import AgentError, TargetError, UnreachableError
from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO
from clipipe.wire import frames
from clipipe.wire.frames import (CHUNK, CONTROL, DATA, EOF, ERROR, EXIT, HELLO, KILL, KILL_GRACE, PING,
                                 PONG, PROGRESS, PROTOCOL, RUN_SEGMENT, SHUTDOWN, STARTED, WINDOW, FrameError)
from clipipe.wire.mux import InboundChannel, Mux, OutboundChannel, WindowViolation
from clipipe.wire.tee import RemoteCounter, TeeResult, TeeSpec


class StreamWriterLike(Protocol):
    """What the session needs of a transport's write side (asyncio.StreamWriter fits)."""

    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class StreamReaderLike(Protocol):
    """What the session needs of a transport's read side (asyncio.StreamReader fits)."""

    async def readexactly(self, n: int) -> bytes: ...


@dataclass
class SegmentStats:
    """What crossed the wire for one segment, and the agent's own counts and digests."""

    bytes_in: int = 0                  #: controller stdin fd -> agent
    bytes_out: int = 0                 #: agent -> controller stdout fd
    stderr_bytes: list[int] = field(default_factory=list)
    remote: dict[str, Any] = field(default_factory=dict)   #: stdin/stdout/stderr bytes the agent counted
    digests: dict[str, str] = field(default_factory=dict)  #: checksums of the segment's stdout
    pids: list[int | None] = field(default_factory=list)
    branch_bytes: list[int] = field(default_factory=list)  #: agent -> controller, per tee branch
    tee: TeeResult | None = None       #: a tee segment's figures (bytes, digests, branches)

    def count(self, where: str, index: int, n: int) -> None:
        """n bytes arrived for stdout, stderr[index] or tee branch[index] (branches count as bytes_out)."""
        if where == "stderr":
            self.stderr_bytes[index] += n
            return
        if where == "branch":
            self.branch_bytes[index] += n
        self.bytes_out += n


@dataclass
class _Running:
    """A segment this session started and has not seen the EXIT of."""

    id: int
    exit: asyncio.Future[dict[str, Any]]
    on_started: Callable[[list[int | None]], None] | None = None
    pids: list[int | None] = field(default_factory=list)
    counter: RemoteCounter | None = None   #: fed by the segment's PROGRESS frames


# ------------------------------------------------------------------------------------ fd helpers
class AsyncFd:
    """Non-blocking reads and writes on a controller fd without blocking the event loop."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.loop = asyncio.get_running_loop()
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            self.mode = "thread"
        elif stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode):
            os.set_blocking(fd, False)
            self.mode = "nonblock"
            if stat.S_ISFIFO(mode):
                _grow_pipe(fd)
        else:
            self.mode = "poll"

    async def _ready(self, write: bool) -> None:
        fut = self.loop.create_future()
        add, remove = ((self.loop.add_writer, self.loop.remove_writer) if write
                       else (self.loop.add_reader, self.loop.remove_reader))
        try:
            add(self.fd, _resolve, fut)
        except PermissionError:  # epoll refuses it (e.g. /dev/null): it never blocks anyway
            self.mode = "thread"
            return
        try:
            await fut
        finally:
            remove(self.fd)

    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at EOF."""
        while True:
            if self.mode == "thread":
                return await self.loop.run_in_executor(None, os.read, self.fd, n)
            if self.mode == "poll":
                await self._ready(False)
                if self.mode == "thread":
                    continue
                return os.read(self.fd, n)
            try:
                return os.read(self.fd, n)
            except BlockingIOError:
                await self._ready(False)

    async def write_all(self, data: bytes) -> None:
        """Write every byte; BrokenPipeError when the reader is gone."""
        view = memoryview(data)
        while view:
            if self.mode == "thread":
                n = await self.loop.run_in_executor(None, os.write, self.fd, view)
            elif self.mode == "poll":
                await self._ready(True)
                if self.mode == "thread":
                    continue
                n = os.write(self.fd, view)
            else:
                try:
                    n = os.write(self.fd, view)
                except BlockingIOError:
                    await self._ready(True)
                    continue
            view = view[n:]


def _grow_pipe(fd: int) -> None:
    """Give a pipe we own one end of a CHUNK-sized buffer: 4x fewer reads, writes and frames."""
    try:
        import fcntl
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), CHUNK)
    except (ImportError, OSError):
        pass  # not Linux, or above /proc/sys/fs/pipe-max-size: the default size works, slower


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _pump_failed(task: asyncio.Task[None], exit_future: asyncio.Future[Any]) -> None:
    """A pump that raised ends its segment with that exception (the segment is then killed)."""
    if not task.cancelled() and task.exception() is not None and not exit_future.done():
        exit_future.set_exception(task.exception())  # type: ignore[arg-type]


def _close_fds(fds: list[int | None]) -> None:
    for fd in fds:
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass


# ------------------------------------------------------------------------------------ session
class AgentSession:
    """Speaks the agent protocol over one (reader, writer) pair; see agent/clipipe_agent.py."""

    def __init__(self, reader: StreamReaderLike, writer: StreamWriterLike, *, name: str = "agent") -> None:
        self.name = name
        self._reader = reader
        self._writer = writer
        self.mux = Mux()
        self._next_id = 1
        self._replies: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._segments: dict[int, _Running] = {}
        self._hello: asyncio.Future[dict[str, Any]] | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closed = False
        self.protocol_errors: list[str] = []  #: ERROR frames not tied to a request, and our own findings

    # ---- plumbing
    def _start(self) -> None:
        if self._reader_task is None:
            self._hello = asyncio.get_running_loop().create_future()
            self._reader_task = asyncio.create_task(self._read_loop(), name=f"{self.name}-frames")

    def _new_id(self) -> int:
        rid = self._next_id
        self._next_id += 1
        return rid

    def _check(self) -> None:
        if self._closed:
            raise TargetError("agent session is closed", target=self.name)
        if self._failure is not None:
            raise self._failure

    def _send(self, frame: bytes) -> None:
        self._check()
        self._writer.write(frame)

    async def _send_drain(self, frame: bytes) -> None:
        self._send(frame)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise self._fail(UnreachableError(f"agent connection lost: {exc}", target=self.name)) from exc

    def _fail(self, exc: BaseException) -> BaseException:
        """Mark the session dead: every waiter gets exc (the first failure wins)."""
        if self._failure is None:
            self._failure = exc
        exc = self._failure
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(exc)
        for fut in list(self._replies.values()) + [s.exit for s in self._segments.values()]:
            if not fut.done():
                fut.set_exception(exc)
        self.mux.fail_all(exc)
        return exc

    async def _read_loop(self) -> None:
        exc: BaseException
        try:
            while True:
                channel, kind, payload = await frames.read_frame(self._reader)
                if channel == CONTROL:
                    self._on_control(kind, payload)
                else:
                    self._on_data(channel, kind, payload)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            if self._closed:
                self._fail(TargetError("agent session is closed", target=self.name))
                return
            why = "closed" if isinstance(e, asyncio.IncompleteReadError) else f"lost: {e}"
            exc = UnreachableError(f"agent connection {why}", target=self.name)
        except FrameError as e:
            exc = TargetError(f"protocol error from the agent: {e}", target=self.name)
        except asyncio.CancelledError:
            self._fail(TargetError("agent session is closed", target=self.name))
            raise
        except Exception as e:  # a bug in routing must not leave waiters hanging
            exc = TargetError(f"agent session failed: {type(e).__name__}: {e}", target=self.name)
        self._fail(exc)

    def _on_control(self, kind: int, payload: Any) -> None:
        if not isinstance(payload, dict):
            self.protocol_errors.append(f"control frame kind {kind} without a map")
            return
        rid = payload.get("id")
        if not isinstance(rid, int):
            rid = -1  # unsolicited (boot HELLO) or not tied to a request
        if kind == HELLO and self._hello is not None and not self._hello.done():
            self._hello.set_result(payload)
        elif kind in (HELLO, PONG):
            fut = self._replies.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_result(payload)
        elif kind == STARTED:
            seg = self._segments.get(rid)
            if seg is not None:
                seg.pids = list(payload.get("pids") or [])
                if seg.counter is not None:
                    seg.counter.start()
                if seg.on_started is not None:
                    seg.on_started(seg.pids)
        elif kind == PROGRESS:
            seg = self._segments.get(rid)
            if seg is not None and seg.counter is not None and type(payload.get("bytes")) is int:
                seg.counter.update(payload["bytes"])
        elif kind == EXIT:
            seg = self._segments.get(rid)
            if seg is not None and not seg.exit.done():
                seg.exit.set_result(payload)
        elif kind == ERROR:
            err = AgentError(str(payload.get("message")), remote_traceback=str(payload.get("traceback") or ""),
                             target=self.name)
            fut = self._replies.pop(rid, None)
            seg = self._segments.get(rid)
            if fut is not None and not fut.done():
                fut.set_exception(err)
            elif seg is not None and not seg.exit.done():
                seg.exit.set_exception(err)
            else:
                self.protocol_errors.append(f"agent: {err.message}")
        else:
            self.protocol_errors.append(f"unexpected control kind {kind}")

    def _on_data(self, cid: int, kind: int, payload: Any) -> None:
        ch = self.mux.get(cid)
        if ch is None:
            return  # late frame for a finished segment
        try:
            if kind == DATA and isinstance(ch, InboundChannel) and isinstance(payload, bytes):
                ch.feed(payload)
            elif kind == EOF and isinstance(ch, InboundChannel):
                ch.feed_eof()
            elif kind == EOF and isinstance(ch, OutboundChannel):
                ch.peer_eof()
            elif kind == WINDOW and isinstance(ch, OutboundChannel) and type(payload) is int and payload > 0:
                ch.grant(payload)
            else:
                self.protocol_errors.append(f"unexpected kind {kind} on channel {cid}")
        except WindowViolation as exc:
            self.protocol_errors.append(str(exc))

    async def _request(self, kind: int, payload: dict[str, Any]) -> dict[str, Any]:
        self._start()
        rid = self._new_id()
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        try:
            await self._send_drain(frames.encode(CONTROL, kind, dict(payload, id=rid)))
            return await fut
        finally:
            self._replies.pop(rid, None)

    # ---- public API
    async def hello(self) -> dict[str, Any]:
        """The agent's HELLO (sent unasked at boot): version, protocol, python, platform, hostname, pid, cwd."""
        self._start()
        assert self._hello is not None
        info = await asyncio.shield(self._hello)
        if info.get("protocol") != PROTOCOL:
            raise TargetError(f"agent speaks protocol {info.get('protocol')}, controller {PROTOCOL}",
                              target=self.name, hint="a stale agent? clipipe ships its own on connect")
        return info

    async def ping(self) -> float:
        """Round-trip time to the agent, in seconds."""
        start = time.monotonic()
        await self._request(PING, {})
        return time.monotonic() - start

    async def kill(self, segment_id: int, sig: int = signal_mod.SIGTERM) -> None:
        """Signal every process group of a running segment (SIGKILL follows after KILL_GRACE)."""
        await self._send_drain(frames.encode(CONTROL, KILL, {"id": self._new_id(), "segment": segment_id,
                                                             "signal": int(sig)}))

    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO, checksums: tuple[str, ...] | list[str] = (),
                          *, on_started: Callable[[list[int | None]], None] | None = None,
                          ) -> tuple[list[ProcOutcome], SegmentStats]:
        """Run procs joined by pipes on the agent's host, pumping io's fds; cancel kills the segment.

        Takes ownership of io's fds and closes them. checksums (hashlib names) are computed by the
        agent over the segment's stdout and returned in SegmentStats.digests.
        """
        return await self._run(procs, io, checksums=checksums, on_started=on_started)

    async def run_tee_segment(self, procs: list[ProcSpec], io: SegmentIO, tee: TeeSpec, *,
                              counter: RemoteCounter | None = None,
                              on_started: Callable[[list[int | None]], None] | None = None,
                              ) -> tuple[list[ProcOutcome], SegmentStats]:
        """Run a segment with a fan-out node on the agent's host (see clipipe.wire.tee).

        procs[0..tee.after] produce (io.stdin feeds the first; io.stdout must be None); each branch
        is a chain of the other procs, its last stdout going to its fd, or the raw stream leaving
        the host for its fd. The agent hashes and counts the stream; PROGRESS frames feed counter.
        Takes ownership of every fd (io's and the branches'); SegmentStats.tee has the results.
        """
        return await self._run(procs, io, tee=tee, counter=counter, on_started=on_started)

    async def _run(self, procs: list[ProcSpec], io: SegmentIO, *, checksums: tuple[str, ...] | list[str] = (),
                   tee: TeeSpec | None = None, counter: RemoteCounter | None = None,
                   on_started: Callable[[list[int | None]], None] | None = None,
                   ) -> tuple[list[ProcOutcome], SegmentStats]:
        stderr_fds = list(io.stderr) + [None] * (len(procs) - len(io.stderr))
        branch_fds = [b.fd for b in tee.branches] if tee is not None else []
        owned = [io.stdin, io.stdout, *io.stderr, *branch_fds]
        try:
            self._start()
            self._check()
            if tee is not None and (io.stdout is not None or any(b.leaves and b.fd is None for b in tee.branches)):
                raise ValueError("a tee segment writes only to its branches, and a leaving branch needs an fd")
        except BaseException:
            _close_fds(owned)
            raise
        loop = asyncio.get_running_loop()
        rid = self._new_id()
        stdin_ch = self.mux.open_outbound() if io.stdin is not None else None
        stdout_ch = self.mux.open_inbound() if io.stdout is not None else None
        err_chs = [self.mux.open_inbound() if fd is not None else None for fd in stderr_fds[:len(procs)]]
        branch_chs = [self.mux.open_inbound() if fd is not None else None for fd in branch_fds]
        seg = _Running(rid, loop.create_future(), on_started, counter=counter)
        self._segments[rid] = seg
        stats = SegmentStats(stderr_bytes=[0] * len(procs), branch_bytes=[0] * len(branch_fds))
        pumps: list[asyncio.Task[None]] = []
        chans: list[Any] = [stdin_ch, stdout_ch, *err_chs, *branch_chs]
        try:
            request: dict[str, Any] = {
                "id": rid, "procs": [{"name": p.name, "command": p.command, "env": dict(p.env), "cwd": p.cwd}
                                     for p in procs],
                "stdin": stdin_ch and stdin_ch.id, "stdout": stdout_ch and stdout_ch.id,
                "stderr": [c and c.id for c in err_chs], "checksums": list(checksums)}
            if tee is not None:
                request["tee"] = tee.request([None if c is None else c.id for c in branch_chs])
            await self._send_drain(frames.encode(CONTROL, RUN_SEGMENT, request))
            if stdin_ch is not None and io.stdin is not None:
                pumps.append(asyncio.create_task(self._pump_in(io.stdin, stdin_ch, stats)))
            outs: list[tuple[int | None, InboundChannel | None, str, int]] = [(io.stdout, stdout_ch, "stdout", 0)]
            outs += [(fd, ch, "stderr", i) for i, (fd, ch) in enumerate(zip(stderr_fds, err_chs))]
            outs += [(fd, ch, "branch", i) for i, (fd, ch) in enumerate(zip(branch_fds, branch_chs))]
            sinks = [asyncio.create_task(self._pump_out(fd, ch, stats, where, i))
                     for fd, ch, where, i in outs if fd is not None and ch is not None]
            pumps.extend(sinks)
            for task in pumps:
                task.add_done_callback(lambda t: _pump_failed(t, seg.exit))
            try:
                result = await seg.exit
            except BaseException:  # cancelled, a pump failed, the agent refused, the link died
                if not self.closed:
                    await self._abort(seg, chans, pumps)
                raise
            await asyncio.gather(*sinks)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for chan in chans:
                self.mux.release(chan)
            self._segments.pop(rid, None)
            _close_fds(owned)
            if counter is not None and not counter.done:
                counter.finish()
        stats.remote = {k: result.get(k) for k in ("stdin_bytes", "stdout_bytes", "stderr_bytes")}
        stats.digests = dict(result.get("digests") or {})
        stats.pids = seg.pids
        if tee is not None:
            stats.tee = TeeResult.from_exit(result.get("tee"), stats.branch_bytes)
            if counter is not None:
                counter.finish(stats.tee.bytes, stats.tee.duration)
        outcomes = [ProcOutcome(name=str(p.get("name")), exit_code=p.get("exit_code"), signal=p.get("signal"),
                                error=p.get("error"), started=float(p.get("started") or 0.0),
                                ended=float(p.get("ended") or 0.0)) for p in result.get("procs") or []]
        return outcomes, stats

    async def _abort(self, seg: _Running, chans: list[Any], pumps: list[asyncio.Task[None]]) -> None:
        """After a cancel: stop reading, kill the segment, and wait (bounded) for its EXIT."""
        for task in pumps:
            task.cancel()
        try:
            for ch in chans:
                if ch is not None:
                    self._send(frames.encode(ch.id, EOF, None))
            await self.kill(seg.id, signal_mod.SIGTERM)
            await asyncio.wait_for(asyncio.shield(seg.exit), KILL_GRACE + 3)
        except (asyncio.CancelledError, asyncio.TimeoutError, Exception):  # best effort: we are cancelled
            pass

    async def _pump_in(self, fd: int, ch: OutboundChannel, stats: SegmentStats) -> None:
        """Controller stdin fd -> DATA frames, never more than the channel's credit."""
        src = AsyncFd(fd)
        while True:
            credit = await ch.wait_credit()
            if credit == 0:
                return  # the first process stopped reading
            data = await src.read(min(credit, CHUNK))
            if ch.peer_closed:
                return
            if not data:
                await self._send_drain(frames.encode(ch.id, EOF, None))
                return
            ch.take(len(data))
            stats.bytes_in += len(data)
            await self._send_drain(frames.encode_data(ch.id, data))

    async def _pump_out(self, fd: int, ch: InboundChannel, stats: SegmentStats, where: str, index: int) -> None:
        """DATA frames -> a controller fd, granting credit back as the fd drains."""
        dst = AsyncFd(fd)
        while True:
            data = await ch.get()
            if data is None:
                return
            try:
                await dst.write_all(data)
            except (BrokenPipeError, ConnectionResetError):
                ch.closed_local = True     # our reader is gone: so is the remote writer's
                self._send(frames.encode(ch.id, EOF, None))
                return
            stats.count(where, index, len(data))
            grant = ch.consumed(len(data))
            if grant:
                self._send(frames.encode(ch.id, WINDOW, grant))

    async def close(self, timeout: float = KILL_GRACE + 3) -> None:
        """Ask the agent to shut down (killing what it runs), close our side, wait for its end."""
        if self._closed:
            return
        if self._failure is None:
            try:
                self._writer.write(frames.encode(CONTROL, SHUTDOWN, {"id": self._new_id()}))
                await asyncio.wait_for(self._writer.drain(), timeout)
            except (ConnectionError, OSError, asyncio.TimeoutError):
                pass
        self._closed = True
        try:
            self._writer.close()
        except (ConnectionError, OSError):
            pass
        if self._reader_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._reader_task), timeout)
            except (asyncio.TimeoutError, Exception):
                self._reader_task.cancel()
        self._fail(TargetError("agent session is closed", target=self.name))

    @property
    def closed(self) -> bool:
        """True once close() ran or the connection died."""
        return self._closed or self._failure is not None

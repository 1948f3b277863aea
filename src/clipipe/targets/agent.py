"""AgentTarget: run segments through the clipipe agent over any byte-stream transport.

A transport subclass (SSH, Kubernetes exec, a local subprocess) implements one method::

    async def _spawn_transport(self) -> tuple[reader, writer, closer]

It starts ``self.boot_command()`` (a shell line) or ``self.boot_argv()`` (argv, no shell) on the
target, and returns the command's stdout as an asyncio.StreamReader-like object (``readexactly``), its
stdin as an asyncio.StreamWriter-like object (``write``, ``drain``, ``close``), and an async ``closer()``
that releases the transport. It may also override ``_classify(exc)`` to turn its failures (and
``self.transport_stderr``, the tail of the boot command's stderr it collected) into typed errors with
hints. Everything else (payload, HELLO, segments, stats, close) lives here.

Stats: ``run_segment`` returns only the outcomes, as the Target contract says. What crossed the wire
is kept in ``self.last_stats`` (a StreamStats with path="agent"; the last segment to finish) and
``self.last_result`` (SegmentStats: digests, per-stderr counts, remote pids), and passed to
``self.on_stats(procs, stream_stats, segment_stats)`` when that callback is set - use the callback
when several segments run at once. ``run_segment_detailed`` returns both and accepts checksums.

Tee segments: ``run_tee_segment`` runs a producer chain and its tee branches as one segment, the
fan-out, checksums and progress done by the agent on the target (``remote_tee_blocker`` says why
it can't, when it can't); StreamStats.path is then "agent-tee".
"""
from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from clipipe.errors import AgentError, TargetError, UnreachableError
from clipipe.targets.base import ConnectInfo, ProcOutcome, ProcSpec, SegmentIO, StreamStats
from clipipe.wire import bootstrap
from clipipe.wire.session import AgentSession, SegmentStats, StreamReaderLike, StreamWriterLike
from clipipe.wire.tee import RemoteCounter, TeeSpec

Closer = Callable[[], Awaitable[None]]
StatsCallback = Callable[[list[ProcSpec], StreamStats, SegmentStats], None]

#: Bytes of the boot command's stderr kept for error messages: a Python traceback fits.
STDERR_TAIL = 8192

#: Hint when the boot command dies before HELLO: the usual cause is a missing python3.
HINT_NO_PYTHON = "is python3 (3.8+) installed on the target? set `python:` in the context to its path"


class AgentTarget:
    """Base of targets that run segments through an agent; subclasses supply the transport."""

    kind = "agent"

    def __init__(self, name: str, *, python: str = "python3", config: dict[str, Any] | None = None,
                 connect_timeout: float = 30.0, on_stats: StatsCallback | None = None) -> None:
        self.name = name
        self.python = python
        self.agent_config = dict(config or {})
        self.connect_timeout = connect_timeout
        self.on_stats = on_stats
        self.session: AgentSession | None = None
        self.connect_info: ConnectInfo | None = None
        self.last_stats: StreamStats | None = None
        self.last_result: SegmentStats | None = None
        self.transport_stderr = b""    #: tail of the boot command's stderr, if the transport keeps it
        self._closer: Closer | None = None
        self._open_lock = asyncio.Lock()

    # ---- what a transport subclass provides
    def boot_command(self) -> str:
        """The shell line that starts the agent loader on the target."""
        return bootstrap.boot_command(self.python)

    def boot_argv(self) -> list[str]:
        """The same as argv, for transports that exec without a shell."""
        return bootstrap.boot_argv(self.python)

    async def _spawn_transport(self) -> tuple[StreamReaderLike, StreamWriterLike, Closer]:
        """Start boot_command() on the target; return (its stdout, its stdin, closer)."""
        raise NotImplementedError

    def _classify(self, exc: BaseException) -> BaseException:
        """Turn a failure while booting or running into a typed error (subclasses add hints)."""
        if isinstance(exc, (TargetError, AgentError)):
            tail = self.transport_stderr.decode("utf-8", "replace").strip()
            if tail and isinstance(exc, TargetError) and tail not in exc.message:
                return type(exc)(f"{exc.message}; agent stderr: {tail[-2000:]}", target=self.name,
                                 hint=exc.hint or HINT_NO_PYTHON)
            return exc
        if isinstance(exc, (OSError, EOFError)):
            return UnreachableError(f"agent transport failed: {exc}", target=self.name)
        return exc

    # ---- the Target contract
    async def open(self) -> None:
        """Start the transport, send the agent, wait for its HELLO; idempotent."""
        async with self._open_lock:
            if self.session is not None and not self.session.closed:
                return
            start = time.monotonic()
            try:
                reader, writer, self._closer = await self._spawn_transport()
                writer.write(bootstrap.payload(self.agent_config))
                session = AgentSession(reader, writer, name=self.name)
                hello = await asyncio.wait_for(session.hello(), self.connect_timeout)
            except asyncio.TimeoutError as exc:
                await self._release()
                raise self._classify(UnreachableError(
                    f"no HELLO from the agent within {self.connect_timeout:g}s", target=self.name)) from exc
            except Exception as exc:
                await self._release()
                raise self._classify(exc) from exc
            self.session = session
            self.connect_info = ConnectInfo(connect_seconds=time.monotonic() - start,
                                            transport=self.kind, agent=hello)

    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Run the procs joined by pipes on the target; stats go to last_stats / on_stats."""
        outcomes, _ = await self.run_segment_detailed(procs, io)
        return outcomes

    async def run_segment_detailed(self, procs: list[ProcSpec], io: SegmentIO,
                                   checksums: tuple[str, ...] | list[str] = (),
                                   ) -> tuple[list[ProcOutcome], SegmentStats]:
        """run_segment plus the segment's SegmentStats (digests of stdout for the named checksums)."""
        try:
            await self.open()
        except BaseException:
            io.close()
            raise
        assert self.session is not None
        try:
            outcomes, result = await self.session.run_segment(procs, io, checksums)
        except TargetError as exc:
            raise self._classify(exc) from exc
        self._stats(procs, result, "agent")
        return outcomes, result

    def _stats(self, procs: list[ProcSpec], result: SegmentStats, path: str) -> None:
        """Keep what crossed the wire for a finished segment (last_stats, last_result, on_stats)."""
        stats = StreamStats(bytes_in=result.bytes_in, bytes_out=result.bytes_out, path=path)
        self.last_stats = stats
        self.last_result = result
        if self.on_stats is not None:
            self.on_stats(procs, stats, result)

    def remote_tee_blocker(self, bulk: bool) -> str | None:
        """Why this target can't run a tee segment by its agent now; None when it can."""
        if self.session is None or self.session.closed or self.connect_info is None:
            return "the agent is not running"
        if "tee" not in (self.connect_info.agent.get("features") or []):
            return "the agent on the target predates tee segments"
        return None

    async def run_tee_segment(self, procs: list[ProcSpec], io: SegmentIO, tee: TeeSpec,
                              counter: RemoteCounter | None = None) -> tuple[list[ProcOutcome], SegmentStats]:
        """Run a segment whose tee, checksums and progress happen on the target (see clipipe.wire.tee)."""
        fds = [b.fd for b in tee.branches]
        try:
            await self.open()
        except BaseException:
            io.close()
            SegmentIO(None, None, fds).close()
            raise
        if self.session is None:  # the transport fell back to plain exec: no agent to ask
            io.close()
            SegmentIO(None, None, fds).close()
            raise TargetError("no agent runs on the target: a tee segment needs one", target=self.name)
        try:
            outcomes, result = await self.session.run_tee_segment(procs, io, tee, counter=counter)
        except TargetError as exc:
            raise self._classify(exc) from exc
        self._stats(procs, result, "agent-tee")
        return outcomes, result

    async def close(self) -> None:
        """Shut the agent down (it kills what it started) and release the transport."""
        session, self.session = self.session, None
        if session is not None:
            await session.close()
        await self._release()

    async def _release(self) -> None:
        closer, self._closer = self._closer, None
        if closer is not None:
            try:
                await closer()
            except (OSError, asyncio.TimeoutError):
                pass

    def describe(self) -> dict[str, Any]:
        """Name, kind, python, and the agent's HELLO once connected."""
        info: dict[str, Any] = {"name": self.name, "kind": self.kind, "python": self.python}
        if self.connect_info is not None:
            info["agent"] = self.connect_info.agent
            info["connect_seconds"] = round(self.connect_info.connect_seconds, 4)
        return info


class LocalAgentTarget(AgentTarget):
    """The agent as a local subprocess (`python3 -c LOADER`): for tests, and the model for transports."""

    kind = "local-agent"

    #: asyncio's stream buffer limit for the agent's stdout: a few frames, so reads stay large.
    STREAM_LIMIT = 4 * 1024 * 1024

    def __init__(self, name: str = "local-agent", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)
        self.process: asyncio.subprocess.Process | None = None

    async def _spawn_transport(self) -> tuple[StreamReaderLike, StreamWriterLike, Closer]:
        """Run the boot argv as a child; its stdin/stdout are the transport."""
        proc = await asyncio.create_subprocess_exec(
            *self.boot_argv(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, limit=self.STREAM_LIMIT)
        self.process = proc
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stderr_task = asyncio.create_task(self._collect_stderr(proc.stderr))

        async def closer() -> None:
            if proc.stdin is not None and not proc.stdin.is_closing():
                proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), 5.0)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
            await asyncio.wait_for(stderr_task, 5.0)

        return proc.stdout, proc.stdin, closer

    async def _collect_stderr(self, stream: asyncio.StreamReader) -> None:
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            self.transport_stderr = (self.transport_stderr + chunk)[-STDERR_TAIL:]

"""AgentTarget end to end over a local subprocess: the agent, the wire and the session, no mocks."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import threading
import time
from typing import Any, Awaitable, Callable, TypeVar

import pytest

from clipipe.errors import AgentError, UnreachableError
from clipipe.targets.agent import LocalAgentTarget
from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO, Target
from clipipe.wire.frames import WINDOW_SIZE
from clipipe.wire.mux import InboundChannel
from clipipe.wire.session import SegmentStats

MiB = 1 << 20
T = TypeVar("T")


def run(coro_fn: Callable[[LocalAgentTarget], Awaitable[T]], **kwargs: Any) -> T:
    """Open a fresh LocalAgentTarget, run coro_fn with it, always close it."""
    async def main() -> T:
        target = LocalAgentTarget(**kwargs)
        await target.open()
        try:
            return await coro_fn(target)
        finally:
            await target.close()
    return asyncio.run(main())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie is gone for our purpose
        return f.read().split(") ")[1].startswith("Z")


def _wait_gone(pid: int, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if _gone(pid):
            return True
        time.sleep(0.05)
    return False


class Collector(threading.Thread):
    """The engine's side of an output pipe: reads everything (optionally slowly), hashing it."""

    def __init__(self, fd: int, delay: float = 0.0, chunk: int = MiB, keep: bool = True) -> None:
        super().__init__(daemon=True)
        self.fd, self.delay, self.chunk, self.keep = fd, delay, chunk, keep
        self.data = bytearray()
        self.count = 0
        self.sha = hashlib.sha256()
        self.start()

    def run(self) -> None:
        while True:
            block = os.read(self.fd, self.chunk)
            if not block:
                break
            self.count += len(block)
            self.sha.update(block)
            if self.keep:
                self.data += block
            if self.delay:
                time.sleep(self.delay)
        os.close(self.fd)


class Feeder(threading.Thread):
    """The engine's side of an input pipe: writes `total` deterministic bytes, then closes."""

    def __init__(self, fd: int, total: int = 0, data: bytes = b"") -> None:
        super().__init__(daemon=True)
        self.fd, self.total, self.data = fd, total, data
        self.sha = hashlib.sha256()
        self.written = 0
        self.start()

    def run(self) -> None:
        try:
            if self.data:
                self._write(self.data)
            block = hashlib.sha256(b"seed").digest() * (MiB // 32)
            while self.written < self.total:
                self._write(block[:self.total - self.written])
        except BrokenPipeError:
            pass
        finally:
            os.close(self.fd)

    def _write(self, data: bytes) -> None:
        self.sha.update(data)
        view = memoryview(data)
        while view:
            n = os.write(self.fd, view)
            self.written += n
            view = view[n:]


async def segment(target: LocalAgentTarget, commands: list[str], stdin: bytes | None = None,
                  stderr: bool = True, stdout: bool = True, checksums: tuple[str, ...] = (),
                  **proc_kw: Any) -> tuple[list[ProcOutcome], bytes, list[bytes], SegmentStats]:
    """Run commands as one segment with pipes for stdin/stdout/stderrs; return outcomes and bytes."""
    procs = [ProcSpec(name=f"p{i}", command=c, **proc_kw) for i, c in enumerate(commands)]
    io = SegmentIO(stdin=None, stdout=None, stderr=[])
    feeder = out = None
    errs: list[Collector | None] = []
    if stdin is not None:
        r, w = os.pipe()
        io.stdin, feeder = r, Feeder(w, data=stdin)
    if stdout:
        r, w = os.pipe()
        io.stdout, out = w, Collector(r)
    for _ in procs:
        if stderr:
            r, w = os.pipe()
            io.stderr.append(w)
            errs.append(Collector(r))
        else:
            io.stderr.append(None)
            errs.append(None)
    outcomes, stats = await target.run_segment_detailed(procs, io, checksums)
    for t in [feeder, out, *errs]:
        if t is not None:
            await asyncio.get_running_loop().run_in_executor(None, t.join, 10)
    return (outcomes, bytes(out.data) if out else b"", [bytes(e.data) if e else b"" for e in errs], stats)


def test_is_a_target_and_says_hello() -> None:
    """LocalAgentTarget fits the Target protocol; describe() carries the agent's HELLO."""
    async def main(t: LocalAgentTarget) -> dict:
        assert isinstance(t, Target)
        await t.open()  # idempotent
        assert t.session is not None and await t.session.ping() < 1.0
        return t.describe()
    info = run(main)
    assert info["agent"]["pid"] != os.getpid() and info["agent"]["protocol"] == 1


@pytest.mark.parametrize("commands,expected", [
    (["printf 'b\\na\\nc\\n'"], b"b\na\nc\n"),
    (["printf 'b\\na\\nc\\n'", "sort"], b"a\nb\nc\n"),
    (["printf 'b\\na\\nc\\n'", "sort", "tr a-z A-Z"], b"A\nB\nC\n"),
])
def test_segments_of_one_to_three_piped_commands(commands: list[str], expected: bytes) -> None:
    """Procs are joined by pipes on the agent's host; only the last stdout comes back."""
    outcomes, out, errs, stats = run(lambda t: segment(t, commands))
    assert out == expected and [o.exit_code for o in outcomes] == [0] * len(commands)
    assert all(o.ok and o.ended >= o.started > 0 for o in outcomes)
    assert stats.bytes_out == len(expected) and stats.remote["stdout_bytes"] == len(expected)


def test_stdin_stdout_and_per_proc_stderr() -> None:
    """stdin feeds the first proc; each proc's stderr arrives on its own fd; env and cwd apply."""
    cmds = ["echo one >&2; tr a-z A-Z", "echo two-$FOO >&2; cat; pwd"]
    outcomes, out, errs, stats = run(lambda t: segment(t, cmds, stdin=b"hello\n", env={"FOO": "bar"},
                                                       cwd="/tmp"))
    assert out == b"HELLO\n/tmp\n" and errs == [b"one\n", b"two-bar\n"]
    assert stats.bytes_in == 6 and stats.stderr_bytes == [4, 8]


def test_absent_fds_are_dev_null() -> None:
    """stdin None reads /dev/null; stdout/stderr None are discarded on the remote side."""
    outcomes, out, errs, _ = run(lambda t: segment(t, ["cat; echo x >&2", "wc -c"], stderr=False))
    assert outcomes[1].ok and errs == [b"", b""]
    assert out.strip() == b"0"
    outcomes, out, _, stats = run(lambda t: segment(t, ["echo lost"], stdout=False))
    assert outcomes[0].ok and out == b"" and stats.bytes_out == 0


def test_exit_codes_signals_and_start_errors() -> None:
    """Each proc reports its own status: exit code, the signal that killed it, or why it never ran."""
    outcomes, *_ = run(lambda t: segment(t, ["exit 3", "kill -TERM $$", "exit 0"]))
    assert [(o.exit_code, o.signal) for o in outcomes] == [(3, None), (None, 15), (0, None)]
    outcomes, *_ = run(lambda t: segment(t, ["true"], cwd="/nonexistent/dir"))
    assert outcomes[0].exit_code is None and "nonexistent" in (outcomes[0].error or "")


def test_remote_exception_is_an_agent_error() -> None:
    """A request the agent refuses comes back as AgentError with its message."""
    with pytest.raises(AgentError, match="checksum"):
        run(lambda t: segment(t, ["true"], checksums=("no-such-hash",)))


def test_100_mib_stream_with_matching_sha256() -> None:
    """100 MiB in, through `cat`, out: the bytes, the agent's digest and our own all agree."""
    async def main(t: LocalAgentTarget) -> tuple:
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        feeder, out = Feeder(w_in, total=100 * MiB), Collector(r_out, keep=False)
        outcomes, stats = await t.run_segment_detailed([ProcSpec("cat", "cat")], SegmentIO(r_in, w_out, [None]),
                                                       ("sha256",))
        await asyncio.get_running_loop().run_in_executor(None, out.join, 30)
        return outcomes, stats, feeder, out, t.last_stats
    outcomes, stats, feeder, out, last = run(main)
    assert outcomes[0].ok and out.count == feeder.written == 100 * MiB
    assert stats.digests["sha256"] == out.sha.hexdigest() == feeder.sha.hexdigest()
    assert last.path == "agent" and last.bytes_in == last.bytes_out == 100 * MiB


def test_slow_consumer_throttles_its_producer_with_bounded_memory() -> None:
    """A consumer reading 64 KiB per 20 ms holds back the remote producer; buffers stay within the window."""
    async def main(t: LocalAgentTarget) -> tuple:
        r_out, w_out = os.pipe()
        slow = Collector(r_out, delay=0.02, chunk=64 * 1024, keep=False)
        task = asyncio.create_task(t.run_segment([ProcSpec("zero", "head -c 200000000 /dev/zero")],
                                                 SegmentIO(None, w_out, [None])))
        worst_queue = 0
        rss = []
        assert t.process is not None
        for _ in range(30):
            await asyncio.sleep(0.1)
            chans = [c for c in t.session.mux.channels() if isinstance(c, InboundChannel)] if t.session else []
            for ch in chans:
                worst_queue = max(worst_queue, ch.received - slow.count)
            with open(f"/proc/{t.process.pid}/status") as f:
                rss.append(next(int(line.split()[1]) for line in f if line.startswith("VmRSS")))
        produced_ahead = max(c.received for c in chans) - slow.count if chans else 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return worst_queue, produced_ahead, rss, slow.count
    worst_queue, ahead, rss, consumed = run(main)
    assert consumed < 50 * MiB                 # the consumer really was slow
    pipe_slack = 2 * MiB                       # our stdout pipe (64 KiB..1 MiB) and in-flight frames
    assert worst_queue <= WINDOW_SIZE + pipe_slack and ahead <= WINDOW_SIZE + pipe_slack
    assert max(rss) - min(rss) < 16 * 1024     # KiB: the agent's memory doesn't grow with the stream


def test_segments_run_concurrently_on_one_session() -> None:
    """Three segments at once share one agent: each gets its own bytes, none waits for the others."""
    async def main(t: LocalAgentTarget) -> tuple:
        start = time.monotonic()
        results = await asyncio.gather(*(segment(t, [f"sleep 1; echo {i}"], stdin=b"x") for i in range(3)))
        return time.monotonic() - start, [r[1] for r in results]
    elapsed, outs = run(main)
    assert outs == [b"0\n", b"1\n", b"2\n"] and elapsed < 2.5


def test_cancel_kills_the_segment() -> None:
    """Cancelling run_segment sends KILL: the remote process group dies, the session stays usable."""
    async def main(t: LocalAgentTarget) -> tuple:
        pids: list[int] = []
        r_out, w_out = os.pipe()
        out = Collector(r_out)
        assert t.session is not None
        task = asyncio.create_task(t.session.run_segment(
            [ProcSpec("s", "sleep 1000")], SegmentIO(None, w_out, [None]), on_started=pids.extend))
        while not pids:
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        again = await segment(t, ["echo still here"])
        return pids[0], again[1]
    pid, again = run(main)
    assert _wait_gone(pid, 5) and again == b"still here\n"


def test_closing_the_transport_kills_everything_the_agent_started() -> None:
    """Drop the controller's end (close the agent's stdin): the remote `sleep 1000` is gone within seconds."""
    async def main(t: LocalAgentTarget) -> tuple:
        r_out, w_out = os.pipe()
        task = asyncio.create_task(t.run_segment(
            [ProcSpec("s", "echo $$; exec sleep 1000"), ProcSpec("t", "cat; sleep 1000")],
            SegmentIO(None, w_out, [None, None])))
        loop = asyncio.get_running_loop()
        line = await loop.run_in_executor(None, os.read, r_out, 100)
        pid = int(line.split()[0])
        assert t.process is not None and t.process.stdin is not None
        t.process.stdin.close()                 # the transport, not a polite SHUTDOWN
        with pytest.raises(UnreachableError):
            await asyncio.wait_for(task, 10)
        agent_rc = await asyncio.wait_for(t.process.wait(), 10)
        os.close(r_out)
        return pid, agent_rc
    pid, agent_rc = run(main)
    assert _wait_gone(pid, 5), f"pid {pid} outlived the agent"
    assert agent_rc == 0


def test_consumer_gone_gives_the_producer_sigpipe() -> None:
    """Closing our end of stdout makes the remote writer die of SIGPIPE, as in a local pipeline."""
    async def main(t: LocalAgentTarget) -> list[ProcOutcome]:
        r_out, w_out = os.pipe()
        threading.Timer(0.3, os.close, [r_out]).start()
        return await asyncio.wait_for(t.run_segment([ProcSpec("yes", "yes")], SegmentIO(None, w_out, [None])), 20)
    outcomes = run(main)
    # the shell reports its child's SIGPIPE as 128+13 unless it exec'd the command itself
    assert outcomes[0].signal == signal.SIGPIPE or outcomes[0].exit_code == 128 + signal.SIGPIPE


def test_first_proc_stops_reading_and_the_feed_stops() -> None:
    """`head -c 10` exits early: the agent closes its stdin pipe, tells us, and the segment ends."""
    async def main(t: LocalAgentTarget) -> tuple:
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        feeder, out = Feeder(w_in, total=1 << 40), Collector(r_out)
        outcomes, stats = await asyncio.wait_for(
            t.run_segment_detailed([ProcSpec("h", "head -c 10")], SegmentIO(r_in, w_out, [None])), 20)
        await asyncio.get_running_loop().run_in_executor(None, feeder.join, 10)
        await asyncio.get_running_loop().run_in_executor(None, out.join, 10)  # read it all first
        return outcomes, bytes(out.data), stats, feeder.is_alive()
    outcomes, out, stats, feeder_alive = run(main)
    assert outcomes[0].ok and len(out) == 10 and not feeder_alive
    assert stats.bytes_in < 64 * MiB


def test_agent_killed_mid_segment_is_unreachable() -> None:
    """A transport that dies (SIGKILLed agent) turns the running segment into UnreachableError."""
    async def main(t: LocalAgentTarget) -> int:
        pids: list[int] = []
        assert t.session is not None and t.process is not None
        task = asyncio.create_task(t.session.run_segment(
            [ProcSpec("s", "sleep 1000")], SegmentIO(None, None, [None]), on_started=pids.extend))
        while not pids:
            await asyncio.sleep(0.02)
        t.process.kill()
        with pytest.raises(UnreachableError):
            await asyncio.wait_for(task, 10)
        return pids[0]
    pid = run(main)
    os.killpg(pid, signal.SIGKILL)  # an agent killed by SIGKILL can't clean up: we do

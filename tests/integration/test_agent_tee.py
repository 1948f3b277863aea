"""Tee segments through a real agent subprocess (LocalAgentTarget): fan-out, checksums, progress, policies."""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from clipipe.errors import AgentError
from clipipe.targets.agent import LocalAgentTarget
from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO
from clipipe.wire.frames import CHUNK
from clipipe.wire.session import SegmentStats
from clipipe.wire.tee import RemoteCounter, TeeBranch, TeeSpec
from tests.integration.test_agent_local import MiB, Collector, _wait_gone, run


def need_pv() -> None:
    """pv rate-limits the slow branches; skip without it (in CI, where CI=true, fail instead)."""
    if shutil.which("pv") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("pv is required in CI (apt-get install pv)")
        pytest.skip("pv is not installed (apt-get install pv)")


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


async def tee_run(t: LocalAgentTarget, producer: str, branches: list[tuple[list[str], str]],
                  checksums: tuple[str, ...] = ("sha256",), count: bool = False,
                  counter: RemoteCounter | None = None,
                  ) -> tuple[list[ProcOutcome], SegmentStats, list[Collector | None]]:
    """producer | tee -> branches; each branch is (commands on the host, "host"|"leave"|"out")."""
    procs = [ProcSpec("producer", producer)]
    specs, collectors = [], []
    for commands, where in branches:
        idx = list(range(len(procs), len(procs) + len(commands)))
        procs += [ProcSpec(f"b{len(specs)}-{i}", c) for i, c in enumerate(commands)]
        fd = None
        col = None
        if where in ("leave", "out"):
            r, fd = os.pipe()
            col = Collector(r)
        specs.append(TeeBranch(procs=idx if where != "leave" else [], fd=fd,
                               on_exit="drop" if "drop" in where else "fail", count_links=count))
        collectors.append(col)
    spec = TeeSpec(after=0, branches=specs, checksums=list(checksums))
    outcomes, stats = await t.run_tee_segment(procs, SegmentIO(None, None, [None] * len(procs)), spec,
                                              counter=counter)
    for c in collectors:
        if c is not None:
            await asyncio.get_running_loop().run_in_executor(None, c.join, 20)
    return outcomes, stats, collectors


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * MiB + 3])
def test_every_branch_sees_the_same_bytes(tmp_path: Path, size: int) -> None:
    """A host chain, a counted host chain, a host branch whose output comes back, and a leaving branch."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    data = src.read_bytes()
    out = tmp_path / "out.gz"
    branches = [([f"cat > {tmp_path}/copy.bin"], "host"),
                (["gzip -1", f"cat > {out}"], "host"),
                (["wc -c"], "out"),
                ([], "leave")]
    counter = RemoteCounter()
    outcomes, stats, cols = run(lambda t: tee_run(t, f"cat {src}", branches, ("sha256", "md5"), count=True,
                                                  counter=counter))
    assert all(o.ok for o in outcomes), outcomes
    tee = stats.tee
    assert tee is not None and tee.failed is None and tee.bytes == size
    assert tee.digests == {"sha256": hashlib.sha256(data).hexdigest(), "md5": hashlib.md5(data).hexdigest()}
    assert (tmp_path / "copy.bin").read_bytes() == data and gzip.decompress(out.read_bytes()) == data
    assert cols[2] is not None and cols[2].data.strip() == str(size).encode()
    assert cols[3] is not None and bytes(cols[3].data) == data
    assert [b.status for b in tee.branches] == ["ok"] * 4 and all(b.bytes == size for b in tee.branches)
    assert tee.branches[1].links == [out.stat().st_size]          # gzip's output, counted by the agent
    assert [b.wire_bytes for b in tee.branches] == [0, 0, len(cols[2].data), size]
    assert stats.bytes_out == size + len(cols[2].data)          # only what had to leave the host
    assert counter.done and counter.bytes == size


def test_progress_frames_feed_the_counter_while_it_runs(tmp_path: Path) -> None:
    """PROGRESS arrives during the run (a rate-limited branch keeps it going for a while)."""
    need_pv()
    async def main(t: LocalAgentTarget) -> tuple[list[int], Any]:
        counter = RemoteCounter()
        task = asyncio.create_task(tee_run(t, "head -c 6000000 /dev/zero", [(["pv -q -L 3m"], "host")],
                                           counter=counter))
        seen = []
        while not task.done():
            await asyncio.sleep(0.1)
            seen.append(counter.snapshot().bytes)
        await task
        return seen, counter.snapshot()
    seen, final = run(main)
    assert any(0 < n < 6000000 for n in seen[:-1]), seen
    assert seen == sorted(seen) and final.bytes == 6000000 and final.done and final.avg_rate > 0


@pytest.mark.parametrize("where", ["host", "leave"])
def test_drop_lets_the_others_go_on(tmp_path: Path, where: str) -> None:
    """`drop`: the early quitter is dropped (EPIPE), the keeper gets every byte, nothing fails."""
    async def main(t: LocalAgentTarget) -> tuple:
        branches: list[tuple[list[str], str]] = [([f"wc -c > {tmp_path}/kept"], "host")]
        if where == "host":
            branches.insert(0, (["head -c 10 > /dev/null"], "host-drop"))
            return await tee_run(t, "head -c 50000000 /dev/zero", branches)
        r, w = os.pipe()
        procs = [ProcSpec("p", "head -c 50000000 /dev/zero"), ProcSpec("k", f"wc -c > {tmp_path}/kept")]
        spec = TeeSpec(after=0, branches=[TeeBranch(fd=w, on_exit="drop"), TeeBranch(procs=[1])])
        loop = asyncio.get_running_loop()
        loop.call_later(0.2, os.close, r)     # our reader of the leaving branch quits early
        outcomes, stats = await t.run_tee_segment(procs, SegmentIO(None, None, [None, None]), spec)
        return outcomes, stats, []
    outcomes, stats, _ = run(main)
    assert all(o.ok for o in outcomes), outcomes
    assert (tmp_path / "kept").read_text().strip() == "50000000"
    assert stats.tee is not None and stats.tee.failed is None
    assert [b.status for b in stats.tee.branches] == ["dropped", "ok"]
    assert stats.tee.branches[0].error == "EPIPE" and stats.tee.branches[0].bytes < 50000000


def test_fail_stops_everything_and_leaves_no_clean_eof(tmp_path: Path) -> None:
    """`fail`: the segment is SIGTERMed; the other branch never sees EOF, so never finishes its output."""
    marker = tmp_path / "finished"
    branches = [(["head -c 10 > /dev/null"], "host"),
                ([f"cat > /dev/null && touch {marker}"], "host")]
    outcomes, stats, _ = run(lambda t: asyncio.wait_for(tee_run(t, "cat /dev/zero", branches), 30))
    assert stats.tee is not None and stats.tee.failed == 0
    assert stats.tee.branches[0].status == "failed" and stats.tee.branches[0].error == "EPIPE"
    assert died_of(outcomes[0], signal.SIGTERM, signal.SIGPIPE) and died_of(outcomes[2], signal.SIGTERM)
    assert not marker.exists()


def died_of(o, *signals: int) -> bool:
    """Killed by one of `signals`: itself, or its command under a forking sh (which exits 128+N)."""
    return o.signal in signals or (o.exit_code is not None and o.exit_code - 128 in signals)


def test_all_dropped_without_checksum_stops_the_producer() -> None:
    """Like `tee -p` with nobody left: the tee stops reading, the producer dies of SIGPIPE."""
    outcomes, stats, _ = run(lambda t: asyncio.wait_for(
        tee_run(t, "cat /dev/zero", [(["head -c 1 > /dev/null"], "host-drop")], checksums=()), 30))
    assert outcomes[0].signal == signal.SIGPIPE or outcomes[0].exit_code == 128 + signal.SIGPIPE
    assert outcomes[1].ok and stats.tee is not None and stats.tee.branches[0].status == "dropped"


def test_all_dropped_with_checksum_drains_to_the_end() -> None:
    """With a checksum wanted the tee reads to EOF, so the digest covers the whole stream."""
    outcomes, stats, _ = run(lambda t: tee_run(t, "head -c 3000000 /dev/zero",
                                               [(["head -c 1 > /dev/null"], "host-drop")]))
    assert all(o.ok for o in outcomes) and stats.tee is not None
    assert stats.tee.digests["sha256"] == hashlib.sha256(bytes(3000000)).hexdigest()


@pytest.mark.parametrize("where", ["host", "leave"])
def test_slow_branch_throttles_the_producer_with_bounded_agent_memory(where: str) -> None:
    """A 2 MB/s branch holds back a 200 MB producer; the agent's RSS does not grow with the stream."""
    need_pv()
    async def main(t: LocalAgentTarget) -> tuple:
        assert t.process is not None
        slow = None
        if where == "host":
            task = asyncio.create_task(tee_run(t, "head -c 200000000 /dev/zero",
                                               [(["pv -q -L 2m > /dev/null"], "host"), (["cat > /dev/null"], "host")],
                                               counter=counter))
        else:
            r, w = os.pipe()
            slow = Collector(r, delay=0.03, chunk=64 * 1024, keep=False)
            spec = TeeSpec(after=0, branches=[TeeBranch(fd=w), TeeBranch(procs=[1])], checksums=["sha256"])
            task = asyncio.create_task(t.run_tee_segment(
                [ProcSpec("p", "head -c 200000000 /dev/zero"), ProcSpec("f", "cat > /dev/null")],
                SegmentIO(None, None, [None, None]), spec, counter=counter))
        rss = []
        for _ in range(25):
            await asyncio.sleep(0.1)
            rss.append(rss_kib(t.process.pid))
        read = counter.bytes
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return read, rss, slow.count if slow else None
    counter = RemoteCounter()
    read, rss, consumed = run(main)
    assert 0 < read < 50 * MiB                  # the producer was held back by the slow branch
    if consumed is not None:                    # a leaving branch: one window plus pipes ahead of us
        assert read - consumed <= 4 * MiB
    assert max(rss) - min(rss) < 16 * 1024      # KiB


def test_bad_tee_requests_are_agent_errors() -> None:
    """Branch indices must cover the procs after `after` exactly once; policies are fail|drop."""
    async def main(t: LocalAgentTarget) -> list[str]:
        procs = [ProcSpec("p", "true"), ProcSpec("a", "cat"), ProcSpec("b", "cat")]
        errors = []
        for spec in (TeeSpec(after=0, branches=[TeeBranch(procs=[1])]),
                     TeeSpec(after=0, branches=[TeeBranch(procs=[1, 2]), TeeBranch(procs=[2])]),
                     TeeSpec(after=0, branches=[TeeBranch(procs=[1, 2], on_exit="ignore")]),
                     TeeSpec(after=0, branches=[TeeBranch(procs=[1, 2])], checksums=["crc99"])):
            with pytest.raises(AgentError) as info:
                await t.run_tee_segment(procs, SegmentIO(None, None, [None] * 3), spec)
            errors.append(info.value.message)
        outcomes, _ = await t.run_tee_segment(procs, SegmentIO(None, None, [None] * 3),
                                              TeeSpec(after=0, branches=[TeeBranch(procs=[1, 2])]))
        errors.append(str([o.exit_code for o in outcomes]))
        return errors
    errors = run(main)
    assert "exactly one branch" in errors[0] and "exactly one branch" in errors[1]
    assert "on_exit" in errors[2] and "checksum" in errors[3] and errors[4] == "[0, 0, 0]"


def processes_with(marker: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line holds marker, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat") as f:
                zombie = f.read().split(") ")[1].startswith("Z")
        except OSError:
            continue
        if marker.encode() in cmdline and not zombie:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("exec_", ["", "exec "])
def test_processes_die_with_a_sigkilled_agent(exec_: str) -> None:
    """kill -9 the agent: its segment's processes are gone within seconds, `sh`'s children too.

    PR_SET_PDEATHSIG covers the agent's direct children (`exec sleep`); dash forks even a simple
    command, so its grandchildren (`sleep` under `sh`) are the watchdog's.
    """
    marker = f"1000.{os.getpid()}{len(exec_)}"
    async def main(t: LocalAgentTarget) -> list[int]:
        assert t.session is not None and t.process is not None and t.connect_info is not None
        assert {"pdeathsig", "watchdog"} <= set(t.connect_info.agent["features"])
        pids: list[int | None] = []
        spec = TeeSpec(after=0, branches=[TeeBranch(procs=[1])])
        task = asyncio.create_task(t.session.run_tee_segment(
            [ProcSpec("p", f"{exec_}sleep {marker}"), ProcSpec("b", f"{exec_}sleep {marker}1")],
            SegmentIO(None, None, [None, None]), spec, on_started=pids.extend))
        while len(processes_with(marker)) < 2:
            await asyncio.sleep(0.02)
        t.process.kill()
        with pytest.raises(Exception):
            await asyncio.wait_for(task, 10)
        return [p for p in pids if p is not None]
    pids = run(main)
    deadline = time.monotonic() + 5
    while processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_with(marker) == [] and all(_wait_gone(p, 1) for p in pids)


def test_a_plain_segment_still_works_beside_a_tee(tmp_path: Path) -> None:
    """Tee and plain segments share one agent; a plain one is untouched by the tee machinery."""
    async def main(t: LocalAgentTarget) -> tuple:
        r, w = os.pipe()
        out = Collector(r)
        plain = t.run_segment([ProcSpec("e", "echo plain")], SegmentIO(None, w, [None]))
        tee = tee_run(t, "head -c 1000000 /dev/zero", [([f"wc -c > {tmp_path}/n"], "host")])
        got = await asyncio.gather(plain, tee)
        await asyncio.get_running_loop().run_in_executor(None, out.join, 10)
        return got, bytes(out.data)
    got, out = run(main)
    assert out == b"plain\n" and (tmp_path / "n").read_text().strip() == "1000000"
    assert got[1][1].tee is not None and got[1][1].tee.bytes == 1000000

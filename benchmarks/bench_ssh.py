"""SSH target vs OpenSSH, side by side in one run, ratios printed.

    python benchmarks/bench_ssh.py [--size-mib 1024] [--repeat 3] [--commands 20]

Starts a real sshd on 127.0.0.2 (tests/peers/sshd.py) logging in as the dedicated test user, then:
1. SIZE of random bytes to `cat > /dev/null` on the host: clipipe (OpenSSH mux data plane, and the
   agent data plane) vs `ssh host 'cat > /dev/null' < file`, same cipher (aes128-gcm);
2. the same stream checksummed remotely (`sha256sum`) vs `ssh host sha256sum < file`;
3. N sequential ad-hoc commands (`true`) on one reused clipipe connection vs N `ssh host true`.
Times include connecting (clipipe: connect + agent boot + mux master; ssh: its handshake).
Ratio = OpenSSH time / clipipe time: above 1.0 clipipe is faster.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))

from peers.sshd import new_keyset, remove_keyset, start_sshd

from clipipe.targets.base import ProcSpec, SegmentIO
from clipipe.targets.contexts import parse_contexts


def best(times: list[float]) -> float:
    """The median of the runs (robust to one slow outlier)."""
    return statistics.median(times)


def ssh_stream(server, path: str, command: str) -> tuple[float, bytes]:
    """`ssh host COMMAND < path`: wall time and stdout."""
    with open(path, "rb") as f:
        t0 = time.perf_counter()
        r = subprocess.run(server.ssh_argv(command), stdin=f, capture_output=True, check=True)
        return time.perf_counter() - t0, r.stdout


async def clipipe_stream(contexts, name: str, path: str, command: str) -> tuple[float, bytes, str]:
    """Open the target, run one segment with the file as stdin, close: wall time, stdout, path used."""
    t0 = time.perf_counter()
    target = contexts.make_target(name)
    out_r, out_w = os.pipe()
    fd = os.open(path, os.O_RDONLY)
    try:
        outcomes = await target.run_segment([ProcSpec("s", command)], SegmentIO(fd, out_w, [None]))
        out = b""
        while chunk := os.read(out_r, 65536):
            out += chunk
        assert outcomes[0].ok, outcomes
        used = target.last_stats.path
    finally:
        os.close(out_r)
        await contexts.close_all()
    return time.perf_counter() - t0, out, used


async def clipipe_stream_warm(contexts, name: str, path: str, command: str) -> tuple[float, bytes]:
    """Like clipipe_stream but timing only the segment on an already open target (a later step)."""
    target = contexts.make_target(name)
    try:
        await target.run_segment([ProcSpec("warm", "true")], SegmentIO(None, None, [None]))
        if name == "mux":
            await target.mux_master()
        out_r, out_w = os.pipe()
        fd = os.open(path, os.O_RDONLY)
        t0 = time.perf_counter()
        outcomes = await target.run_segment([ProcSpec("s", command)], SegmentIO(fd, out_w, [None]))
        out = b""
        while chunk := os.read(out_r, 65536):
            out += chunk
        os.close(out_r)
        assert outcomes[0].ok, outcomes
        return time.perf_counter() - t0, out
    finally:
        await contexts.close_all()


async def clipipe_commands(contexts, name: str, n: int) -> float:
    """Open, run `true` n times (no streams: the agent path), close."""
    t0 = time.perf_counter()
    target = contexts.make_target(name)
    try:
        for _ in range(n):
            outcomes = await target.run_segment([ProcSpec("t", "true")], SegmentIO(None, None, [None]))
            assert outcomes[0].ok
    finally:
        await contexts.close_all()
    return time.perf_counter() - t0


def ssh_commands(server, n: int) -> float:
    """n sequential `ssh host true`."""
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run(server.ssh_argv("true"), check=True, capture_output=True)
    return time.perf_counter() - t0


def row(label: str, ours: float, theirs: float, size: int | None = None) -> str:
    rate = lambda t: f"{size / t / 1e6:8.0f} MB/s" if size else ""
    return (f"{label:<56} clipipe {ours:7.3f}s {rate(ours)}   openssh {theirs:7.3f}s {rate(theirs)}"
            f"   ratio {theirs / ours:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--commands", type=int, default=20)
    args = ap.parse_args()
    size = args.size_mib << 20

    keys = new_keyset()
    server = start_sshd(keys, "127.0.0.2")
    data_dir = tempfile.mkdtemp(prefix="clipipe-bench-")
    path = os.path.join(data_dir, "data")
    try:
        with open(path, "wb") as f:
            f.writelines(os.urandom(1 << 20) for _ in range(args.size_mib))
        contexts_text = ("contexts:\n" + server.contexts_yaml("mux", data_plane="openssh")
                         + server.contexts_yaml("agent", data_plane="agent"))
        print(f"sshd {server.address} as {server.user}; {args.size_mib} MiB stream; "
              f"median of {args.repeat}; cipher aes128-gcm@openssh.com; {os.cpu_count()} CPUs")

        def contexts():
            return parse_contexts(contexts_text)

        for title, command in (("stream to `cat > /dev/null`", "cat > /dev/null"),
                               ("stream to remote `sha256sum`", "sha256sum")):
            theirs, ref = [], b""
            ours: dict[str, list[float]] = {"mux": [], "agent": [], "warm": []}
            for _ in range(args.repeat):
                t, ref = ssh_stream(server, path, command)
                theirs.append(t)
                for name in ("mux", "agent"):
                    t, out, used = asyncio.run(clipipe_stream(contexts(), name, path, command))
                    assert out == ref, (name, out, ref)
                    assert used == {"mux": "openssh-mux", "agent": "agent"}[name], used
                    ours[name].append(t)
                t, out = asyncio.run(clipipe_stream_warm(contexts(), "mux", path, command))
                assert out == ref
                ours["warm"].append(t)
            print(row(f"{title} (openssh-mux path)", best(ours["mux"]), best(theirs), size))
            print(row(f"{title} (agent path)", best(ours["agent"]), best(theirs), size))
            print(row(f"{title} (mux, connection already open)", best(ours["warm"]), best(theirs), size))

        theirs_c = [ssh_commands(server, args.commands) for _ in range(args.repeat)]
        ours_c = [asyncio.run(clipipe_commands(contexts(), "agent", args.commands))
                  for _ in range(args.repeat)]
        print(row(f"{args.commands} ad-hoc `true` (one connection vs {args.commands} ssh)",
                  best(ours_c), best(theirs_c)))
    finally:
        server.stop()
        remove_keyset(keys)
        subprocess.run(["rm", "-rf", data_dir])


if __name__ == "__main__":
    main()

"""Remote tee: sha256 + gzip -1 to a file on the SSH host, side by side in one run, ratios printed.

    python benchmarks/bench_remote_tee.py [--size-mib 256] [--repeat 3]

Starts a real sshd on 127.0.0.2 (tests/peers/sshd.py, the dedicated test user) and a SIZE file of
half-compressible data on that host, then times the whole command a user runs, connect included:
1. OpenSSH: `ssh host 'tar cf - -C DIR . | tee >(sha256sum > SUM) | gzip -1 > OUT'` (bash);
2. clipipe, tee on the host (this change): `clipipe run -c host backup.yaml`, a tee with a sha256
   checksum branch, a progress branch and `gzip -1 | cat > OUT`;
3. clipipe, tee on the controller (what ran before; forced with CLIPIPE_REMOTE_TEE=0): every byte
   comes to the controller and goes back out for gzip.
Ratio = other time / clipipe-remote-tee time: above 1.0 the remote tee is faster. Each run's output
is checked (same sha256 from every tool, gzip output of the right size class), and clipipe's record
gives the bytes that crossed the wire.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from peers.sshd import new_keyset, remove_keyset, start_sshd  # noqa: E402

PIPELINE = """
name: remote-tee-bench
params:
  source: {type: path, default: /data}
  out: {type: path, default: /tmp/x.tar.gz}
steps:
  - {name: create-tar, command: "tar cf - -C {{.source}} .", output: stream}
  - name: process
    type: tee
    input: pipe
    branches:
      - {name: checksum, type: checksum, algorithm: sha256}
      - {name: progress, type: progress}
      - name: compress-save
        steps:
          - {command: "gzip -1", input: pipe, output: stream}
          - {command: "cat > {{.out}}", input: pipe}
"""


def make_source(directory: Path, size_mib: int) -> None:
    """SIZE MiB where each 64 KiB block is half random, half text: gzip -1 works, but not for free."""
    text = (b"clipipe remote tee benchmark line of text, fairly repetitive\n" * 600)[:32 * 1024]
    with open(directory / "data.bin", "wb") as f:
        for _ in range(size_mib * 16):
            f.write(os.urandom(32 * 1024) + text)


def clipipe_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "CLIPIPE_HOME": str(home), "PYTHONPATH": str(ROOT / "src"), **(extra or {})}
    return env


def run_clipipe(ctx: Path, pipe: Path, src: Path, out: str, home: Path, extra: dict[str, str] | None = None,
                ) -> tuple[float, dict]:
    """`clipipe run -c host` end to end: wall time, and the operation record."""
    env = clipipe_env(home, extra)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "clipipe", "--contexts", str(ctx), "run", "-q", "-c", "host", str(pipe),
                    f"--source={src}", f"--out={out}"], env=env, check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    res = subprocess.run([sys.executable, "-m", "clipipe", "ops", "list", "--json", "-n", "1"], env=env,
                         check=True, capture_output=True, text=True)
    return elapsed, json.loads(res.stdout.splitlines()[0])


def run_openssh(server, src: Path, out: str, sumfile: str) -> float:
    """The shell way over OpenSSH (bash for `>(...)`), waiting for sha256sum to finish too."""
    script = f"tar cf - -C {src} . | tee >(sha256sum > {sumfile}) | gzip -1 > {out}; wait"
    t0 = time.perf_counter()
    subprocess.run(server.ssh_argv(f"bash -c '{script}'"), check=True, stdin=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib << 20

    keys = new_keyset()
    server = start_sshd(keys, "127.0.0.2")
    work = Path(tempfile.mkdtemp(prefix="clipipe-bench-rtee-"))
    os.chmod(work, 0o777)
    try:
        src = work / "src"
        src.mkdir()
        make_source(src, args.size_mib)
        ctx = work / "contexts.yaml"
        ctx.write_text("contexts:\n" + server.contexts_yaml("host"))
        pipe = work / "backup.yaml"
        pipe.write_text(PIPELINE)
        home = work / "home"
        home.mkdir()
        print(f"sshd {server.address} as {server.user}; {args.size_mib} MiB tar stream; median of "
              f"{args.repeat}; cipher aes128-gcm@openssh.com; {os.cpu_count()} CPUs (shared, loaded machine)")
        times: dict[str, list[float]] = {"openssh": [], "remote": [], "controller": []}
        wire: dict[str, int] = {}
        digests: set[str] = set()
        for i in range(args.repeat):
            out = str(work / f"ssh-{i}.tar.gz")
            times["openssh"].append(run_openssh(server, src, out, str(work / f"sum-{i}")))
            digests.add((work / f"sum-{i}").read_text().split()[0])
            for name, extra in (("remote", None), ("controller", {"CLIPIPE_REMOTE_TEE": "0"})):
                out = str(work / f"{name}-{i}.tar.gz")
                t, rec = run_clipipe(ctx, pipe, src, out, home, extra)
                times[name].append(t)
                digests.add(rec["variables"]["checksum"])
                tee = next(s for s in rec["streams"] if s["type"] == "tee")
                assert tee["placement"] == name, tee
                if name == "remote":   # what the agent's segment sent and received
                    wire[name] = tee["wire"]["bytes_in"] + tee["wire"]["bytes_out"]
                else:                  # the stream came down to the tee, and went back up to gzip
                    wire[name] = 2 * tee["bytes_transferred"]
                os.unlink(out)
            os.unlink(work / f"ssh-{i}.tar.gz")
        assert len(digests) == 1, digests          # every tool hashed the same bytes
        tar_size = size + 10240                    # the one-file tar's headers and padding, about
        med = {k: statistics.median(v) for k, v in times.items()}
        for name, label in (("openssh", "ssh 'tar | tee >(sha256sum) | gzip -1 > f'"),
                            ("controller", "clipipe, tee on the controller (before)"),
                            ("remote", "clipipe, tee on the host (now)")):
            extra = f"; {wire[name] / 2**20:.1f} MiB over the wire" if name in wire else ""
            print(f"{label:<46} {med[name]:7.2f} s  {tar_size / med[name] / 2**20:7.1f} MiB/s{extra}")
        print(f"ratio openssh / clipipe-remote-tee:     {med['openssh'] / med['remote']:.2f}")
        print(f"ratio controller-tee / remote-tee:      {med['controller'] / med['remote']:.2f}")
        print(f"sha256 {digests.pop()} (the same from all three)")
    finally:
        server.stop()
        remove_keyset(keys)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

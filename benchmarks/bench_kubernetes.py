"""Kubernetes target vs the official client's own exec loop, side by side in one run, ratios printed.

    python benchmarks/bench_kubernetes.py [--size-mib 256] [--repeat 3]

No cluster and no kubectl here: the stand-in API server (tests/peers/kubeapi.py) serves the real exec
websocket protocol and runs the pod's command as a local process. Each variant streams SIZE bytes of
a file into `cat > /dev/null` in the pod:
1. clipipe: KubernetesTarget.run_segment with the file as the segment's stdin (agent over the exec
   websocket, v5.channel.k8s.io), connect + agent boot included;
2. the client loop a user script would write: `kubernetes.stream.stream(connect_get_namespaced_pod_exec,
   ..., _preload_content=False, binary=True)`, write_stdin() in 1 MiB chunks, close_channel(0),
   run_forever() for the exit status;
3. local `cat FILE | cat > /dev/null` (no Kubernetes at all): the ceiling.
Ratio = client-loop time / clipipe time: above 1.0 clipipe is faster. Both go through the same
stand-in (a Python server in a process of its own), which caps both; the local pipe shows how far
that is from the kernel. Times include connecting (clipipe: pod lookup + exec + agent boot).
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
sys.path.insert(0, str(ROOT))

from clipipe.targets import kubeclient  # noqa: E402
from clipipe.targets.base import ProcSpec, SegmentIO  # noqa: E402
from clipipe.targets.kubernetes import KubernetesSettings, KubernetesTarget  # noqa: E402

CHUNK = 1024 * 1024


async def clipipe_once(kubeconfig: str, path: str) -> float:
    """Open a target, stream the file into `cat > /dev/null` in the pod, close: wall seconds."""
    kubeclient.clear_cache()               # each run builds its client, as a fresh `clipipe run` would
    t0 = time.perf_counter()
    target = KubernetesTarget("bench", KubernetesSettings(kubeconfig=kubeconfig, pod="bench-0"))
    try:
        fd = os.open(path, os.O_RDONLY)
        outcomes = await target.run_segment([ProcSpec("sink", "cat > /dev/null")], SegmentIO(fd, None, [None]))
        assert outcomes[0].ok, outcomes
    finally:
        await target.close()
    return time.perf_counter() - t0


def client_loop_once(kubeconfig: str, path: str) -> float:
    """What a script using the official client does: stream(), write_stdin() chunks, close, wait."""
    from kubernetes import client, config
    from kubernetes.stream import stream

    kubeclient.clear_cache()
    t0 = time.perf_counter()
    api = client.CoreV1Api(config.new_client_from_config(kubeconfig, persist_config=False))
    ws = stream(api.connect_get_namespaced_pod_exec, "bench-0", "default",
                command=["sh", "-c", "cat > /dev/null"], stdin=True, stdout=True, stderr=True, tty=False,
                _preload_content=False, binary=True)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            ws.write_stdin(chunk)
            ws.update(timeout=0)           # keep reading stdout/stderr so neither side stalls
    ws.close_channel(0)
    ws.run_forever(timeout=600)
    assert ws.returncode == 0, ws.returncode
    ws.close()
    return time.perf_counter() - t0


def warm_up(kubeconfig: str) -> None:
    """Import the client and build one CoreV1Api (~0.4 s once per process) before anything is timed."""
    from kubernetes import client, config

    client.CoreV1Api(config.new_client_from_config(kubeconfig, persist_config=False))


def local_once(path: str) -> float:
    """`cat FILE | cat > /dev/null` on this machine."""
    t0 = time.perf_counter()
    subprocess.run(f"cat {path} | cat > /dev/null", shell=True, check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    size = args.size_mib * 1024 * 1024
    tmp = Path(tempfile.mkdtemp(prefix="bench-k8s-"))
    kc = str(tmp / "kubeconfig")
    # the stand-in in a process of its own, as an API server is: it must not share our GIL
    server = subprocess.Popen([sys.executable, "-m", "tests.peers.kubeapi", kc, "bench-0"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().startswith("ready")
        data = tmp / "data.bin"
        with open(data, "wb") as f:
            for _ in range(args.size_mib):
                f.write(os.urandom(1024 * 1024))
        warm_up(kc)
        times: dict[str, list[float]] = {"clipipe": [], "client loop": [], "local cat|cat": []}
        for _ in range(args.repeat):         # interleaved, so machine load hits all variants alike
            times["clipipe"].append(asyncio.run(clipipe_once(kc, str(data))))
            times["client loop"].append(client_loop_once(kc, str(data)))
            times["local cat|cat"].append(local_once(str(data)))
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"{args.size_mib} MiB into `cat > /dev/null` in a stand-in pod, median of {args.repeat} "
              f"(shared, loaded 2-vCPU machine):")
        for k, t in med.items():
            print(f"  {k:14s} {t:7.3f} s  {size / t / 1e6:8.1f} MB/s")
        print(f"ratio client loop / clipipe: {med['client loop'] / med['clipipe']:.2f}x "
              f"(above 1.0: clipipe faster)")
        print(f"ratio local pipe / clipipe:  {med['local cat|cat'] / med['clipipe']:.3f}x (the kernel's ceiling)")
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(30)
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()


if __name__ == "__main__":
    main()

"""JSON message streams: `command` source -> route -> stdout, side by side with jq and cat.

    python benchmarks/bench_jsonstream.py [--mb 40] [--repeat 3] [--pretty]

The stream is an LLM-CLI-like NDJSON event stream (types text, tool_use, error, system, ...) in a
file, produced by `cat FILE` in every case, so each tool reads the same bytes from a pipe:

    cat:      cat FILE | cat > /dev/null                                  (the ceiling: pipes only)
    jq:       cat FILE | jq -c 'if .type=="text" then {type,text} elif .type=="tool_use"
                               then del(.input) elif .type=="error" then . else empty end'
    clipipe:  source {type: command, command: "cat FILE"} -> route (same three routes) -> stdout
    clipipe:  the same with route mode: concurrent (does a thread pool help? GIL-bound steps: no)

Every figure includes process start-up (each run is a fresh process); best of --repeat. The seed's
floor (10 MB/s) is printed as the goal line. Measure on a quiet machine; on a shared one the ratios
hold better than the absolute figures.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")
FLOOR_MB_S = 10.0  # seed 002: sustained large streams at 10 MB/s at least
JQ = ('if .type=="text" then {type,text} elif .type=="tool_use" then del(.input) '
      'elif .type=="error" then . else empty end')


def make_stream(path: str, mb: int, pretty: bool) -> int:
    """Write ~`mb` MB of events; returns the number of messages."""
    rnd = random.Random(2)
    n = size = 0
    with open(path, "w") as f:
        while size < mb * 1_000_000:
            kind = rnd.choice(["text", "text", "tool_use", "tool_result", "error", "system"])
            ev = {"type": kind, "index": n, "session": "s-1",
                  "text": "token " * rnd.randint(1, 30), "input": {"command": f"ls /tmp/{n}", "timeout": 30}}
            line = json.dumps(ev, indent=2 if pretty else None) + "\n"
            f.write(line)
            size += len(line)
            n += 1
    return n


def pipeline_yaml(path: str, data: str, mode: str) -> None:
    with open(path, "w") as f:
        f.write(f"""name: bench-jsonstream
type: batch
source:
  type: command
  command: "cat {data}"
  buffer: {{size: 4000, policy: block}}
  batch_size: 2000
  summary: false
steps:
  - name: by-type
    route:
      field: type
      mode: {mode}
      routes:
        - {{match: text, priority: 10, steps: [{{select: [type, text]}}]}}
        - {{match: tool_use, steps: [{{exclude: [input]}}]}}
        - {{match: error}}
      default: drop
output: {{type: stdout, flush_every: 0}}
""")


def timed(cmd: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + sys of every process of the run: on a shared machine
    the CPU figure is the steadier one)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(["bash", "-c", cmd], check=True, env=env, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=40)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pretty", action="store_true", help="pretty-printed (multi-line) messages")
    a = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tmp = tempfile.mkdtemp(prefix="clipipe-bench-js-")
    try:
        data = os.path.join(tmp, "events.json")
        n = make_stream(data, a.mb, a.pretty)
        size = os.path.getsize(data)
        py = sys.executable
        cases = [("cat (ceiling)", f"cat {data} | cat > /dev/null")]
        if shutil.which("jq"):
            cases.append(("jq -c", f"cat {data} | jq -c '{JQ}' > /dev/null"))
        else:
            print("jq not found: skipping it")
        for mode in ("sync", "concurrent"):
            p = os.path.join(tmp, f"p-{mode}.yaml")
            pipeline_yaml(p, data, mode)
            cases.append((f"clipipe route {mode}", f"{py} -m clipipe run -q {p} > /dev/null"))
        # the outputs agree (same records in the same order) before anything is timed
        if shutil.which("jq"):
            ours = subprocess.run([py, "-m", "clipipe", "run", "-q", os.path.join(tmp, "p-sync.yaml")],
                                  env=env, capture_output=True, text=True, check=True).stdout.splitlines()
            theirs = subprocess.run(["bash", "-c", f"jq -c '{JQ}' {data}"], capture_output=True, text=True,
                                    check=True).stdout.splitlines()
            assert [json.loads(x) for x in ours] == [json.loads(x) for x in theirs], "outputs differ"
        print(f"{n:,} messages, {size / 1e6:.0f} MB {'pretty-printed' if a.pretty else 'NDJSON'}; "
              f"best of {a.repeat}, start-up included")
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for _ in range(a.repeat):  # interleaved, so a busy moment doesn't hit one tool only
            for label, cmd in cases:
                wall, used = timed(cmd, env)
                best[label] = min(best.get(label, wall), wall)
                cpu[label] = min(cpu.get(label, used), used)
        ref = {k: best[k] for k in ("cat (ceiling)", "jq -c") if k in best}
        print(f"{'':<24} {'wall':>18} {'':>17}   {'CPU (user+sys, all processes)':>30}")
        for label, _ in cases:
            t = best[label]
            ratios = "  ".join(f"{t / r:6.2f}x {k.split()[0]}'s time" for k, r in ref.items() if k != label)
            print(f"{label:<24} {size / t / 1e6:8.1f} MB/s {n / t:>11,.0f} msg/s   "
                  f"{cpu[label]:6.2f} s CPU ({size / max(cpu[label], 1e-9) / 1e6:7.1f} MB per CPU-s)   {ratios}")
        print(f"{'goal (seed floor)':<24} {FLOOR_MB_S:8.1f} MB/s")
        if "jq -c" in best:
            print(f"clipipe (sync) vs jq: {best['jq -c'] / best['clipipe route sync']:.2f}x jq's throughput "
                  f"(wall), {cpu['jq -c'] / cpu['clipipe route sync']:.2f}x (CPU); concurrent vs sync: "
                  f"{best['clipipe route sync'] / best['clipipe route concurrent']:.2f}x (wall)")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

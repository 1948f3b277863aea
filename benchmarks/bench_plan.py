"""Planning speed and parallel overhead (issue 3), printed as figures and ratios.

    python benchmarks/bench_plan.py            # 100 and 10,000 generated steps; 10 x sleep 1

Seed targets: DAG analysis of 100 steps < 10 ms; ours: 10,000 steps < 0.5 s (parse + plan).
Parallel overhead: 10 steps of `sleep 1` run by clipipe vs the ideal 1 s (seed: < 5 %), side by side
with the shell doing the same (`sleep 1 & ... wait`).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

from clipipe.plan.dag import build_plan
from clipipe.spec.parse import parse_pipeline
from clipipe.spec.yamlmarks import loads


def generated(n: int) -> str:
    """A pipeline of n steps: a wide, deep DAG with depends_on, streams and variables."""
    lines = ["name: gen", "params:", "  level: {type: int, default: 3}", "steps:"]
    for i in range(n):
        extra = ""
        if i % 10 == 1:
            lines.append(f"  - {{name: s{i}, run: 'cat', input: pipe, output: 'variable:v{i}'}}")
            continue
        if i % 10 == 0:
            extra = ", output: stream"
        elif i > 10:
            extra = f", depends_on: [s{i - 10}, s{(i * 7) % (i - 1)}]"
        ref = f" {{{{.v{i - 4}}}}}" if i % 10 == 5 and i > 10 else ""
        lines.append(f"  - {{name: s{i}, run: 'echo {i}{ref} {{{{.level}}}}'{extra}}}")
    return "\n".join(lines) + "\n"


def time_plan(n: int, repeat: int = 5) -> tuple[float, float]:
    """Best (parse+plan, plan only) seconds over `repeat` runs."""
    text = generated(n)
    best_all = best_plan = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        pipeline = parse_pipeline(loads(text, "gen.yaml"), "gen.yaml")
        t1 = time.perf_counter()
        build_plan(pipeline, known_values=["name", "date"])
        t2 = time.perf_counter()
        best_all = min(best_all, t2 - t0)
        best_plan = min(best_plan, t2 - t1)
    return best_all, best_plan


def wall(cmd: list[str]) -> float:
    """Seconds one command takes."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    for n, target in ((100, 0.010), (10_000, 0.5)):
        both, plan_only = time_plan(n, 5 if n <= 1000 else 2)
        print(f"plan {n:>6} steps: plan {plan_only * 1000:8.2f} ms, parse+plan {both * 1000:8.1f} ms "
              f"(target {target * 1000:.0f} ms: {'ok' if plan_only < target else 'MISSED'})")
    with tempfile.TemporaryDirectory() as d:
        def pipeline(cmd: str) -> list[str]:
            path = os.path.join(d, f"{cmd.split()[0]}.yaml")
            with open(path, "w") as f:
                f.write("name: ten\nsteps:\n" + "".join(f"  - {{name: s{i}, run: '{cmd}'}}\n" for i in range(10)))
            return [sys.executable, "-m", "clipipe", "run", "-q", "--jobs", "10", path]

        fixed = min(wall(pipeline("true")) for _ in range(3))   # start-up, imports, state store, 10 spawns
        clip = min(wall(pipeline("sleep 1")) for _ in range(3))
        shell = min(wall(["bash", "-c", "for i in $(seq 10); do sleep 1 & done; wait"]) for _ in range(3))
        print(f"10 x sleep 1: clipipe {clip:.3f} s, bash & + wait {shell:.3f} s, ideal 1.000 s; "
              f"clipipe's fixed cost (10 x true) {fixed:.3f} s")
        print(f"  parallel overhead: {100 * (clip - fixed - 1):.1f} % of the ideal beyond the fixed cost; "
              f"{100 * (clip - 1):.1f} % all in; ratio shell/clipipe {shell / clip:.2f}")


if __name__ == "__main__":
    main()

"""Fleet ad-hoc commands: `uname -a` on 10 and 50 loopback sshd hosts, side by side, in one run.

    clipipe run -c first50 --forks 50 "uname -a"
    ansible all -i INV -m shell -a 'uname -a' -f 50      (ansible-core from PyPI, throwaway venv)
    python -c 'ParallelSSHClient(...).run_command(...)'  (parallel-ssh from PyPI, pool_size 50)
    for h in ...; do ssh h uname -a & done; wait         (OpenSSH client, bash)

Every tool is started as a fresh process (what a user types), logs in as the same dedicated user with
the same key and the same known_hosts, and is checked to have printed one `Linux` line per host.
All three Python tools run from the same throwaway venv: clipipe is `pip install`ed there from this
checkout at every benchmark start (its console script, bytecode compiled as pip does for users), so
no tool pays for what the machine's own site-packages load at start-up (this sandbox's .pth files).
Ansible gets a fresh ControlPath directory each time (no warm ControlPersist masters from an earlier
trial). Prints the median of --repeat trials, the ratios, and the goals: >= 10x faster than Ansible,
>= 1.0x parallel-ssh, 50 hosts in <= 2x the 10-host time.

    python benchmarks/bench_fleet.py [--venv /tmp/fleetbench-venv] [--repeat 3]

The venv is made (python -m venv + pip install ansible-core parallel-ssh) when missing; it is never a
dependency of clipipe.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from peers.sshd import SSHServer, new_keyset, remove_keyset, start_fleet  # noqa: E402

SIZES = (10, 50)
COMMAND = "uname -a"

PSSH_SCRIPT = """
import sys
from pssh.clients import ParallelSSHClient
from pssh.config import HostConfig
hosts, ports = sys.argv[1].split(","), [int(p) for p in sys.argv[2].split(",")]
client = ParallelSSHClient(hosts, user=sys.argv[3], pkey=sys.argv[4], pool_size=int(sys.argv[5]),
                           host_config=[HostConfig(port=p) for p in ports], num_retries=1)
out = client.run_command(sys.argv[6])
client.join(out)
for o in out:
    for line in o.stdout:
        print(o.host, line)
"""


def ensure_venv(venv: Path) -> None:
    """The throwaway venv with ansible-core and parallel-ssh (made once, under /tmp)."""
    if (venv / "bin" / "ansible").exists() and (venv / "bin" / "python").exists():
        return
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "ansible-core", "parallel-ssh"], check=True)


def install_clipipe(venv: Path) -> None:
    """This checkout, installed (not editable) into the venv: what a user's `pip install` gives."""
    pip = str(venv / "bin" / "pip")
    if not (venv / "bin" / "clipipe").exists():
        subprocess.run([pip, "install", "-q", str(ROOT)], check=True)          # its dependencies, once
    subprocess.run([pip, "install", "-q", "--force-reinstall", "--no-deps", str(ROOT)], check=True)


def write_files(work: Path, servers: list[SSHServer]) -> None:
    """contexts.yaml (groups first10, first50) and one Ansible inventory per size."""
    names = [f"h{i:02d}" for i in range(1, len(servers) + 1)]
    text = "contexts:\n  local: {type: local, default: true}\n"
    text += "".join(s.contexts_yaml(n) for s, n in zip(servers, names))
    text += "groups:\n" + "".join(f"  first{n}: [{', '.join(names[:n])}]\n" for n in SIZES)
    (work / "contexts.yaml").write_text(text)
    s0 = servers[0]
    for n in SIZES:
        lines = [f"{name} ansible_host={s.host} ansible_port={s.port}" for name, s in zip(names[:n], servers)]
        lines += ["", "[all:vars]", f"ansible_user={s0.user}", f"ansible_ssh_private_key_file={s0.key}",
                  "ansible_python_interpreter=/usr/bin/python3",
                  f"ansible_ssh_common_args='-o UserKnownHostsFile={s0.known_hosts} -o StrictHostKeyChecking=yes'"]
        (work / f"inventory-{n}.ini").write_text("\n".join(lines) + "\n")


def timed(argv: list[str], env: dict[str, str] | None = None, shell: bool = False) -> tuple[float, str]:
    """Wall seconds of one process run, and its stdout (a failure aborts the benchmark)."""
    t0 = time.perf_counter()
    r = subprocess.run(argv if not shell else argv[0], capture_output=True, text=True, env=env, shell=shell,
                       executable="/bin/bash" if shell else None, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {argv if not shell else argv[0][:200]}\n{r.stderr[-2000:]}")
    return dt, r.stdout


def check(out: str, n: int, what: str) -> None:
    count = out.count("Linux ")
    if count != n:
        raise SystemExit(f"{what}: expected {n} `Linux` lines, got {count}:\n{out[:2000]}")


def run_tools(work: Path, servers: list[SSHServer], venv: Path, n: int) -> dict[str, float]:
    """One trial of every tool on the first n hosts; seconds per tool."""
    hosts = servers[:n]
    s0 = servers[0]
    env = {**os.environ, "CLIPIPE_HOME": str(work / "state")}
    out: dict[str, float] = {}

    dt, so = timed([str(venv / "bin" / "clipipe"), "--contexts", str(work / "contexts.yaml"), "run", "-q",
                    "-c", f"first{n}", "--forks", str(n), COMMAND], env)
    check(so, n, "clipipe")
    out["clipipe"] = dt

    with tempfile.TemporaryDirectory(prefix="ansible-cp-") as cp:
        aenv = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_SSH_CONTROL_PATH_DIR": cp,
                "ANSIBLE_LOCAL_TEMP": str(work / "ansible-tmp"), "ANSIBLE_NOCOLOR": "1",
                "ANSIBLE_DEPRECATION_WARNINGS": "False", "ANSIBLE_LOAD_CALLBACK_PLUGINS": "0",
                "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
        dt, so = timed([str(venv / "bin" / "ansible"), "all", "-i", str(work / f"inventory-{n}.ini"),
                        "-m", "shell", "-a", COMMAND, "-f", str(n)], aenv)
    check(so, n, "ansible")
    out["ansible"] = dt

    dt, so = timed([str(venv / "bin" / "python"), "-c", PSSH_SCRIPT, ",".join(s.host for s in hosts),
                    ",".join(str(s.port) for s in hosts), s0.user, str(s0.key), str(n), COMMAND])
    check(so, n, "parallel-ssh")
    out["parallel-ssh"] = dt

    loop = " ".join(f"ssh -F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=yes "
                    f"-o UserKnownHostsFile={s.known_hosts} -o IdentitiesOnly=yes -i {s.key} "
                    f"-p {s.port} {s.user}@{s.host} {COMMAND!r} &" for s in hosts)
    dt, so = timed([loop + " wait"], shell=True)
    check(so, n, "bash loop")
    out["bash ssh &"] = dt
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--venv", default="/tmp/fleetbench-venv", help="throwaway venv for ansible-core, parallel-ssh")
    ap.add_argument("--repeat", type=int, default=3, help="trials per tool and size (median shown)")
    args = ap.parse_args()
    venv = Path(args.venv)
    ensure_venv(venv)
    install_clipipe(venv)
    keys = new_keyset()
    servers: list[SSHServer] = []
    work = Path(tempfile.mkdtemp(prefix="clipipe-bench-fleet-"))
    try:
        servers = start_fleet(max(SIZES), keys)
        write_files(work, servers)
        results: dict[int, dict[str, float]] = {}
        for n in SIZES:
            trials = [run_tools(work, servers, venv, n) for _ in range(args.repeat)]
            results[n] = {tool: statistics.median(t[tool] for t in trials) for tool in trials[0]}
        report(results)
    finally:
        for s in servers:
            s.stop()
        remove_keyset(keys)
    return 0


def report(results: dict[int, dict[str, float]]) -> None:
    """Seconds per tool and size, ratios to clipipe, and the goals."""
    tools = list(results[SIZES[0]])
    print(f"\n`{COMMAND}` on loopback sshd hosts, forks = hosts, median wall seconds "
          f"(a fresh process per run; {os.cpu_count()} CPUs)")
    print(f"{'tool':<14}" + "".join(f"{f'{n} hosts':>12}{'x clipipe':>11}" for n in SIZES))
    for tool in tools:
        row = f"{tool:<14}"
        for n in SIZES:
            secs = results[n][tool]
            row += f"{secs:>11.2f}s{secs / results[n]['clipipe']:>10.2f}x"
        print(row)
    c10, c50 = results[10]["clipipe"], results[50]["clipipe"]
    goals = [
        ("clipipe >= 10x faster than Ansible (10 hosts)", results[10]["ansible"] / c10, 10.0, True),
        ("clipipe >= 10x faster than Ansible (50 hosts)", results[50]["ansible"] / c50, 10.0, True),
        ("clipipe >= 1.0x parallel-ssh (10 hosts)", results[10]["parallel-ssh"] / c10, 1.0, True),
        ("clipipe >= 1.0x parallel-ssh (50 hosts)", results[50]["parallel-ssh"] / c50, 1.0, True),
        ("50 hosts in <= 2x the 10-host time", c50 / c10, 2.0, False),
    ]
    print()
    for text, value, limit, higher in goals:
        ok = value >= limit if higher else value <= limit
        print(f"  {'PASS' if ok else 'MISS'}  {text}: {value:.2f}x")


if __name__ == "__main__":
    sys.exit(main())

"""Fleet runs against 10+ real sshd peers on 127.0.0.2 ... (one sshd per loopback address).

Each test runs the real CLI in a subprocess, as a user would: selection, forks, live output modes,
the summary, exit codes and the operation record. Nothing is mocked: unreachable is a port where
nothing listens, a failure is a real exit status, a drop is the host's sshd killed mid-command.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from peers.fleet import contexts_yaml, dead_context, inventory_ini, kill_tree
from peers.sshd import KeySet, SSHServer, start_fleet, start_sshd

pytestmark = pytest.mark.ssh

SRC = str(Path(__file__).resolve().parents[2] / "src")
N = 10
NAMES = [f"web-{i}" for i in range(1, N + 1)]

#: A remote shell snippet naming the server address the command runs on (one address per sshd).
WHERE = "$(echo $SSH_CONNECTION | cut -d' ' -f3)"


@pytest.fixture(scope="module")
def fleet(ssh_keys: KeySet) -> Iterator[list[SSHServer]]:
    """10 sshd on 127.0.0.2 .. 127.0.0.11 sharing keys and one known_hosts."""
    servers = start_fleet(N, ssh_keys)
    yield servers
    for s in servers:
        s.stop()


@pytest.fixture
def home(tmp_path: Path, fleet: list[SSHServer]) -> Path:
    """A run directory: contexts.yaml (web-1..10, a dead host, groups) and a state store."""
    groups = ("  web: ['web-*']\n  odd: [web-1, web-3, web-5]\n  with-dead: [web, dead]\n"
              "  nested: [odd, web-10]\n")
    (tmp_path / "contexts.yaml").write_text(contexts_yaml(fleet, NAMES, dead_context("dead"), groups))
    return tmp_path


def cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`clipipe --contexts HOME/contexts.yaml ARGS`, with the store under HOME."""
    return subprocess.run([sys.executable, "-m", "clipipe", "--contexts", str(home / "contexts.yaml"), *args],
                          capture_output=True, text=True, timeout=timeout, env=env_for(home))


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "CLIPIPE_HOME": str(home / "state"), "PYTHONPATH": SRC}


def record(home: Path, op_id: str) -> dict:
    """The stored operation record, through `clipipe ops show --json`."""
    r = cli(home, "ops", "show", op_id, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def by_host(rec: dict) -> dict[str, dict]:
    return {h["host"]: h for h in rec["hosts"]}


def test_all_ok_prefix_output_summary_and_record(home: Path) -> None:
    r = cli(home, "run", "-c", "web", "echo hello from " + WHERE)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == N
    for i, name in enumerate(NAMES):
        assert f"{name.ljust(6)} | hello from 127.0.0.{i + 2}" in lines
    assert "10 hosts: 10 ok" in r.stderr
    assert "Recap: 10 distinct outputs" in r.stderr
    op_id = r.stderr.split("Operation ID: ", 1)[1].split(":", 1)[0]
    rec = record(home, op_id)
    assert rec["type"] == "fleet" and rec["status"] == "ok" and rec["exit_code"] == 0
    assert rec["summary"] == {"ok": N, "failed": 0, "unreachable": 0, "cancelled": 0}
    hosts = by_host(rec)
    assert list(hosts) == NAMES
    for name in NAMES:
        h = hosts[name]
        assert h["status"] == "ok" and h["exit_code"] == 0
        shown = next(x for x in lines if x.startswith(name.ljust(6) + " |")).split(" | ", 1)[1]
        assert h["bytes_out"] == len(shown) + 1
        assert h["duration_ms"] >= h["connect_ms"] > 0
        assert h["target"]["address"].startswith("ssh://")
    assert rec["bytes_out"] == sum(h["bytes_out"] for h in rec["hosts"])


def test_failed_and_unreachable_hosts_do_not_stop_the_others(home: Path) -> None:
    fail_on = "127.0.0.4"        # web-3
    cmd = f'case "{WHERE}" in {fail_on}) echo boom >&2; exit 7;; esac; echo fine'
    r = cli(home, "run", "-c", "with-dead", "--json", cmd)
    assert r.returncode == 4, r.stderr                      # some failed and some unreachable
    rec = json.loads(r.stdout)
    hosts = by_host(rec)
    assert hosts["web-3"]["status"] == "failed" and hosts["web-3"]["exit_code"] == 7
    assert hosts["dead"]["status"] == "unreachable" and hosts["dead"]["reason_kind"] == "refused"
    assert "connection refused" in hosts["dead"]["reason"]
    assert [n for n, h in hosts.items() if h["status"] == "ok"] == [n for n in NAMES if n != "web-3"]
    assert "web-3  | boom" in r.stderr                      # live output goes to stderr under --json

    only_failed = cli(home, "run", "-c", "web", cmd)
    assert only_failed.returncode == 1
    assert "1 failed" in only_failed.stderr and "exited with status 7" in only_failed.stderr
    only_dead = cli(home, "run", "-c", "web-1,web-2,dead", "true")
    assert only_dead.returncode == 3
    assert "refused: connection refused" in only_dead.stderr


def test_unreachable_reasons_auth_and_host_key(home: Path, fleet: list[SSHServer], tmp_path: Path) -> None:
    s = fleet[0]
    wrong_kh = tmp_path / "empty_known_hosts"
    wrong_kh.write_text("")
    extra = (s.contexts_yaml("badkey", known_hosts=str(wrong_kh))
             + s.contexts_yaml("baduser", user="nobody-here"))
    (home / "contexts.yaml").write_text(contexts_yaml(fleet[:2], NAMES[:2], extra))
    r = cli(home, "run", "-c", "all,!local", "--output", "json", "true")
    assert r.returncode == 3, r.stderr
    rows = {j["host"]: j for j in map(json.loads, r.stdout.splitlines())}
    assert rows["badkey"]["reason_kind"] == "host-key" and "unknown" in rows["badkey"]["reason"]
    assert rows["baduser"]["reason_kind"] == "auth"
    assert rows["web-1"]["status"] == rows["web-2"]["status"] == "ok"


def test_a_host_that_drops_mid_run(home: Path, fleet: list[SSHServer], ssh_keys: KeySet) -> None:
    victim = start_sshd(ssh_keys, "127.0.0.40", known_hosts=fleet[0].known_hosts)
    try:
        (home / "contexts.yaml").write_text(contexts_yaml([*fleet, victim], [*NAMES, "victim"]))
        cmd = (f'case "{WHERE}" in 127.0.0.40) echo started; sleep 60;; '
               f'*) sleep 2; echo done;; esac')
        proc = subprocess.Popen([sys.executable, "-m", "clipipe", "--contexts", str(home / "contexts.yaml"),
                                 "run", "-c", "all,!local", "--json", cmd], env=env_for(home),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:                # live: the victim's first line arrives before the end
            seen.append(line)
            if line.startswith("victim") and "started" in line:
                break
        t_kill = time.monotonic()
        kill_tree(victim)
        out, err = proc.communicate(timeout=30)
        assert time.monotonic() - t_kill < 15           # nobody waits for the dead host's 60 s
        assert proc.returncode == 3, "".join(seen) + err
        hosts = by_host(json.loads(out))
        assert hosts["victim"]["status"] == "unreachable"
        assert hosts["victim"]["reason_kind"] == "connection-lost", hosts["victim"]
        assert all(hosts[n]["status"] == "ok" for n in NAMES)
    finally:
        victim.stop()


def test_forks_limit_from_remote_timestamps(home: Path) -> None:
    """Concurrency measured from start/end times the remote commands print, not from our timing."""
    cmd = 's=$(date +%s.%N); sleep 0.4; e=$(date +%s.%N); echo "$s $e"'
    r = cli(home, "run", "-c", "web", "--forks", "3", "--output", "json", cmd)
    assert r.returncode == 0, r.stderr
    spans = [tuple(map(float, json.loads(x)["stdout"].split())) for x in r.stdout.splitlines()]
    assert len(spans) == N
    events = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans], key=lambda t: (t[0], t[1]))
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert peak == 3, spans                  # never more than --forks, and the forks are used

    r = cli(home, "run", "-c", "web", "--forks", "10", "--output", "json", cmd)
    spans = [tuple(map(float, json.loads(x)["stdout"].split())) for x in r.stdout.splitlines()]
    assert max(s for s, _ in spans) < min(e for _, e in spans)  # all 10 overlapped


def test_output_grouped_folds_identical_outputs(home: Path) -> None:
    cmd = f'case "{WHERE}" in 127.0.0.2|127.0.0.3) echo special;; *) echo same; echo lines;; esac'
    r = cli(home, "run", "-c", "web", "--output", "grouped", cmd)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("same\nlines\n") == 1 and out.count("special\n") == 1
    assert out.count("same output as") == N - 2
    assert out.count("── web-") == N
    assert "Recap: 2 distinct outputs" in r.stderr
    assert "web-[3-10] (8 hosts): 2 lines" in r.stderr
    assert "web-[1-2] (2 hosts): 1 line" in r.stderr


def test_output_json_one_object_per_host(home: Path) -> None:
    r = cli(home, "run", "-c", "odd,web-10", "--output", "json", "echo out; echo err >&2; exit 2")
    assert r.returncode == 1
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["host"] for x in rows] == ["web-1", "web-3", "web-5", "web-10"]
    for x in rows:
        assert (x["stdout"], x["stderr"], x["exit_code"], x["status"]) == ("out\n", "err\n", 2, "failed")


def test_selection_globs_exclusions_limit_and_single_context(home: Path) -> None:
    r = cli(home, "run", "-c", "web-1*,nested,!web-5", "--limit", "web-1,web-3,web-10,web-2",
            "--output", "json", "true")
    assert [json.loads(x)["host"] for x in r.stdout.splitlines()] == ["web-1", "web-10", "web-3"]
    one = cli(home, "run", "-c", "web-2", "echo plain")     # one context: the single-context run
    assert one.returncode == 0 and one.stdout == "plain\n"
    bad = cli(home, "run", "-c", "wbe", "true")
    assert bad.returncode == 2 and "did you mean 'web'" in bad.stderr and "Traceback" not in bad.stderr


def test_inventory_driven_run(home: Path, fleet: list[SSHServer]) -> None:
    names = [f"node{i:02d}" for i in range(1, N + 1)]
    groups = {n: ("app" if i < 6 else "db") for i, n in enumerate(names)}
    text = inventory_ini(fleet, names, groups) + "\n[prod:children]\napp\ndb\n"
    inv = home / "hosts.ini"
    inv.write_text(text)
    r = subprocess.run([sys.executable, "-m", "clipipe", "run", "-i", str(inv), "-c", "prod",
                        "--limit", "!node03", "--output", "json", "echo " + WHERE],
                       capture_output=True, text=True, timeout=60, env=env_for(home), cwd=home / "state"
                       if (home / "state").exists() else home)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["host"] for x in rows] == [n for n in names if n != "node03"]
    assert all(x["stdout"] == f"127.0.0.{names.index(x['host']) + 2}\n" for x in rows)

    yaml_inv = home / "hosts.yaml"
    lines = ["all:", "  vars:", f"    ansible_user: {fleet[0].user}",
             f"    ansible_ssh_private_key_file: {fleet[0].key}",
             f"    clipipe_known_hosts: {fleet[0].known_hosts}", "  children:", "    db:", "      hosts:"]
    lines += [f"        {n}: {{ansible_host: {s.host}, ansible_port: {s.port}}}" for n, s in zip(names, fleet)][:3]
    yaml_inv.write_text("\n".join(lines) + "\n")
    r = cli(home, "run", "-i", str(yaml_inv), "-c", "db", "--output", "json", "echo yaml")
    assert r.returncode == 0, r.stderr
    assert [json.loads(x)["host"] for x in r.stdout.splitlines()] == names[:3]


def test_pipeline_on_a_fleet_reuses_one_connection_and_one_agent_per_host(home: Path) -> None:
    (home / "p.yaml").write_text(
        "name: three-steps\nsteps:\n"
        "  - {name: first, command: 'echo one'}\n"
        "  - {name: second, command: 'echo two; exit 0', depends_on: [first]}\n"
        "  - {name: gen, command: 'seq 3', output: stream, depends_on: [second]}\n"
        "  - {name: total, command: 'paste -sd+ | bc', input: pipe}\n")
    r = cli(home, "run", "-c", "odd", "--json", str(home / "p.yaml"))
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout)
    assert "web-3 | [first] one" in r.stderr and "web-3 | [second] two" in r.stderr
    assert "web-3 | [total] 6" in r.stderr
    for h in rec["hosts"]:
        assert [s["name"] for s in h["steps"]] == ["first", "second", "gen", "total"]
        assert all(s["status"] == "ok" for s in h["steps"])
        t = h["target"]
        # the two plain commands took exec channels of the host's one connection; the piped pair ran
        # as one segment through the agent, booted once for it
        assert t["streams"]["exec"]["segments"] == 2, t
        assert t["streams"]["agent"]["segments"] == 1, t
        assert t["agent"]["hostname"] and t["transport"] == "asyncssh+agent"


def test_no_stale_targets_across_runs(fleet: list[SSHServer], home: Path) -> None:
    """Library level: every target a fleet run opened is closed at its end; the next run opens anew."""
    from clipipe.engine.fleet import Fleet, FleetPool, load_catalog
    from clipipe.engine.output import Console
    from clipipe.spec.parse import adhoc_pipeline

    conns = []
    for _ in range(2):
        pool = FleetPool(load_catalog(str(home / "contexts.yaml")))
        made = []
        orig = pool.make

        def make(name: str, orig=orig, made=made):
            t = orig(name)
            made.append(t)
            return t

        pool.make = make  # type: ignore[method-assign]
        devnull = open(os.devnull, "w")
        f = Fleet(adhoc_pipeline("true"), {}, ["web-1", "web-2"], pool, Console(devnull, devnull), adhoc=True)
        result = asyncio.run(f.run())
        assert [h.status for h in result.hosts] == ["ok", "ok"]
        assert all(t.conn is None for t in made)
        conns.append({id(t) for t in made})
    assert not conns[0] & conns[1]


def test_rerun_failed_runs_only_the_hosts_that_did_not_succeed(home: Path, tmp_path: Path) -> None:
    flag = Path(tempfile.mkdtemp(prefix="clipipe-rerun-")) / "fixed"   # readable by the login user
    os.chmod(flag.parent, 0o755)             # the failure goes away once this file exists
    cmd = (f'case "{WHERE}" in 127.0.0.4|127.0.0.6) test -e {flag} || {{ echo broken >&2; exit 3; }};; esac; '
           f'echo ran on {WHERE}')
    nothing = cli(home, "run", "-c", "with-dead", "--rerun-failed", cmd)
    assert nothing.returncode == 2 and "no earlier fleet run of this command" in nothing.stderr

    first = cli(home, "run", "-c", "with-dead", "--json", cmd)
    assert first.returncode == 4, first.stderr
    first_id = json.loads(first.stdout)["id"]

    flag.write_text("")
    again = cli(home, "run", "--rerun-failed", cmd)
    assert again.returncode == 3, again.stderr         # web-3 and web-5 now ok; dead is still dead
    assert f"Rerunning 3 host(s) that did not succeed in {first_id}: web-3, web-5, dead" in again.stderr
    assert sorted(again.stdout.splitlines()) == ["web-3 | ran on 127.0.0.4", "web-5 | ran on 127.0.0.6"]
    rec = json.loads(cli(home, "ops", "list", "--json", "-n", "1").stdout.splitlines()[0])
    assert rec["rerun_of"] == first_id
    assert {h: v["status"] for h, v in by_host(rec).items()} == {
        "web-3": "ok", "web-5": "ok", "dead": "unreachable"}

    within = cli(home, "run", "-c", "web", "--rerun-failed", cmd)   # dead is outside -c web
    assert within.returncode == 0, within.stderr
    assert "Nothing to rerun" in within.stderr
    last = cli(home, "run", "--rerun-failed", cmd)                  # the newest run: only dead
    assert last.returncode == 3 and "Rerunning 1 host(s)" in last.stderr
    assert "dead" in last.stderr and "web-3" not in last.stdout
    flag.unlink()
    flag.parent.rmdir()


def test_live_fleet_status_line_on_a_terminal_leaves_the_output_intact(home: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "clipipe", "--contexts", str(home / "contexts.yaml"), "run",
                        "-c", "web", "--progress", "tty", "sleep 0.5; echo done on " + WHERE],
                       capture_output=True, timeout=60, env=env_for(home))   # bytes: \r stays \r
    out, err = r.stdout.decode(), r.stderr.decode()
    assert r.returncode == 0, err
    assert sorted(out.splitlines()) == sorted(f"{n.ljust(6)} | done on 127.0.0.{i + 2}" for i, n in enumerate(NAMES))
    assert "fleet 0/10 done: none yet; " in err and "\r\033[K" in err
    tail = err.rsplit("\r\033[K", 1)[1]                # the status line is gone before the summary
    assert "fleet " not in tail and "10 hosts: 10 ok" in tail

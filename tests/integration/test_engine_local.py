"""The seeds' scenarios, run through the real `clipipe` command on the local machine."""
from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write


def record(clipipe, op_hint: str = "") -> dict:
    res = clipipe("ops", "list", "--json", "-n", "1")
    return json.loads(res.out.splitlines()[0])


def test_ten_steps_run_in_parallel(clipipe, tmp_path):
    steps = "\n".join(f"  - {{name: s{i}, run: 'date +%s.%N > {tmp_path}/start{i}; sleep 1; "
                      f"date +%s.%N > {tmp_path}/end{i}'}}" for i in range(10))
    pipe = write(tmp_path / "p.yaml", f"name: ten\nsteps:\n{steps}\n")
    res = clipipe("run", str(pipe), "--jobs", "10")
    assert res.code == 0, res
    starts = [float((tmp_path / f"start{i}").read_text()) for i in range(10)]
    ends = [float((tmp_path / f"end{i}").read_text()) for i in range(10)]
    # Concurrency, not speed: every step had started before any step ended.
    assert max(starts) < min(ends)


def test_jobs_bounds_concurrency(clipipe, tmp_path):
    steps = "\n".join(f"  - {{name: s{i}, run: 'date +%s.%N > {tmp_path}/start{i}; sleep 0.3; "
                      f"date +%s.%N > {tmp_path}/end{i}'}}" for i in range(4))
    pipe = write(tmp_path / "p.yaml", f"steps:\n{steps}\n")
    assert clipipe("run", str(pipe), "--jobs", "1").code == 0
    spans = sorted((float((tmp_path / f"start{i}").read_text()), float((tmp_path / f"end{i}").read_text()))
                   for i in range(4))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one at a time: no overlap


def test_three_way_fanout_is_byte_identical(clipipe, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: produce, run: "cat {src}", output: data}}
  - {{name: a, run: "cat > {tmp_path}/a", input: data}}
  - {{name: b, run: "cat > {tmp_path}/b", input: data}}
  - {{name: c, run: "sha256sum > {tmp_path}/c.sha", input: data}}
""")
    res = clipipe("run", str(pipe))
    assert res.code == 0, res
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == src.read_bytes()
    assert (tmp_path / "c.sha").read_text().split()[0] == hashlib.sha256(src.read_bytes()).hexdigest()
    rec = record(clipipe)
    assert rec["streams"][0]["bytes_transferred"] == src.stat().st_size
    assert rec["streams"][0]["type"] == "fanout"


def test_tee_branches_checksum_variable_and_nested_steps(clipipe, tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(1024 * 1024))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    pipe = write(tmp_path / "p.yaml", f"""
pipeline:
  name: tee
  steps:
    - {{name: create, command: "cat {src}", output: stream}}
    - name: process
      type: tee
      input: pipe
      branches:
        - {{name: sum, command: sha256sum, output: "variable:shell_sum"}}
        - {{name: checksum, type: checksum, algorithm: sha256}}
        - {{name: progress, type: progress}}
        - name: compress-save
          steps:
            - {{command: "gzip -1", input: pipe, output: stream}}
            - {{command: "cat > {tmp_path}/out.gz", input: pipe}}
    - name: manifest
      command: "echo {{{{.checksum}}}} {{{{.shell_sum}}}} > {tmp_path}/manifest"
      depends_on: [process]
""")
    res = clipipe("run", str(pipe))
    assert res.code == 0, res
    import gzip
    assert gzip.decompress((tmp_path / "out.gz").read_bytes()) == src.read_bytes()
    assert (tmp_path / "manifest").read_text().split() == [digest, digest, "-"]
    rec = record(clipipe)
    branches = {b["name"]: b for b in rec["steps"][1]["branches"]}
    assert branches["checksum"]["result"] == digest
    assert branches["progress"]["metrics"]["total_bytes"] == src.stat().st_size
    assert rec["variables"]["checksum"] == digest


def test_nested_substitution_and_params_on_the_command_line(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
name: nest
params:
  env: {default: prod}
  base: {type: path, default: "/srv/{{.env}}"}
  file: {type: path, default: "{{.base}}/{{.name}}.tar"}
  level: {type: int, default: 9}
steps:
  - {name: show, run: "echo {{.file}} {{.level}}"}
""")
    res = clipipe("run", str(pipe), "--env=staging", "--level", "3")
    assert res.code == 0, res
    assert "/srv/staging/nest.tar 3" in res.out
    helped = clipipe("run", str(pipe), "--help")
    assert helped.code == 0 and "--level INT" in helped.out and "[default: 9]" in helped.out


def test_injection_through_params_runs_nothing(clipipe, tmp_path):
    canary = tmp_path / "pwned"
    pipe = write(tmp_path / "p.yaml", """
params: {v: {}}
steps:
  - {name: a, run: "printf '%s|' {{.v}} \\"{{.v}}\\" '{{.v}}'"}
""")
    for payload in [f"$(touch {canary})", f"`touch {canary}`", f"; touch {canary}", f"| touch {canary}",
                    f"x\ntouch {canary}", f"'; touch {canary}; '", f'"; touch {canary}; "']:
        res = clipipe("run", str(pipe), f"--v={payload}")
        assert res.code == 0, res
        assert not canary.exists(), payload
        assert res.out.replace("[a] ", "").strip().startswith(payload.split("\n")[0])


def test_cycle_is_named_and_exits_2(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", "steps:\n  - {name: a, run: x, depends_on: c}\n"
                 "  - {name: b, run: x, depends_on: a}\n  - {name: c, run: x, depends_on: b}\n")
    res = clipipe("run", str(pipe))
    assert res.code == 2
    assert "dependency cycle: a -> b -> c -> a" in res.err and "Traceback" not in res.err
    assert f"{pipe}:2:5" in res.err


def test_retry_succeeds_on_third_try(clipipe, tmp_path):
    marker = tmp_path / "n"
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - name: flaky
    run: 'n=$(cat {marker} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {marker}; [ $n -ge 3 ]'
    on_error: retry
    retry: {{count: 3, delay: 10ms}}
""")
    res = clipipe("run", str(pipe))
    assert res.code == 0, res
    step = record(clipipe)["steps"][0]
    assert step["attempts"] == 3 and step["retries"] == 2 and step["status"] == "ok"


def test_retry_gives_up_and_skips_dependents(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: bad, run: "echo oops >&2; exit 4", on_error: retry, retry: {count: 2, delay: 1ms}}
  - {name: after, run: "echo never", depends_on: bad}
""")
    res = clipipe("run", str(pipe))
    assert res.code == 1
    assert "never" not in res.out
    steps = {s["name"]: s for s in record(clipipe)["steps"]}
    assert steps["bad"]["attempts"] == 2 and steps["bad"]["exit_code"] == 4
    assert steps["bad"]["stderr_tail"] == ["oops"]
    assert steps["after"]["status"] == "skipped"


def test_on_error_continue_keeps_going(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: bad, run: "exit 1", on_error: continue}
  - {name: after, run: "echo still here", depends_on: bad}
""")
    res = clipipe("run", str(pipe))
    assert res.code == 0, res
    assert "still here" in res.out
    steps = {s["name"]: s for s in record(clipipe)["steps"]}
    assert steps["bad"]["status"] == "failed" and steps["bad"]["ignored"] is True


def test_stop_cancels_running_steps(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: slow, run: "sleep 30"}
  - {name: bad, run: "sleep 0.2; exit 1"}
""")
    t0 = time.monotonic()
    res = clipipe("run", str(pipe))
    assert res.code == 1 and time.monotonic() - t0 < 25
    steps = {s["name"]: s for s in record(clipipe)["steps"]}
    assert steps["slow"]["status"] == "cancelled"


def test_downstream_that_exits_early_does_not_hang(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: endless, run: "yes", output: stream}
  - {name: one, run: "head -c 1", input: pipe}
""")
    res = clipipe("run", str(pipe), timeout=60)
    assert res.code == 0, res
    steps = {s["name"]: s for s in record(clipipe)["steps"]}
    assert steps["endless"]["note"] == "stopped early by its reader (SIGPIPE)"


def test_adhoc_command_passes_output_through(clipipe, tmp_path):
    res = clipipe("run", "printf 'a\\nb' ; echo err >&2")
    assert res.code == 0 and res.out == "a\nb" and "err" in res.err
    assert clipipe("run", "exit 7").code == 1


def test_variable_capture_is_trimmed(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: get, run: "printf '  v1 \\n\\n'", output: "variable:ver"}
  - {name: use, run: "echo [{{.ver}}]"}
""")
    res = clipipe("run", str(pipe))
    assert "[v1]" in res.out, res


def test_failed_run_leaves_no_complete_looking_file_output(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: a, run: "echo partial; exit 1", output: "file:{tmp_path}/out.txt"}}
  - {{name: b, run: "echo ok", output: "file:{tmp_path}/ok.txt"}}
""")
    res = clipipe("run", str(pipe))
    assert res.code == 1
    assert not (tmp_path / "out.txt").exists()
    assert not list(tmp_path.glob("out.txt.clipipe-partial-*"))


def test_ops_list_and_show(clipipe, tmp_path):
    clipipe("run", "echo hi")
    rec = record(clipipe)
    shown = clipipe("ops", "show", rec["id"][:19])
    assert shown.code == 0 and rec["id"] in shown.out
    assert clipipe("ops", "show", "nope").code == 2


def test_validate_and_graph(clipipe):
    root = Path(__file__).resolve().parents[2]
    res = clipipe("validate", *[str(p) for p in sorted((root / "examples").glob("*.yaml"))])
    assert res.code == 0, res
    g = clipipe("graph", str(root / "examples" / "backup.yaml"), "--format", "mermaid")
    assert g.code == 0 and "flowchart LR" in g.out and "==>" in g.out


def test_examples_run_locally(clipipe, tmp_path):
    root = Path(__file__).resolve().parents[2]
    for name in ("parallel-backups", "nested-params", "retry"):
        res = clipipe("run", str(root / "examples" / f"{name}.yaml"), *(
            ["--work", str(tmp_path / "w")] if name == "parallel-backups" else []))
        assert res.code == 0, (name, res)
    res = clipipe("run", str(root / "examples" / "backup.yaml"), "--source", str(root / "examples"),
                  "--out_dir", str(tmp_path / "b"))
    assert res.code == 0, res
    assert len(list((tmp_path / "b").glob("*.tar.gz"))) == 1


@pytest.mark.slow
def test_one_gib_stream_keeps_memory_flat(tmp_path):
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: gen, run: "head -c 1073741824 /dev/zero", output: stream}}
  - {{name: count, run: "wc -c > {tmp_path}/n", input: pipe}}
""")
    code = ("import resource, subprocess, sys; "
            f"r = subprocess.run([sys.executable, '-m', 'clipipe', 'run', '-q', {str(pipe)!r}]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    max_rss_kib = int(out.stdout.strip().splitlines()[-1])
    assert (tmp_path / "n").read_text().strip() == "1073741824"
    # The controller copies 1 GiB yet stays at interpreter size: far below the stream's size.
    assert max_rss_kib < 150 * 1024, max_rss_kib


def test_sigint_stops_every_process_group(tmp_path):
    import signal as sig

    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: a, run: "echo $$ > {tmp_path}/a.pid; sleep 300"}}
  - {{name: b, run: "sh -c 'echo $$ > {tmp_path}/b.pid; sleep 300' | cat"}}
""")
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "run", str(pipe)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not ((tmp_path / "a.pid").exists() and (tmp_path / "b.pid").exists()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    pids = [int((tmp_path / f"{n}.pid").read_text()) for n in "ab"]
    proc.send_signal(sig.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    time.sleep(0.2)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]


def test_rerun_failed_runs_only_the_steps_that_did_not_succeed(tmp_path):
    import json
    import os
    import subprocess
    import sys

    flag = tmp_path / "fixed"
    log = tmp_path / "ran.log"
    pipe = tmp_path / "p.yaml"
    pipe.write_text(f"""
name: flaky
steps:
  - {{name: prep, command: "echo prep >> {log}; echo v1", output: "variable:version"}}
  - {{name: other, command: "echo other >> {log}"}}
  - {{name: flaky, command: "echo flaky >> {log}; test -e {flag}", depends_on: prep}}
  - {{name: after, command: "echo after {{{{.version}}}} >> {log}", depends_on: flaky}}
""")
    env = {**os.environ, "CLIPIPE_HOME": str(tmp_path / "state")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "clipipe", "run", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=60)

    assert cli(str(pipe)).returncode == 1
    assert sorted(log.read_text().split()) == ["flaky", "other", "prep"]
    log.write_text("")
    flag.write_text("")
    r = cli(str(pipe), "--rerun-failed")
    assert r.returncode == 0, r.stderr
    assert "Rerunning 2 step(s) that did not succeed" in r.stderr and "flaky, after" in r.stderr
    assert log.read_text().split() == ["flaky", "after", "v1"]            # prep's variable reused
    rec = json.loads(subprocess.run([sys.executable, "-m", "clipipe", "ops", "list", "--json", "-n", "1"],
                                    capture_output=True, text=True, env=env).stdout.splitlines()[0])
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["prep"]["status"] == "ok" and "not run again" in steps["prep"]["note"]
    assert steps["after"]["status"] == "ok" and rec["rerun_of"]
    r = cli(str(pipe), "--rerun-failed")
    assert r.returncode == 0 and "Nothing to rerun" in r.stderr


def test_dry_run_says_where_each_tee_would_run(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "contexts.yaml").write_text(
        "contexts:\n  box: {type: ssh, host: 127.0.0.1, port: 1, ssh_config: null}\n")
    pipe = tmp_path / "p.yaml"
    pipe.write_text("""
steps:
  - {name: make, command: "seq 10", output: stream}
  - name: split
    type: tee
    input: pipe
    branches:
      - {name: sum, type: checksum}
      - {name: keep, command: "cat > /tmp/x"}
  - {name: far, command: "seq 3", output: stream}
  - {name: near, type: tee, input: pipe, context: local, branches: [{name: c, type: checksum}]}
""")
    r = subprocess.run([sys.executable, "-m", "clipipe", "--contexts", str(tmp_path / "contexts.yaml"), "run",
                        "-c", "box", "--dry-run", str(pipe)], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "CLIPIPE_HOME": str(tmp_path / "state")})
    assert r.returncode == 0, r.stderr            # nothing connects: port 1 is never tried
    assert "split (tee) @box: on box by its agent, when box runs one" in r.stdout
    assert "near (tee) @local: in the controller's stream core (a local tee)" in r.stdout

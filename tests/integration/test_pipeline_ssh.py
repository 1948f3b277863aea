"""Pipelines across contexts through the real `clipipe` command and real sshd: local → ssh → ssh."""
from __future__ import annotations

import hashlib
import json
import os

import pytest

from tests.conftest import write


def contexts_file(tmp_path, *servers_and_names, **settings):
    body = "contexts:\n  local:\n    type: local\n    default: true\n"
    for server, name in servers_and_names:
        body += server.contexts_yaml(name, **settings)
    return write(tmp_path / "contexts.yaml", body)


@pytest.mark.parametrize("plane", ["openssh", "agent"])
def test_cross_context_stream_local_ssh_ssh(clipipe, tmp_path, sshd, sshd_fresh, plane):
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(8 * 1024 * 1024 + 5))
    remote_out = f"/tmp/clipipe-xctx-{plane}-{os.getpid()}.gz"
    ctx = contexts_file(tmp_path, (sshd, "web"), (sshd_fresh, "backup"), data_plane=plane)
    pipe = write(tmp_path / "p.yaml", f"""
name: cross-context-backup
steps:
  - {{name: extract, context: local, command: "cat {data}", output: stream}}
  - {{name: compress, context: web, command: "gzip -1", input: pipe, output: stream}}
  - {{name: save, context: backup, command: "cat > {remote_out}", input: pipe}}
  - {{name: verify, context: backup, command: "gzip -dc {remote_out} | sha256sum", depends_on: save,
     output: "variable:remote_sum"}}
  - {{name: clean, context: backup, command: "rm -f {remote_out}", depends_on: verify}}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0, res
    rec = json.loads(clipipe("ops", "list", "--json", "-n", "1").out.splitlines()[0])
    assert rec["variables"]["remote_sum"].split()[0] == hashlib.sha256(data.read_bytes()).hexdigest()
    used = {c["name"]: c for c in rec["contexts_used"]}
    assert set(used) == {"local", "web", "backup"}
    assert used["web"]["connection_time_ms"] >= 0 and used["web"]["steps"] == ["compress"]


def test_piped_steps_on_one_host_run_as_one_segment(clipipe, tmp_path, sshd):
    ctx = contexts_file(tmp_path, (sshd, "web"))
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: gen, context: web, command: "seq 1 200000", output: stream}
  - {name: filter, context: web, command: "grep 7", input: pipe, output: stream}
  - {name: count, context: web, command: "wc -l", input: pipe, output: "variable:n"}
  - {name: show, command: "echo n={{.n}}"}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0, res
    expected = sum(1 for i in range(1, 200001) if "7" in str(i))
    assert f"n={expected}" in res.out
    rec = json.loads(clipipe("ops", "list", "--json", "-n", "1").out.splitlines()[0])
    assert [s["type"] for s in rec["streams"]] == ["remote-pipe", "remote-pipe"]


def test_adhoc_on_an_ssh_context_and_failure_exit_codes(clipipe, tmp_path, sshd):
    ctx = contexts_file(tmp_path, (sshd, "web"))
    res = clipipe("--contexts", str(ctx), "run", "-c", "web", "echo on $(hostname) as $(id -un)")
    assert res.code == 0, res
    assert f"as {sshd.user}" in res.out
    assert clipipe("--contexts", str(ctx), "run", "-c", "web", "exit 5").code == 1
    res = clipipe("--contexts", str(ctx), "run", "-c", "nope", "true")
    assert res.code == 2 and "unknown context or group 'nope'" in res.err


def test_unreachable_context_exits_3(clipipe, tmp_path, sshd):
    body = "contexts:\n" + sshd.contexts_yaml("dead", port=1, connect_timeout=3)
    ctx = write(tmp_path / "contexts.yaml", body)
    res = clipipe("--contexts", str(ctx), "run", "-c", "dead", "true")
    assert res.code == 3, res
    assert "Traceback" not in res.err


def test_steps_without_context_run_locally_even_if_contexts_yaml_lists_only_remotes(clipipe, tmp_path, sshd):
    ctx = write(tmp_path / "c.yaml", "contexts:\n" + sshd.contexts_yaml("web"))
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: a, command: 'head -c 1000000 /dev/zero', output: stream}
  - {name: b, context: web, command: 'wc -c', input: pipe}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0 and "1000000" in res.out, res
    rec = json.loads(clipipe("ops", "list", "--json", "-n", "1").out.splitlines()[0])
    assert {s["name"]: s["context"] for s in rec["steps"]} == {"a": "local", "b": "web"}
    assert rec["streams"][0]["bytes_transferred"] == 1000000


def test_sigkilled_fleet_adhoc_run_leaves_nothing_on_hosts(tmp_path, sshd, sshd_fresh):
    import secrets
    import subprocess
    import sys
    import time

    from tests.integration.test_ssh_target import remote_matches

    marker = f"1000.{secrets.randbelow(10**6):06d}"
    ctx = write(tmp_path / "c.yaml", "contexts:\n" + sshd.contexts_yaml("h1") + sshd_fresh.contexts_yaml("h2"))
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "--contexts", str(ctx), "run", "-c", "h1,h2",
                             f"sleep {marker}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not (remote_matches(sshd, marker) and remote_matches(sshd_fresh, marker)):
            assert time.monotonic() < deadline, "the remote sleeps should be running"
            time.sleep(0.2)
        proc.kill()                     # SIGKILL: no cleanup code runs in the controller
        proc.wait()
        deadline = time.monotonic() + 8
        while (remote_matches(sshd, marker) or remote_matches(sshd_fresh, marker)) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert remote_matches(sshd, marker) == [] and remote_matches(sshd_fresh, marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_adhoc_on_one_host_takes_a_plain_exec_channel_not_the_agent(clipipe, tmp_path, sshd):
    ctx = contexts_file(tmp_path, (sshd, "web"))
    res = clipipe("--contexts", str(ctx), "run", "-c", "web", "--json",
                  "cd /tmp && pwd; printf 'no newline'; echo to-err >&2; exit 3")
    assert res.code == 1
    rec = json.loads(res.out)
    used = {c["name"]: c for c in rec["contexts_used"]}["web"]
    assert used["streams"] == {"exec": {"segments": 1, "bytes_in": 0, "bytes_out": len("/tmp\nno newline")}}
    assert used["agent"] == {} and used["openssh_mux"] is None      # nothing booted, no master
    assert rec["steps"][0]["exit_code"] == 3
    plain = clipipe("--contexts", str(ctx), "run", "-c", "web", "printf 'a\\0b'; echo err >&2")
    assert plain.code == 0 and plain.out == "a\0b" and "err" in plain.err   # byte-exact stdout


def test_sigkilled_single_host_adhoc_run_leaves_nothing_on_the_host(tmp_path, sshd):
    import secrets
    import subprocess
    import sys
    import time

    from tests.integration.test_ssh_target import remote_matches

    marker = f"1000.{secrets.randbelow(10**6):06d}"
    ctx = write(tmp_path / "c.yaml", "contexts:\n" + sshd.contexts_yaml("h1"))
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "--contexts", str(ctx), "run", "-c", "h1",
                             f"sleep {marker}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not remote_matches(sshd, marker):
            assert time.monotonic() < deadline, "the remote sleep should be running"
            time.sleep(0.2)
        proc.kill()                     # SIGKILL: no cleanup code runs in the controller
        proc.wait()
        deadline = time.monotonic() + 8
        while remote_matches(sshd, marker) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert remote_matches(sshd, marker) == []
    finally:
        if proc.poll() is None:
            proc.kill()

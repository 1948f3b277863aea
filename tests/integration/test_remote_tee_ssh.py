"""Tees on the SSH host, end to end: the real `clipipe` command against a real OpenSSH sshd."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import secrets
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import write
from tests.integration.test_ssh_target import remote_matches

pytestmark = pytest.mark.ssh

IMPLS = {"cython": {}, "python": {"CLIPIPE_PURE": "1"}}

BACKUP = """
name: backup
params:
  source: {type: path, default: /data}
  dest: {type: path, default: /backups}
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
          - {command: "cat > {{.dest}}/x.tar.gz", input: pipe}
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory both we and the sshd login user can read and write."""
    d = Path(tempfile.mkdtemp(prefix="clipipe-rtee-"))
    os.chmod(d, 0o777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def contexts(tmp_path: Path, server, name: str = "backup-server", **settings: object) -> Path:
    return write(tmp_path / "contexts.yaml",
                 "contexts:\n  local:\n    type: local\n" + server.contexts_yaml(name, **settings))


def last_record(clipipe, env=None) -> dict:
    return json.loads(clipipe("ops", "list", "--json", "-n", "1", env=env).out.splitlines()[0])


def tee_stream(rec: dict) -> dict:
    return next(s for s in rec["streams"] if s["type"] == "tee")


@pytest.mark.parametrize("impl", IMPLS)
def test_backup_pipeline_runs_its_tee_on_the_host(clipipe, tmp_path, shared, sshd, impl):
    """The pipeline of issue 5 with -c backup-server: sha256, progress and gzip on the host, ~0 B back."""
    src = shared / "data"
    src.mkdir()
    for i in range(4):
        (src / f"f{i}.bin").write_bytes(os.urandom(700_000 + i))
    pipe = write(tmp_path / "backup.yaml", BACKUP)
    ctx = contexts(tmp_path, sshd)
    env = IMPLS[impl]
    res = clipipe("--contexts", str(ctx), "run", "-c", "backup-server", str(pipe), f"--source={src}",
                  f"--dest={shared}", "--progress", "plain", env=env)
    assert res.code == 0, res
    tar = gzip.decompress((shared / "x.tar.gz").read_bytes())
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        for i in range(4):
            member = tf.extractfile(f"./f{i}.bin")
            assert member is not None and member.read() == (src / f"f{i}.bin").read_bytes()
    rec = last_record(clipipe, env)
    digest = hashlib.sha256(tar).hexdigest()
    assert rec["variables"]["checksum"] == digest
    stream = tee_stream(rec)
    assert stream["placement"] == "remote" and stream["context"] == "backup-server"
    assert stream["bytes_transferred"] == len(tar)
    assert stream["wire"] == {"path": "agent-tee", "bytes_in": 0, "bytes_out": 0, "stderr_bytes": 0}
    branches = {b["name"]: b for b in rec["steps"][1]["branches"]}
    assert branches["checksum"]["result"] == digest
    assert branches["progress"]["metrics"]["total_bytes"] == len(tar)
    assert branches["compress-save"]["bytes_in"] == len(tar)
    assert branches["compress-save"]["bytes_out"] == (shared / "x.tar.gz").stat().st_size
    used = {c["name"]: c for c in rec["contexts_used"]}["backup-server"]
    assert used["streams"]["agent-tee"] == {"segments": 1, "bytes_in": 0, "bytes_out": 0}
    assert "create-tar" in res.err          # the plain progress line names the stream
    assert "tee on backup-server (0B back over the wire)" in res.err    # and so does the summary


@pytest.mark.parametrize("size", [0, 1, 256 * 1024, 4 * 1024 * 1024 + 3])
def test_a_local_branch_gets_the_bytes_over_the_agent(clipipe, tmp_path, shared, sshd, size):
    """One branch on `local`: the stream leaves the host once; the host's branches stay there."""
    data = os.urandom(size)
    (shared / "src.bin").write_bytes(data)
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: make, command: "cat {shared}/src.bin", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: sum, type: checksum, algorithm: sha256}}
      - {{name: there, command: "cat > {shared}/there.bin"}}
      - {{name: here, context: local, command: "cat > {tmp_path}/here.bin"}}
""")
    res = clipipe("--contexts", str(contexts(tmp_path, sshd)), "run", "-c", "backup-server", str(pipe))
    assert res.code == 0, res
    assert (tmp_path / "here.bin").read_bytes() == data == (shared / "there.bin").read_bytes()
    rec = last_record(clipipe)
    assert rec["variables"]["sum"] == hashlib.sha256(data).hexdigest()
    stream = tee_stream(rec)
    assert stream["placement"] == "remote" and stream["wire"]["bytes_out"] == size


@pytest.mark.parametrize("policy", ["fail", "drop"])
def test_fail_and_drop_on_the_host(clipipe, tmp_path, shared, sshd, policy):
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: create, command: "head -c 50000000 /dev/zero", output: stream}}
  - name: process
    type: tee
    input: pipe
    on_branch_exit: {policy}
    branches:
      - {{name: quitter, command: "head -c 10 > /dev/null"}}
      - {{name: keeper, command: "wc -c > {shared}/kept"}}
""")
    res = clipipe("--contexts", str(contexts(tmp_path, sshd)), "run", "-c", "backup-server", str(pipe))
    rec = last_record(clipipe)
    status = {b["name"]: b["status"] for b in rec["steps"][1]["branches"]}
    assert tee_stream(rec)["placement"] == "remote"
    if policy == "fail":
        assert res.code == 1 and "branch 'quitter' stopped reading early (EPIPE)" in res.err, res
        assert status["quitter"] == "failed" and (shared / "kept").read_text() == ""
    else:
        assert res.code == 0, res
        assert status["quitter"] == "dropped" and (shared / "kept").read_text().strip() == "50000000"


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("case", ["no-python", "openssh-plane"])
def test_where_the_host_cant_the_controller_tees_and_says_why(clipipe, tmp_path, shared, sshd, case, impl):
    """Raw exec (no Python) and a bulk stream forced onto the OpenSSH mux keep today's controller tee."""
    data = os.urandom(3 * 1024 * 1024 + 1)
    (shared / "src.bin").write_bytes(data)
    settings = {"python": "/nonexistent/python3"} if case == "no-python" else {"data_plane": "openssh"}
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: make, command: "cat {shared}/src.bin", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: sum, type: checksum, algorithm: sha256}}
      - {{name: there, command: "gzip -1 > {shared}/there.gz"}}
      - {{name: here, context: local, command: "cat > {tmp_path}/here.bin"}}
""")
    env = IMPLS[impl]
    res = clipipe("--contexts", str(contexts(tmp_path, sshd, **settings)), "run", "-c", "backup-server",
                  str(pipe), env=env)
    assert res.code == 0, res
    assert (tmp_path / "here.bin").read_bytes() == data == gzip.decompress((shared / "there.gz").read_bytes())
    rec = last_record(clipipe, env)
    assert rec["variables"]["sum"] == hashlib.sha256(data).hexdigest()
    stream = tee_stream(rec)
    assert stream["placement"] == "controller"
    reason = "no agent on" if case == "no-python" else "data_plane: openssh"
    assert stream["placement_reason"].startswith(reason), stream


def test_a_sigkilled_agent_leaves_no_segment_processes(tmp_path, shared, sshd):
    """kill -9 the remote agent mid-run: the tee segment's processes (sh's children too) go with it."""
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: make, command: "sleep {marker}; echo x", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: sum, type: checksum, algorithm: sha256}}
      - {{name: slow, command: "cat; sleep {marker}1"}}
""")
    ctx = contexts(tmp_path, sshd)
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "--contexts", str(ctx), "run", "-c", "backup-server",
                             str(pipe)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not remote_matches(sshd, marker):
            assert time.monotonic() < deadline and proc.poll() is None, "the remote sleep should be running"
            time.sleep(0.2)
        sleep_pid = next(ln.split()[0] for ln in remote_matches(sshd, marker) if ln.split()[1] == "sleep")
        sh = sshd.run(f"ps -o ppid= -p {sleep_pid}").stdout.strip()      # `sh -c ...`, which forked sleep
        agent = sshd.run(f"ps -o ppid= -p {sh}").stdout.strip()
        assert "python" in sshd.run(f"ps -o args= -p {agent}").stdout    # the agent's loader
        sshd.run(f"kill -9 {agent}")
        deadline = time.monotonic() + 8
        while remote_matches(sshd, marker) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert remote_matches(sshd, marker) == []
        assert proc.wait(20) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

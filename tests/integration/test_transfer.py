"""`clipipe transfer` against a real sshd and the local machine: files, directories, resume, verification."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import write

pytestmark = pytest.mark.ssh

SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture
def home(tmp_path, sshd):
    """contexts.yaml with the ssh host `box` and a local context whose shell corrupts received bytes."""
    bad_shell = write(tmp_path / "bad-shell", """#!/bin/sh
# A faulty peer: what it receives into a part file is altered on the way to disk.
case "$2" in
  "cat > "*) exec /bin/sh -c "tr a-f A-F ${2#cat }" ;;
  *) exec /bin/sh -c "$2" ;;
esac
""")
    os.chmod(bad_shell, 0o755)
    write(tmp_path / "contexts.yaml", "contexts:\n" + sshd.contexts_yaml("box")
          + f"  faulty: {{type: local, shell: {bad_shell}}}\n")
    return tmp_path


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clipipe", "--contexts", str(home / "contexts.yaml"),
                           "transfer", "--progress", "quiet", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=home,
                          env={**os.environ, "CLIPIPE_HOME": str(home / "state"), "PYTHONPATH": SRC})


def last_record(home: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "clipipe", "ops", "list", "--json", "-n", "1"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "CLIPIPE_HOME": str(home / "state"), "PYTHONPATH": SRC}).stdout
    return json.loads(out.splitlines()[0])


def remote_dir(sshd, tag: str) -> str:
    """A fresh directory on the host (the login user's, under /tmp)."""
    d = f"/tmp/clipipe-transfer-{tag}-{os.getpid()}"
    assert sshd.run(f"rm -rf {d} && mkdir -p {d}").returncode == 0
    return d


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_file_to_ssh_directory_and_back(home, sshd):
    data = os.urandom(3 << 20) + b"tail"
    (home / "data.bin").write_bytes(data)
    d = remote_dir(sshd, "up")
    r = cli(home, "data.bin", f"box:{d}/")
    assert r.returncode == 0, r.stderr
    assert f"✓ local:data.bin → box:{d}/data.bin" in r.stderr
    assert sshd.run(f"sha256sum {d}/data.bin; ls {d}").stdout.split() == [sha(data), f"{d}/data.bin", "data.bin"]
    t = last_record(home)["transfers"][0]
    assert (t["status"], t["bytes"], t["sha256"], t["resumed_from"]) == ("ok", len(data), sha(data), 0)
    assert t["from"] == "local:data.bin" and t["to"] == f"box:{d}/data.bin"

    r = cli(home, f"box:{d}/data.bin", "back.bin")
    assert r.returncode == 0, r.stderr
    assert (home / "back.bin").read_bytes() == data
    assert not list(home.glob("*.clipipe-part"))


def test_resume_from_a_verified_part_and_restart_from_a_wrong_one(home, sshd):
    data = os.urandom(2 << 20)
    (home / "big.bin").write_bytes(data)
    d = remote_dir(sshd, "resume")
    (home / "prefix").write_bytes(data[:700_000])
    assert cli(home, "prefix", f"box:{d}/big.bin.clipipe-part").returncode == 0   # an interrupted copy
    r = cli(home, "big.bin", f"box:{d}/")
    assert r.returncode == 0, r.stderr
    t = last_record(home)["transfers"][0]
    assert (t["resumed_from"], t["bytes"], t["sha256"]) == (700_000, len(data) - 700_000, sha(data))
    assert "resumed at" in r.stderr
    assert sshd.run(f"sha256sum < {d}/big.bin").stdout.split()[0] == sha(data)

    (home / "wrong").write_bytes(os.urandom(700_000))                          # a part of other bytes
    assert cli(home, "wrong", f"box:{d}/big.bin.clipipe-part").returncode == 0
    r = cli(home, "big.bin", f"box:{d}/")
    t = last_record(home)["transfers"][0]
    assert r.returncode == 0 and (t["resumed_from"], t["bytes"]) == (0, len(data))
    assert sshd.run(f"sha256sum < {d}/big.bin").stdout.split()[0] == sha(data)
    assert sshd.run(f"ls -a {d}").stdout.split() == [".", "..", "big.bin"]


def test_a_digest_mismatch_fails_and_leaves_nothing_that_looks_complete(home):
    (home / "abc.txt").write_bytes(b"abcdef" * 1000)
    out = home / "out"
    out.mkdir()
    r = cli(home, "abc.txt", f"faulty:{out}/")
    assert r.returncode == 1
    assert "sha256 differs after the transfer" in r.stderr
    assert list(out.iterdir()) == []
    assert last_record(home)["transfers"][0]["status"] == "failed"


def test_directory_from_ssh_with_manifest_check_exists_and_force(home, sshd):
    d = remote_dir(sshd, "tree")
    assert sshd.run(f"mkdir -p {d}/conf/sub && echo a > {d}/conf/a && head -c 50000 /dev/urandom > "
                    f"'{d}/conf/sub/with space' && ln -s a {d}/conf/link").returncode == 0
    r = cli(home, f"box:{d}/conf/", "./copy/")
    assert r.returncode == 0, r.stderr
    got = home / "copy" / "conf"
    assert (got / "a").read_text() == "a\n" and (got / "sub" / "with space").stat().st_size == 50000
    assert os.readlink(got / "link") == "a"
    t = last_record(home)["transfers"][0]
    assert t["kind"] == "dir" and t["files"] == 2 and t["status"] == "ok"
    assert not (home / "copy" / "conf.clipipe-part").exists()

    (got / "a").write_text("changed locally\n")
    r = cli(home, f"box:{d}/conf/", "./copy/")
    assert r.returncode == 1 and "exists" in r.stderr and "--force" in r.stderr
    assert (got / "a").read_text() == "changed locally\n"
    r = cli(home, "--force", f"box:{d}/conf/", "./copy/")
    assert r.returncode == 0, r.stderr
    assert (got / "a").read_text() == "a\n" and not (home / "copy" / "conf.clipipe-old").exists()


def test_several_sources_in_parallel_and_bad_arguments(home, sshd):
    for i in range(4):
        (home / f"f{i}").write_bytes(os.urandom(100_000 + i))
    d = remote_dir(sshd, "many")
    r = cli(home, "f0", "f1", "f2", "f3", f"box:{d}/", "-j", "4")
    assert r.returncode == 0, r.stderr
    assert sorted(sshd.run(f"ls {d}").stdout.split()) == ["f0", "f1", "f2", "f3"]
    assert len(last_record(home)["transfers"]) == 4

    assert cli(home, "f0", "f1", f"box:{d}").returncode == 2                 # several need DST/
    r = cli(home, "nobox:/etc/hosts", "x")
    assert r.returncode == 2 and "unknown context 'nobox'" in r.stderr and "Traceback" not in r.stderr
    r = cli(home, f"box:{d}/missing", "x")
    assert r.returncode == 1 and "no such file or directory" in r.stderr


def test_an_interrupted_transfer_resumes_next_time(home, tmp_path):
    data = os.urandom(32 << 20)
    (home / "slow.bin").write_bytes(data)
    slow_shell = write(tmp_path / "slow-shell", """#!/bin/sh
# A slow receiver: 4 MiB/s reach the part file, so an interrupt lands mid-way.
case "$2" in
  "cat > "*) exec /bin/sh -c "pv -q -L 4m ${2#cat }" ;;
  *) exec /bin/sh -c "$2" ;;
esac
""")
    os.chmod(slow_shell, 0o755)
    ctx = write(home / "slow-contexts.yaml", f"contexts:\n  slow: {{type: local, shell: {slow_shell}}}\n")
    out = home / "out"
    out.mkdir()
    env = {**os.environ, "CLIPIPE_HOME": str(home / "state"), "PYTHONPATH": SRC}
    argv = [sys.executable, "-m", "clipipe", "--contexts", str(ctx), "transfer", "--progress", "quiet",
            "slow.bin", f"slow:{out}/"]
    proc = subprocess.Popen(argv, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = out / "slow.bin.clipipe-part"
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > (1 << 20)):
        assert time.monotonic() < deadline and proc.poll() is None, "the transfer should be under way"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 130
    left = part.stat().st_size
    assert 0 < left < len(data) and not (out / "slow.bin").exists()    # nothing looks complete
    r = subprocess.run(argv[:2] + ["clipipe", "transfer", "--progress", "quiet", "slow.bin", f"{out}/"],
                       cwd=home, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    t = last_record(home)["transfers"][0]
    assert t["resumed_from"] == left and t["bytes"] == len(data) - left and t["sha256"] == sha(data)
    assert (out / "slow.bin").read_bytes() == data and not part.exists()

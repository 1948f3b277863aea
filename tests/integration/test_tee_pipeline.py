"""`type: tee` in pipelines, through the real command, over both stream-core implementations."""
from __future__ import annotations

import gzip
import hashlib
import json
import os

import pytest

from tests.conftest import write

IMPLS = {"cython": {}, "python": {"CLIPIPE_PURE": "1"}}


def last_record(clipipe, env) -> dict:
    return json.loads(clipipe("ops", "list", "--json", "-n", "1", env=env).out.splitlines()[0])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 5 * 1024 * 1024 + 3])
def test_every_branch_kind_sees_the_same_bytes(clipipe, tmp_path, impl, size):
    env = IMPLS[impl]
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: create, command: "cat {src}", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: builtin, type: checksum, algorithm: sha256}}
      - {{name: md5, type: checksum, algorithm: md5, output: "variable:md5sum"}}
      - {{name: shell, command: sha256sum, output: "variable:shell_sum"}}
      - {{name: copy, command: "cat", output: "file:{tmp_path}/copy.bin"}}
      - {{name: progress, type: progress, size: "{size}"}}
      - name: nested
        steps:
          - {{command: "gzip -1", input: pipe, output: stream}}
          - {{command: "cat > {tmp_path}/out.gz", input: pipe}}
""")
    res = clipipe("run", str(pipe), env=env)
    assert res.code == 0, res
    assert (tmp_path / "copy.bin").read_bytes() == src.read_bytes()
    assert gzip.decompress((tmp_path / "out.gz").read_bytes()) == src.read_bytes()
    rec = last_record(clipipe, env)
    assert rec["variables"]["builtin"] == digest
    assert rec["variables"]["shell_sum"].split()[0] == digest
    assert rec["variables"]["md5sum"] == hashlib.md5(src.read_bytes()).hexdigest()
    branches = {b["name"]: b for b in rec["steps"][1]["branches"]}
    assert branches["progress"]["metrics"]["total_bytes"] == size
    assert branches["nested"]["bytes_in"] == size
    assert branches["nested"]["bytes_out"] == (tmp_path / "out.gz").stat().st_size


@pytest.mark.parametrize("impl", IMPLS)
def test_branch_that_exits_early_fails_the_step_by_default(clipipe, tmp_path, impl):
    env = IMPLS[impl]
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: create, command: "head -c 50000000 /dev/zero", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: quitter, command: "head -c 10 > /dev/null"}}
      - {{name: keeper, command: "cat > {tmp_path}/kept"}}
""")
    res = clipipe("run", str(pipe), env=env, timeout=60)
    assert res.code == 1, res
    assert "branch 'quitter' stopped reading early" in res.err
    step = last_record(clipipe, env)["steps"][1]
    assert step["status"] == "failed"


@pytest.mark.parametrize("impl", IMPLS)
def test_branch_that_exits_early_is_dropped_under_drop(clipipe, tmp_path, impl):
    env = IMPLS[impl]
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: create, command: "head -c 50000000 /dev/zero", output: stream}}
  - name: process
    type: tee
    input: pipe
    on_branch_exit: drop
    branches:
      - {{name: quitter, command: "head -c 10 > /dev/null"}}
      - {{name: keeper, command: "wc -c > {tmp_path}/kept"}}
""")
    res = clipipe("run", str(pipe), env=env, timeout=60)
    assert res.code == 0, res
    assert (tmp_path / "kept").read_text().strip() == "50000000"
    rec = last_record(clipipe, env)
    assert {b["name"]: b["status"] for b in rec["steps"][1]["branches"]}["quitter"] == "dropped"


def test_unknown_checksum_algorithm_is_a_clear_error(clipipe, tmp_path):
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: create, command: "echo x", output: stream}
  - {name: process, type: tee, input: pipe, branches: [{name: c, type: checksum, algorithm: crc99}]}
""")
    res = clipipe("run", str(pipe))
    assert res.code == 1 and "unknown checksum algorithm 'crc99'" in res.err, res

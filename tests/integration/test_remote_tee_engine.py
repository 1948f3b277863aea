"""The engine places tees on their producer's host: pipelines run by the Runner, the "remote" context
being a real agent subprocess (LocalAgentTarget), the others the local target."""
from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
from pathlib import Path
from typing import Any

import pytest

from clipipe import fastpipe
from clipipe.engine.output import Console
from clipipe.engine.runner import Runner, RunResult
from clipipe.plan.dag import build_plan
from clipipe.spec import parse
from clipipe.targets.agent import LocalAgentTarget
from clipipe.targets.local import LocalTarget
from tests.conftest import write


class ProgressBoard:
    """The progress display's seam: what the runner registered, sampled at the end."""

    def __init__(self) -> None:
        self.counters: dict[str, Any] = {}

    def add(self, name: str, counter: Any) -> None:
        self.counters[name] = counter


def run_pipeline(tmp_path: Path, text: str, *, box: str = "agent", progress: Any = None,
                 ) -> tuple[RunResult, Runner, str, str]:
    """Run a pipeline whose default context `box` is an agent (or, box="local", a plain local target)."""
    path = write(tmp_path / "p.yaml", text)
    _, pipeline = parse.load_pipeline(str(path))
    assert pipeline is not None
    plan = build_plan(pipeline, default_context="box")
    out, err = io.StringIO(), io.StringIO()

    async def main() -> tuple[RunResult, Runner]:
        targets: dict[str, Any] = {"box": LocalAgentTarget("box") if box == "agent" else LocalTarget("box"),
                                   "local": LocalTarget("local")}

        async def get(name: str) -> Any:
            await targets[name].open()
            return targets[name]
        runner = Runner(plan, {}, get, Console(out, err), remote_contexts={"box"}, progress=progress)
        try:
            return await asyncio.wait_for(runner.run(), 60), runner
        finally:
            for t in targets.values():
                await t.close()
    result, runner = asyncio.run(main())
    return result, runner, out.getvalue(), err.getvalue()


def tee_stream(result: RunResult) -> dict[str, Any]:
    return next(s for s in result.streams if s["type"] == "tee")


def branches(result: RunResult, step: str = "process") -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in result.steps[step].branches}


def test_the_backup_pipeline_runs_its_tee_on_the_host(tmp_path: Path) -> None:
    """tar | tee(sha256, progress, gzip | cat > file, a captured branch, a shown branch), all on `box`."""
    (tmp_path / "src").mkdir()
    for i in range(5):
        (tmp_path / "src" / f"f{i}").write_bytes(os.urandom(300_000 + i))
    board = ProgressBoard()
    result, runner, out, _ = run_pipeline(tmp_path, f"""
steps:
  - {{name: create-tar, command: "tar cf - -C {tmp_path} src", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: checksum, type: checksum, algorithm: sha256}}
      - {{name: progress, type: progress}}
      - {{name: shell, command: sha256sum, output: "variable:shell_sum"}}
      - {{name: shown, command: "wc -c"}}
      - name: compress-save
        steps:
          - {{command: "gzip -1", input: pipe, output: stream}}
          - {{command: "cat > {tmp_path}/x.tar.gz", input: pipe}}
  - {{name: manifest, command: "echo {{{{.checksum}}}} > {tmp_path}/x.sha256", depends_on: [process]}}
""", progress=board)
    assert result.status == "ok", result
    tar = gzip.decompress((tmp_path / "x.tar.gz").read_bytes())
    digest = hashlib.sha256(tar).hexdigest()
    assert result.variables["checksum"] == digest == result.variables["shell_sum"].split()[0]
    assert (tmp_path / "x.sha256").read_text().strip() == digest
    assert f"{len(tar)}" in out
    stream = tee_stream(result)
    assert stream["placement"] == "remote" and stream["context"] == "box"
    assert stream["bytes_transferred"] == len(tar) and stream["checksums"]["sha256"] == digest
    shown_and_captured = len(f"{len(tar)}\n") + len(f"{digest}  -\n")   # wc -c and sha256sum's lines
    assert stream["wire"]["bytes_in"] == 0 and stream["wire"]["bytes_out"] == shown_and_captured
    b = branches(result)
    assert b["checksum"]["result"] == digest and b["progress"]["metrics"]["total_bytes"] == len(tar)
    assert b["compress-save"]["bytes_in"] == len(tar)
    assert b["compress-save"]["bytes_out"] == (tmp_path / "x.tar.gz").stat().st_size
    assert b["compress-save"]["status"] == "ok" and b["compress-save"]["placement"] == "remote"
    assert b["shell"]["variable"] == "shell_sum"
    assert board.counters["create-tar"].snapshot().bytes == len(tar)
    assert [s["type"] for s in result.streams] == ["tee"]


@pytest.mark.parametrize("size", [0, 1, fastpipe.DEFAULT_BUFSIZE, 3 * 1024 * 1024 + 7])
def test_a_branch_on_another_context_gets_the_bytes(tmp_path: Path, size: int) -> None:
    """One branch leaves the host for `local` (a two-stage chain there); the rest stays on `box`."""
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(size))
    result, *_ = run_pipeline(tmp_path, f"""
steps:
  - {{name: make, command: "cat {src}", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: sum, type: checksum, algorithm: md5}}
      - {{name: here, command: "cat > {tmp_path}/here.bin"}}
      - name: away
        context: local
        steps:
          - {{command: "gzip -1", input: pipe, output: stream}}
          - {{command: "cat > {tmp_path}/away.gz", input: pipe}}
""")
    assert result.status == "ok", result
    data = src.read_bytes()
    assert (tmp_path / "here.bin").read_bytes() == data
    assert gzip.decompress((tmp_path / "away.gz").read_bytes()) == data
    assert result.variables["sum"] == hashlib.md5(data).hexdigest()
    stream = tee_stream(result)
    assert stream["placement"] == "remote" and stream["wire"]["bytes_out"] == size
    away = branches(result)["away"]
    assert away["placement"] == "off-host" and away["context"] == "local"
    assert away["bytes_in"] == size and away["bytes_out"] == (tmp_path / "away.gz").stat().st_size


def test_a_branch_whose_first_stage_is_on_the_host_and_the_rest_elsewhere(tmp_path: Path) -> None:
    """gzip on the host, the compressed bytes leave for `local`: what crosses is gzip's output."""
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 500_000)
    result, *_ = run_pipeline(tmp_path, f"""
steps:
  - {{name: make, command: "cat {src}", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - name: ship
        steps:
          - {{command: "gzip -1", input: pipe, output: stream}}
          - {{command: "cat > {tmp_path}/ship.gz", input: pipe, context: local}}
""")
    assert result.status == "ok", result
    gz = (tmp_path / "ship.gz").read_bytes()
    assert gzip.decompress(gz) == src.read_bytes()
    assert tee_stream(result)["wire"]["bytes_out"] == len(gz) < src.stat().st_size // 10
    ship = branches(result)["ship"]
    assert ship["bytes_out"] == len(gz) and ship["ratio"] < 0.1


def test_the_producer_chain_and_its_stdin_from_the_controller(tmp_path: Path) -> None:
    """local gen -> (box: sort | uniq -> tee): the chain's stdin comes from the controller."""
    result, _, out, _ = run_pipeline(tmp_path, """
steps:
  - {name: gen, context: local, command: "seq 1 20000 | sed 's/$/ x/'", output: stream}
  - {name: sort, command: "sort", input: pipe, output: stream}
  - {name: uniq, command: "uniq", input: pipe, output: stream}
  - name: process
    type: tee
    input: pipe
    branches:
      - {name: sum, type: checksum, algorithm: sha1}
      - {name: count, command: "wc -l", output: "variable:lines"}
""")
    assert result.status == "ok", result
    expected = "".join(sorted(f"{i} x\n" for i in range(1, 20001))).encode()
    assert result.variables["sum"] == hashlib.sha1(expected).hexdigest()
    assert result.variables["lines"].strip() == "20000"
    stream = tee_stream(result)
    assert stream["placement"] == "remote" and stream["wire"]["bytes_in"] == len(expected)


def test_drop_and_fail_policies(tmp_path: Path) -> None:
    """Like the controller's tee: `fail` fails the step with a clear reason, `drop` goes on."""
    text = f"""
steps:
  - {{name: create, command: "head -c 50000000 /dev/zero", output: stream}}
  - name: process
    type: tee
    input: pipe
    on_branch_exit: POLICY
    branches:
      - {{name: quitter, command: "head -c 10 > /dev/null"}}
      - {{name: keeper, command: "wc -c > {tmp_path}/kept"}}
"""
    result, *_ = run_pipeline(tmp_path, text.replace("POLICY", "fail"))
    assert result.status == "failed" and result.failed == ["process"]
    assert result.steps["process"].error == "branch 'quitter' stopped reading early (EPIPE)"
    assert branches(result)["quitter"]["status"] == "failed"
    assert (tmp_path / "kept").read_text() == ""           # killed: never wrote a count
    assert result.steps["create"].status != "failed"
    result, *_ = run_pipeline(tmp_path, text.replace("POLICY", "drop"))
    assert result.status == "ok", result
    assert (tmp_path / "kept").read_text().strip() == "50000000"
    assert branches(result)["quitter"]["status"] == "dropped"
    assert tee_stream(result)["dropped"] == ["process/quitter"]


def test_a_failing_off_host_reader_is_killed_before_it_sees_eof(tmp_path: Path) -> None:
    """`fail` on the host: the branch reading off the host must not finish as if the stream ended."""
    result, *_ = run_pipeline(tmp_path, f"""
steps:
  - {{name: create, command: "cat /dev/zero", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: quitter, command: "head -c 10 > /dev/null"}}
      - {{name: away, context: local, command: "cat > /dev/null && touch {tmp_path}/finished"}}
""")
    assert result.status == "failed" and "quitter" in (result.steps["process"].error or "")
    assert not (tmp_path / "finished").exists()


@pytest.mark.parametrize("case, reason", [
    ("two-away", "2 branches read the stream off 'box'"),
    ("other-producer", "its producer 'create' runs on 'local'"),
    ("no-agent", "local targets run no agent"),
])
def test_where_the_tee_stays_on_the_controller_the_record_says_why(tmp_path: Path, case: str, reason: str) -> None:
    """Correct either way; the stream record carries placement and the reason."""
    ctx = "local" if case == "other-producer" else "box"
    away = "local" if case == "two-away" else "box"
    result, *_ = run_pipeline(tmp_path, f"""
steps:
  - {{name: create, context: {ctx}, command: "head -c 2000000 /dev/urandom", output: stream}}
  - name: process
    type: tee
    input: pipe
    branches:
      - {{name: sum, type: checksum, algorithm: sha256}}
      - {{name: a, context: {away}, command: "cat > {tmp_path}/a"}}
      - {{name: b, context: {away}, command: "cat > {tmp_path}/b"}}
""", box="local" if case == "no-agent" else "agent")
    assert result.status == "ok", result
    data = (tmp_path / "a").read_bytes()
    assert len(data) == 2000000 and (tmp_path / "b").read_bytes() == data
    assert result.variables["sum"] == hashlib.sha256(data).hexdigest()
    stream = tee_stream(result)
    assert stream["placement"] == "controller" and stream["placement_reason"].startswith(reason)


def test_a_tee_of_only_builtin_branches_drains_the_stream_on_the_host(tmp_path: Path) -> None:
    """Checksum and progress only: no branch pipes at all; the agent reads to the end and hashes."""
    board = ProgressBoard()
    result, *_ = run_pipeline(tmp_path, """
steps:
  - {name: make, command: "head -c 3000000 /dev/zero", output: stream}
  - name: process
    type: tee
    input: pipe
    branches:
      - {name: sum, type: checksum, algorithm: blake2b}
      - {name: progress, type: progress, size: "3000000"}
""", progress=board)
    assert result.status == "ok", result
    assert result.variables["sum"] == hashlib.blake2b(bytes(3000000)).hexdigest()
    snap = board.counters["make"].snapshot()
    assert snap.done and snap.percent == 100.0
    assert tee_stream(result)["wire"]["bytes_out"] == 0

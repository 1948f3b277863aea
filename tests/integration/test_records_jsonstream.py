"""JSON message streams through the real `clipipe` command with real producer processes.

The example, a 1 GiB stream with flat memory, a producer dying mid-object, garbage between messages,
a slow output under each buffer policy (the producer counts its own pipe stalls), Ctrl-C, and the
command running on an SSH context (real sshd).
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import PEAK_RSS_KIB, write

ROOT = Path(__file__).resolve().parents[2]
PRODUCER = ROOT / "tests" / "peers" / "jsonproducer.py"
GIB = 1 << 30


def produce(*args: str) -> str:
    return f"{shlex.quote(sys.executable)} {shlex.quote(str(PRODUCER))} " + " ".join(args)


def pipeline(tmp_path: Path, command: str, source_extra: str = "", steps: str | None = None,
             output: str = "{type: stdout}") -> Path:
    if steps is None:
        steps = textwrap.dedent("""\
              - name: by-type
                route:
                  field: type
                  routes:
                    - {match: text, priority: 10, steps: [{select: [seq, type]}]}
                    - {match: tool_use, steps: [{exclude: [input]}]}
                    - {match: [error, system], name: rest, steps: [{select: [seq, type]}]}
                  default: drop
            """)
    return write(tmp_path / "p.yaml", f"name: js\ntype: batch\nsource:\n  type: command\n"
                 f"  command: {json.dumps(command)}\n{source_extra}steps:\n{steps}output: {output}\n")


def last_record(clipipe) -> dict:
    res = clipipe("ops", "list", "--json", "-n", "1")
    return json.loads(res.out.splitlines()[0])


def wait_for(path: Path, proc: subprocess.Popen, limit: float = 120) -> None:
    """Until `path` exists (a hang guard, not a measurement)."""
    deadline = time.monotonic() + limit
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"clipipe ended before {path.name} appeared: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{path.name} never appeared")
        time.sleep(0.02)


def test_example_runs_through_the_cli(clipipe):
    res = clipipe("run", str(ROOT / "examples" / "records" / "json-events.yaml"))
    assert res.code == 0, res
    out = [json.loads(x) for x in res.out.splitlines()]
    assert {r["type"] for r in out} == {"text", "tool_use", "error", "tool_result"}
    assert all(set(r) == {"type", "text"} for r in out if r["type"] == "text")
    assert all("input" not in r for r in out if r["type"] == "tool_use")
    assert all(r["alert"] for r in out if r["type"] in ("error", "tool_result"))
    assert "skipped line 114 (byte 7382)" in res.err and "command source: 202 messages" in res.err
    rec = last_record(clipipe)
    src = rec["metrics"]["source"]
    assert rec["status"] == "ok" and src["messages"] == 202 and src["parse_errors"] == 2
    assert src["exit_code"] == 0 and src["latency_ms"]["messages"] == 202
    assert {r["name"] for r in rec["metrics"]["steps"][0]["routes"]} == {"text", "tool_use", "failures"}


def test_garbage_between_messages_is_counted_and_reported(clipipe, tmp_path):
    p = pipeline(tmp_path, produce("--count 500 --garbage-every 50"), steps="  []\n")
    res = clipipe("run", str(p))
    assert res.code == 0, res
    assert [json.loads(x)["seq"] for x in res.out.splitlines()] == list(range(500))
    assert res.err.count("warning: command source: skipped line") == 10
    src = last_record(clipipe)["metrics"]["source"]
    assert src["parse_errors"] == 10 and src["parse_error_samples"][0]["line"] == 51


def test_producer_dies_mid_object(clipipe, tmp_path):
    out = tmp_path / "out.ndjson"
    p = pipeline(tmp_path, produce("--count 300 --pretty --die-mid-object"),
                 output=f"{{type: file, path: {out}}}")
    res = clipipe("run", str(p))
    assert res.code == 1, res
    assert "killed by SIGKILL" in res.err and "after 300 messages" in res.err and "dying mid-object" in res.err
    assert not out.exists()  # the output was aborted: nothing that looks complete
    rec = last_record(clipipe)
    assert rec["status"] == "failed" and rec["metrics"]["source"]["parse_errors"] == 1
    assert rec["metrics"]["source"]["parse_error_samples"][0]["reason"] == "stream ended inside a message"


def _slow_run(tmp_path: Path, policy: str, count: int, size: int) -> tuple[list[int], dict, dict]:
    """clipipe with a stdout nobody reads until the producer stalled (block) or finished (drop)."""
    stats, stalled = tmp_path / "stats.json", tmp_path / "stalled"
    p = pipeline(tmp_path, produce(f"--count {count} --pad 100 --stats {stats} --stall-file {stalled}"),
                 source_extra=f"  buffer: {{size: {size}, policy: {policy}}}\n  batch_size: {size}\n",
                 steps="  - {select: [seq]}\n")
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "run", "-q", str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=os.environ)
    assert proc.stdout is not None
    wait_for(stalled if policy == "block" else stats, proc)
    got = [json.loads(x)["seq"] for x in proc.stdout]  # now the output goes as fast as it can
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    rec = json.loads(subprocess.run([sys.executable, "-m", "clipipe", "ops", "list", "--json", "-n", "1"],
                                    capture_output=True, text=True, env=os.environ).stdout.splitlines()[0])
    return got, json.loads(stats.read_text()), rec["metrics"]["source"]["buffer"]


def test_slow_output_block_stalls_the_producer_and_loses_nothing(tmp_path):
    got, prod, buf = _slow_run(tmp_path, "block", 30000, 100)
    assert got == list(range(30000))
    assert prod["stalls"] >= 1  # the producer's writes were refused: its pipe was full
    assert buf["dropped"] == 0 and buf["backpressure_events"] >= 1 and buf["high_water_mark"] <= 100


@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest"])
def test_slow_output_drop_policies_drop_and_keep_the_right_messages(tmp_path, policy):
    count, size = 30000, 100
    got, prod, buf = _slow_run(tmp_path, policy, count, size)
    assert 0 < len(got) < count and len(got) + buf["dropped"] == count
    assert got == sorted(set(got))  # what is delivered keeps its order, once each
    assert buf[f"dropped_{policy.split('_')[1]}"] == buf["dropped"]
    if policy == "drop_newest":  # the first messages always fit an empty buffer
        assert got[:size] == list(range(size))
    else:                        # the freshest are never evicted once the producer is done
        assert got[-size:] == list(range(count - size, count))


def test_ctrl_c_kills_the_producer_group(tmp_path):
    pids = tmp_path / "pids"
    cmd = f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; while true; do echo '{{\"type\": \"text\"}}'; done"
    p = pipeline(tmp_path, cmd, output="{type: file, path: out.ndjson}")
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "run", "-q", str(p)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path, env=os.environ)
    wait_for(pids, proc)
    while len(pids.read_text().split()) < 2:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) != 0
    for pid in map(int, pids.read_text().split()):
        for _ in range(200):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"process {pid} outlived clipipe")
    assert not (tmp_path / "out.ndjson").exists()


@pytest.mark.slow
def test_one_gib_stream_with_flat_memory(tmp_path):
    p = pipeline(tmp_path, produce(f"--bytes {GIB}"))
    rss = tmp_path / "rss"
    code = textwrap.dedent(f"""
        import runpy, sys
        sys.argv = ["clipipe", "run", "-q", {str(p)!r}]
        try:
            runpy.run_module("clipipe", run_name="__main__")
        finally:
            open({str(rss)!r}, "w").write(str({PEAK_RSS_KIB}))
        """)
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path, env=os.environ, timeout=1800)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-2000:]
    rec = json.loads(subprocess.run([sys.executable, "-m", "clipipe", "ops", "list", "--json", "-n", "1"],
                                    capture_output=True, text=True, env=os.environ).stdout.splitlines()[0])
    src = rec["metrics"]["source"]
    rss_mib = int(rss.read_text()) / 1024
    print(f"\n1 GiB JSON stream: {src['messages']} messages in {took:.1f} s "
          f"({src['mb_per_s']:.0f} MB/s), peak RSS {rss_mib:.0f} MiB")
    assert src["bytes"] >= GIB - (2 << 20) and src["parse_errors"] == 0
    assert rec["metrics"]["records_in"] == src["messages"]
    assert rss_mib < 200, "peak RSS should stay far below the 1 GiB stream"


def test_command_on_an_ssh_context(clipipe, tmp_path, sshd):
    ctx = write(tmp_path / "contexts.yaml", "contexts:\n  local:\n    type: local\n    default: true\n"
                + sshd.contexts_yaml("web"))
    gen = "seq 0 4999 | sed 's/.*/{\"seq\": &, \"type\": \"text\"}/'; echo 'remote noise'"
    p = pipeline(tmp_path, gen, source_extra="  context: web\n")
    res = clipipe("--contexts", str(ctx), "run", str(p))
    assert res.code == 0, res
    assert [json.loads(x)["seq"] for x in res.out.splitlines()] == list(range(5000))
    src = last_record(clipipe)["metrics"]["source"]
    assert src["context"] == "web" and src["parse_errors"] == 1 and src["messages"] == 5000
    bad = pipeline(tmp_path, "echo '{\"type\": \"text\"}'; echo oops >&2; exit 4", source_extra="  context: web\n")
    res = clipipe("--contexts", str(ctx), "run", str(bad))
    assert res.code == 1 and "exited with status 4 after 1 messages" in res.err and "oops" in res.err, res

"""The command source with real producer processes: parsing, exit status, early stop, quoting, metrics."""
from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest

from clipipe.errors import RecordError, SpecError
from clipipe.records.testing import load_text, run_text

PRODUCER = Path(__file__).resolve().parents[2] / "peers" / "jsonproducer.py"
PY = shlex.quote(sys.executable)


def produce(*args: str) -> str:
    return f"{PY} {shlex.quote(str(PRODUCER))} " + " ".join(args)


def pipe(command: str, extra: str = "", steps: str = "", output: str = "{type: stdout}") -> str:
    return (f"name: cmd\ntype: batch\nsource:\n  type: command\n  command: {json.dumps(command)}\n{extra}"
            + (f"steps:\n{steps}" if steps else "") + f"output: {output}\n")


def recs(text: str) -> list:
    return [json.loads(x) for x in text.splitlines()]


def test_ndjson_pretty_and_garbage(tmp_path) -> None:
    m, out, err = run_text(pipe(produce("--count 40 --garbage-every 10")), tmp_path / "p.yaml")
    assert [r["seq"] for r in recs(out)] == list(range(40))
    src = m["source"]
    assert src["messages"] == 40 and src["parse_errors"] == 4 and src["exit_code"] == 0
    assert [s["line"] for s in src["parse_error_samples"]] == [11, 22, 33, 44]
    assert "skipped line 11" in err and "command source: 40 messages" in err
    assert src["latency_ms"]["messages"] == 40 and src["latency_ms"]["p99"] >= src["latency_ms"]["p50"] > 0
    assert src["buffer"]["policy"] == "block" and src["buffer"]["messages_out"] == 40
    m, out, _ = run_text(pipe(produce("--count 7 --pretty")), tmp_path / "p.yaml")
    assert [r["seq"] for r in recs(out)] == list(range(7)) and m["source"]["parse_errors"] == 0


def test_nonzero_exit_fails_after_the_records_and_aborts_the_output(tmp_path) -> None:
    text = pipe(produce("--count 5 --exit 3"), output="{type: file, path: out.ndjson}")
    with pytest.raises(RecordError) as ei:
        run_text(text, tmp_path / "p.yaml")
    msg = str(ei.value)
    assert "exited with status 3 after 5 messages" in msg and "wrote 5 messages" in msg
    assert not (tmp_path / "out.ndjson").exists()  # a failed run leaves no output that looks complete


def test_producer_dying_mid_object(tmp_path) -> None:
    with pytest.raises(RecordError) as ei:
        run_text(pipe(produce("--count 3 --die-mid-object")), tmp_path / "p.yaml")
    msg = str(ei.value)  # sh -c reports its child's signal as 128 + 9
    assert "exited with status 137 (killed by SIGKILL) after 3 messages" in msg and "dying mid-object" in msg


def test_early_stop_kills_the_process_group(tmp_path) -> None:
    pids = tmp_path / "pids"
    # a producer that never ends, with a background child in its group
    cmd = (f"sleep 300 & echo $! > {pids}; echo $$ >> {pids}; "
           "while true; do echo '{\"x\": \"a\"}'; done")
    steps = "  - {name: boom, filter: '.x | test(1)'}\n"  # jq error on the first record: the run stops
    t = time.monotonic()
    with pytest.raises(RecordError) as ei:
        run_text(pipe(cmd, steps=steps), tmp_path / "p.yaml")
    assert "boom" in str(ei.value)
    for pid in map(int, pids.read_text().split()):
        for _ in range(100):  # reaped by the target's kill (SIGTERM, SIGKILL after 2 s)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"process {pid} survived the stopped pipeline")
    assert time.monotonic() - t < 60


def test_params_are_shell_quoted_and_env_interpolated(tmp_path) -> None:
    evil = "x'; touch PWNED; echo '"
    text = ("name: q\ntype: batch\nparams:\n  word: {default: a}\nsource:\n  type: command\n"
            "  command: >-\n    " + PY + " -c 'import json,sys,os; print(json.dumps({\"w\": sys.argv[1],"
            " \"g\": os.environ[\"G\"], \"h\": sys.argv[2]}))' {{.word}} ${HELLO}\n"
            "  env: {G: \"${HELLO}-env\"}\noutput: {type: stdout}\n")
    m, out, _ = run_text(text, tmp_path / "p.yaml", params={"word": evil}, env={"HELLO": "hi"})
    assert recs(out) == [{"w": evil, "g": "hi-env", "h": "hi"}]
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_argv_list_form(tmp_path) -> None:
    text = ("name: a\nsource:\n  type: command\n  command: [" + json.dumps(sys.executable) + ", -c, "
            "'print(1); print([2, 3])']\noutput: {type: stdout}\n")
    _, out, _ = run_text(text, tmp_path / "p.yaml")
    assert recs(out) == [1, [2, 3]]


def test_on_parse_error_stop(tmp_path) -> None:
    with pytest.raises(RecordError) as ei:
        run_text(pipe(produce("--count 30 --garbage-every 10"), "  on_parse_error: stop\n"), tmp_path / "p.yaml")
    assert "bad input at line 11 (byte" in str(ei.value)


def test_oversized_message_is_skipped(tmp_path) -> None:
    m, out, _ = run_text(pipe(produce("--count 3 --pad 3000"), "  max_message_bytes: 2KiB\n"), tmp_path / "p.yaml")
    assert out == "" and m["source"]["parse_errors"] == 3
    assert "max_message_bytes (2048)" in m["source"]["parse_error_samples"][0]["reason"]


def test_unknown_context_is_one_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLIPIPE_CONTEXTS", str(tmp_path / "none.yaml"))
    with pytest.raises(RecordError) as ei:
        run_text(pipe("echo 1", "  context: nowhere\n"), tmp_path / "p.yaml")
    assert "context 'nowhere'" in str(ei.value)


@pytest.mark.parametrize("extra, message", [
    ("  max_message_bytes: 8 parsecs\n", "is not a size"),
    ("  buffer: {size: 0}\n", "at least 1"),
    ("  buffer: {size: 10, max_size: 5}\n", "max_size must be at least"),
    ("  buffer: {policy: lifo}\n", "expected one of 'block', 'drop_oldest', 'drop_newest'"),
    ("  progress: soon\n", "is not a duration"),
    ("  frequency: 1\n", "unknown key 'frequency'"),
])
def test_bad_settings_point_at_the_file(tmp_path, extra, message) -> None:
    with pytest.raises(SpecError) as ei:
        load_text(pipe("echo 1", extra), tmp_path / "p.yaml")
    assert message in str(ei.value) and ei.value.mark is not None and ei.value.mark.line >= 3

"""The raw-exec script of pods without Python, run by the local `sh` (what a pod's sh would run)."""
from __future__ import annotations

import os
import subprocess
import time

from clipipe.targets.base import ProcSpec
from clipipe.targets.kubernetes import raw_script
from clipipe.targets.sshmux import StatusParser, new_nonce


def run(procs: list[ProcSpec], stdin: bytes | None) -> tuple[bytes, bytes, StatusParser]:
    """Run the script as a pod would: its own session; without a stream, stdin stays open to the end."""
    nonce = new_nonce()
    parser = StatusParser(nonce, len(procs))
    p = subprocess.Popen(["sh", "-c", raw_script(procs, nonce, stdin is not None)], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    assert p.stdin is not None and p.stdout is not None and p.stderr is not None
    if stdin is not None:
        p.stdin.write(stdin)
        p.stdin.close()
    out, err = p.stdout.read(), p.stderr.read()
    assert p.wait(30) == 0
    if stdin is None:
        p.stdin.close()                     # after the end: the guard is gone already
    return out, parser.feed(err) + parser.flush(), parser


def test_statuses_of_each_proc_and_stderr_pass_through():
    procs = [ProcSpec("a", "printf 'x\\ny\\n'; echo oops >&2"), ProcSpec("b", "grep y; exit 3")]
    out, err, parser = run(procs, None)
    assert out == b"y\n" and err == b"oops\n"
    assert parser.statuses == {0: 0, 1: 3} and parser.pid
    outcomes = parser.outcomes(procs, 0.0, 1.0)
    assert [o.exit_code for o in outcomes] == [0, 3]


def test_stdin_goes_to_the_first_proc_only_when_there_is_a_stream():
    out, _, _ = run([ProcSpec("a", "wc -c")], b"12345")
    assert out.strip() == b"5"
    out, _, _ = run([ProcSpec("a", "wc -c")], None)        # the lifeline is not the proc's stdin
    assert out.strip() == b"0"


def test_cwd_and_env_reach_the_proc():
    out, _, _ = run([ProcSpec("a", 'echo "$X $(pwd)"', env={"X": "it's"}, cwd="/tmp")], None)
    assert out == b"it's /tmp\n"


def test_closing_the_lifeline_kills_the_whole_segment():
    """The controller is gone (the exec's stdin closed): nothing of the segment survives."""
    nonce = new_nonce()
    marker = f"1000.{os.getpid()}{int(time.time()) % 1000}"
    p = subprocess.Popen(["sh", "-c", raw_script([ProcSpec("s", f"sleep {marker}"), ProcSpec("t", "cat")],
                                                 nonce, False)],
                         stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    pgid = p.pid
    deadline = time.monotonic() + 10
    while not _group_members(pgid, marker):
        assert time.monotonic() < deadline, "the segment should be running"
        time.sleep(0.05)
    assert p.stdin is not None
    p.stdin.close()
    p.wait(10)
    deadline = time.monotonic() + 10
    while _group_members(pgid, None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _group_members(pgid, None) == []


def _group_members(pgid: int, marker: str | None) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] == "Z" or int(fields[2]) != pgid:
                continue
            if marker is not None:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if marker.encode() not in f.read():
                        continue
            found.append(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    return found

"""The plain-exec segment script and its stderr marker parser (pure parts of clipipe.targets.sshmux)."""
from __future__ import annotations

import subprocess

from hypothesis import given
from hypothesis import strategies as st

from clipipe.targets.base import ProcSpec
from clipipe.targets.sshmux import StatusParser, new_nonce, remote_command, segment_script


@given(st.lists(st.binary(max_size=40), max_size=6), st.lists(st.integers(0, 255), min_size=1, max_size=4),
       st.lists(st.integers(1, 17), min_size=1, max_size=30))
def test_markers_are_found_across_any_chunking(outputs, statuses, cuts):
    nonce = new_nonce()
    stream = b""
    for i, code in enumerate(statuses):
        stream += (outputs[i] if i < len(outputs) else b"") + f"{nonce}:{i}:{code}\n".encode()
    stream = f"{nonce}:pid:4242\n".encode() + stream + b"tail"
    p = StatusParser(nonce, len(statuses))
    got, pos, k = b"", 0, 0
    while pos < len(stream):
        n = cuts[k % len(cuts)]
        got += p.feed(stream[pos:pos + n])
        pos, k = pos + n, k + 1
    got += p.flush()
    assert got == b"".join(outputs[:len(statuses)]) + b"tail"
    assert p.statuses == dict(enumerate(statuses)) and p.pid == 4242


def test_script_runs_under_local_sh_with_statuses_env_and_cwd(tmp_path):
    procs = [ProcSpec("a", "echo $GREETING; pwd; echo err >&2", env={"GREETING": "it's me"}, cwd=str(tmp_path)),
             ProcSpec("b", "tr a-z A-Z; exit 3"), ProcSpec("c", "cat; kill -TERM $$")]
    nonce = new_nonce()
    r = subprocess.run(["sh", "-c", remote_command(segment_script(procs, nonce))], capture_output=True)
    assert r.stdout == f"IT'S ME\n{str(tmp_path).upper()}\n".encode()
    p = StatusParser(nonce, 3)
    assert (p.feed(r.stderr) + p.flush()).startswith(b"err\n")   # sh may add "Terminated"
    outcomes = p.outcomes(procs, 0.0, 1.0)
    assert [(o.exit_code, o.signal) for o in outcomes] == [(0, None), (3, None), (None, 15)]


@given(st.lists(st.tuples(st.integers(0, 2), st.binary(max_size=30).filter(lambda b: b"\n" not in b)),
                max_size=12), st.lists(st.integers(1, 23), min_size=1, max_size=10))
def test_tagged_stderr_lines_reach_their_proc_across_any_chunking(lines, cuts):
    nonce = new_nonce()
    got: dict[int, bytes] = {0: b"", 1: b"", 2: b""}
    p = StatusParser(nonce, 3, on_line=lambda i, data: got.__setitem__(i, got[i] + data))
    stream = b"".join(f"{nonce}:e{i}:".encode() + text + b"\n" for i, text in lines) + b"untagged"
    plain, pos, k = b"", 0, 0
    while pos < len(stream):
        n = cuts[k % len(cuts)]
        plain += p.feed(stream[pos:pos + n])
        pos, k = pos + n, k + 1
    plain += p.flush()
    assert plain == b"untagged"
    for i in range(3):
        assert got[i] == b"".join(text + b"\n" for j, text in lines if j == i)


def test_tagged_script_splits_each_procs_stderr_and_keeps_stdout_and_statuses():
    procs = [ProcSpec("a", "echo one; echo a-err >&2; echo a-err2 >&2"),
             ProcSpec("b", "tr a-z A-Z; echo b-err >&2; exit 4"), ProcSpec("c", "cat; printf c-partial >&2")]
    nonce = new_nonce()
    r = subprocess.run(["sh", "-c", remote_command(segment_script(procs, nonce, tag_stderr=True))],
                       capture_output=True)
    assert r.stdout == b"ONE\n"
    got: dict[int, bytes] = {0: b"", 1: b"", 2: b""}
    p = StatusParser(nonce, 3, on_line=lambda i, data: got.__setitem__(i, got[i] + data))
    assert p.feed(r.stderr) + p.flush() == b""
    assert got == {0: b"a-err\na-err2\n", 1: b"b-err\n", 2: b"c-partial\n"}
    assert [o.exit_code for o in p.outcomes(procs, 0.0, 1.0)] == [0, 4, 0]


def test_tagged_script_without_awk_still_runs_and_reports(tmp_path):
    procs = [ProcSpec("a", "echo x; echo a-err >&2"), ProcSpec("b", "cat; exit 2")]
    nonce = new_nonce()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "cat", "sleep", "kill"):          # a PATH with no awk
        path = subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True, text=True).stdout.strip()
        if path.startswith("/"):
            (bindir / tool).symlink_to(path)
    r = subprocess.run(["/bin/sh", "-c", remote_command(segment_script(procs, nonce, tag_stderr=True))],
                       capture_output=True, env={"PATH": str(bindir)})
    assert r.stdout == b"x\n"
    p = StatusParser(nonce, 2)
    assert p.feed(r.stderr) + p.flush() == b"a-err\n"   # merged, untagged
    assert [o.exit_code for o in p.outcomes(procs, 0.0, 1.0)] == [0, 2]

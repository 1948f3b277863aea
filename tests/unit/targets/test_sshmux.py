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

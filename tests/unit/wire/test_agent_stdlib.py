"""The agent is stdlib-only and Python 3.8 compatible: it is shipped to hosts that have nothing else."""
from __future__ import annotations

import ast
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from clipipe.wire import bootstrap, frames

AGENT = bootstrap.agent_path()

#: Run the agent in-process under `python -I -S`, then report every loaded module outside the stdlib.
AUDIT = textwrap.dedent("""
    import os, sys, sysconfig
    path = sys.argv[1]
    g = {"__name__": "clipipe_agent", "__file__": path}
    exec(compile(open(path, "rb").read(), path, "exec"), g)
    g["main"](None)
    roots = [os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")]
    bad = sorted(name for name, m in list(sys.modules.items())
                 if getattr(m, "__file__", None) and m.__file__ != path
                 and not any(os.path.realpath(m.__file__).startswith(r + os.sep) for r in roots))
    sys.stderr.write("NONSTDLIB=" + repr(bad) + "\\n")
""")


def _exercise() -> bytes:
    """Frames that touch every code path worth importing for: segment, checksums, stdin, kill, ping."""
    seg = {"id": 1, "procs": [{"name": "a", "command": "cat", "env": {"X": "1"}, "cwd": "/"},
                              {"name": "b", "command": "tr a-z A-Z; echo e >&2"}],
           "stdin": 1, "stdout": 2, "stderr": [3, 4], "checksums": ["sha256", "md5"]}
    return (frames.encode(0, frames.HELLO, {"id": 9}) + frames.encode(0, frames.RUN_SEGMENT, seg)
            + frames.encode_data(1, b"hello\n") + frames.encode(1, frames.EOF, None)
            + frames.encode(0, frames.RUN_SEGMENT, {"id": 2, "procs": [{"command": "sleep 30"}],
                                                    "stdin": None, "stdout": None})
            + frames.encode(0, frames.KILL, {"id": 3, "segment": 2, "signal": 15})
            + frames.encode(0, frames.PING, {"id": 4}))


def _run(argv: list[str], stdin: bytes) -> tuple[list[tuple], str]:
    proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=60, cwd="/")
    got, tail = frames.split_frames(proc.stdout)
    assert tail == b"" and proc.returncode == 0, proc.stderr.decode()
    return got, proc.stderr.decode()


def _wait_exits(argv: list[str], stdin: bytes) -> tuple[list[tuple], str]:
    """Feed frames, keep stdin open until both EXITs arrived (closing it would kill segment 1)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            cwd="/")
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(stdin)
    proc.stdin.flush()
    buf, got = b"", []
    while sum(1 for f in got if f[1] == frames.EXIT) < 2:
        chunk = os.read(proc.stdout.fileno(), 65536)
        assert chunk, proc.stderr.read() if proc.stderr else ""
        buf += chunk
        new, buf = frames.split_frames(buf)
        got += new
    proc.stdin.close()
    rest = proc.stdout.read()
    err = proc.stderr.read().decode() if proc.stderr else ""
    assert proc.wait(30) == 0, err
    got += frames.split_frames(buf + rest)[0]
    return got, err


def _check(got: list[tuple]) -> None:
    kinds = [k for _, k, _ in got]
    assert kinds[0] == frames.HELLO and frames.PONG in kinds and frames.ERROR not in kinds, got
    exits = {p["id"]: p for _, k, p in got if k == frames.EXIT}
    assert [p["exit_code"] for p in exits[1]["procs"]] == [0, 0]
    assert exits[1]["digests"]["sha256"] == hashlib.sha256(b"HELLO\n").hexdigest()
    assert exits[2]["procs"][0]["signal"] == 15
    out = b"".join(p for c, k, p in got if c == 2 and k == frames.DATA)
    assert out == b"HELLO\n"


def test_agent_source_imports_only_stdlib_modules() -> None:
    """Statically: every import statement names a stdlib module."""
    names = set()
    for node in ast.walk(ast.parse(AGENT.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            names.add(node.module.split(".")[0])
    assert names and names <= set(sys.stdlib_module_names), names - set(sys.stdlib_module_names)


def test_agent_runs_isolated_and_loads_nothing_outside_the_stdlib() -> None:
    """Dynamically: under `python -I -S` (no site-packages, no env, no cwd) a full session works."""
    got, err = _wait_exits([sys.executable, "-I", "-S", "-c", AUDIT, str(AGENT)], _exercise())
    _check(got)
    assert "NONSTDLIB=[]" in err, err


def test_agent_source_is_python38_syntax() -> None:
    """No syntax newer than 3.8 (walrus is 3.8 and allowed; match, except*, X | Y at runtime are not)."""
    ast.parse(AGENT.read_text(), feature_version=(3, 8))
    ast.parse(bootstrap.LOADER_SOURCE, feature_version=(3, 8))


def _python38() -> str | None:
    """A working Python 3.8 (pyenv shims may exist without the version behind them)."""
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3.8")))
    candidates += [c for c in [shutil.which("python3.8")] if c]
    for candidate in candidates:
        if subprocess.run([candidate, "-c", "pass"], capture_output=True).returncode == 0:
            return candidate
    return None


def test_agent_runs_on_python38() -> None:
    """With a real 3.8 at hand, boot through the loader under -I -S and run the same session."""
    python = _python38()
    if python is None:
        pytest.skip("no python3.8 on this machine")
    got, _ = _wait_exits([python, "-I", "-S", "-c", bootstrap.loader_command_arg()],
                         bootstrap.payload() + _exercise())
    assert got[0][2]["python"].startswith("3.8.")
    _check(got)

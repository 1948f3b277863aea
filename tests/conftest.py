"""Shared fixtures: an isolated state directory and a way to run the real `clipipe` command."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clipipe_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own state directory (SQLite store), never the user's."""
    home = tmp_path_factory.mktemp("clipipe-home")
    monkeypatch.setenv("CLIPIPE_HOME", str(home))
    return home


class CLIResult:
    """What a `clipipe` process did."""

    def __init__(self, proc: subprocess.CompletedProcess[str]) -> None:
        self.code = proc.returncode
        self.out = proc.stdout
        self.err = proc.stderr

    def __repr__(self) -> str:
        return f"<exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}>"


@pytest.fixture
def clipipe(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Run `python -m clipipe ARGS` in tmp_path and return a CLIResult."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 120, input: str | None = None,
            env: dict[str, str] | None = None) -> CLIResult:
        full_env = {**os.environ, **(env or {})}
        proc = subprocess.run([sys.executable, "-m", "clipipe", *args], cwd=cwd or tmp_path, text=True,
                              capture_output=True, timeout=timeout, input=input, env=full_env)
        return CLIResult(proc)

    return run


#: A Python expression, for code run in a child process: that process's own peak RSS in KiB.
#: (VmHWM belongs to the memory image exec made; ru_maxrss keeps the high-water mark from before
#: the exec, i.e. the test runner's, once that has grown past what is measured.)
PEAK_RSS_KIB = "int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"


def write(path: Path, text: str) -> Path:
    """Write text to path (creating parents) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path

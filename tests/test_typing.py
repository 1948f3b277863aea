"""mypy stays clean on src/clipipe (STYLE.md: hints on every public function, mypy on the package)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_is_clean():
    pytest.importorskip("mypy", reason="mypy comes with the test extras: pip install -e '.[test]'")
    res = subprocess.run([sys.executable, "-m", "mypy", "src/clipipe"], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:]

"""Table-driven spec cases: tests/specs/<case>/pipeline.yaml + expected_output.txt or expected_error.txt.

Each case runs `clipipe run pipeline.yaml -q` in its own directory; expected_error.txt holds the start
of the one error line (after `error: `), expected_output.txt the exact stdout (prefix padding ignored).
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

CASES = sorted(p for p in (Path(__file__).parent / "specs").iterdir() if (p / "pipeline.yaml").exists())


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_spec_case(clipipe, case):
    res = clipipe("run", "-q", "pipeline.yaml", cwd=case)
    err_file, out_file = case / "expected_error.txt", case / "expected_output.txt"
    if err_file.exists():
        assert res.code == 2, res
        assert "Traceback" not in res.err
        lines = [ln for ln in res.err.splitlines() if ln.startswith("error: ")]
        assert len(lines) == 1, res
        assert lines[0][len("error: "):].startswith(err_file.read_text().strip()), res
    else:
        assert res.code == 0, res
        normalized = re.sub(r"^(\[[^\]]+\]) +", r"\1 ", res.out, flags=re.M)
        assert normalized == out_file.read_text()

"""Every pipeline in examples/records loads (validation only; nothing is run)."""
from __future__ import annotations

from pathlib import Path

import pytest

from clipipe.records import is_record_pipeline, load
from clipipe.spec import yamlmarks

EXAMPLES = sorted((Path(__file__).resolve().parents[3] / "examples" / "records").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_loads(path: Path) -> None:
    doc = yamlmarks.load(path)
    assert is_record_pipeline(doc)
    pipe = load(doc, path=str(path), params={"name": path.stem, "date": "2026-01-01", "op_id": "x"})
    assert pipe.name

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
    defaults = {str(k): v.get("default") for k, v in (doc.get("params") or {}).items() if isinstance(v, dict)}
    pipe = load(doc, path=str(path), params={**defaults, "name": path.stem, "date": "2026-01-01", "op_id": "x"})
    assert pipe.name

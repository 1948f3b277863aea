"""Run a record pipeline from YAML text in one call (tests, benchmarks, `clipipe test` later)."""
from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import Any

from clipipe.records.pipeline import RecordPipeline, load
from clipipe.spec import yamlmarks


def load_text(text: str, path: str | Path, *, params: dict[str, Any] | None = None,
              env: dict[str, str] | None = None, write: bool = True) -> RecordPipeline:
    """Write `text` to `path` (so marks and mapping positions refer to a real file) and load it."""
    p = Path(path)
    if write:
        p.write_text(text, encoding="utf-8")
    doc = yamlmarks.loads(text, str(p))
    return load(doc, path=str(p), params=params or {}, source_text=text, env=env)


def run_text(text: str, path: str | Path, *, store: Any = None, params: dict[str, Any] | None = None,
             env: dict[str, str] | None = None, quiet: bool = False,
             op_id: str = "test") -> tuple[dict[str, Any], str, str]:
    """Load and run; returns (metrics, stdout text, stderr text)."""
    pipe = load_text(text, path, params=params, env=env)
    out, err = io.StringIO(), io.StringIO()
    if store is None:
        from clipipe.state.sqlite import SQLiteStore
        store = SQLiteStore(Path(path).with_suffix(".state.db"))
    metrics = asyncio.run(pipe.run(store=store, op_id=op_id, stdout=out, stderr=err, quiet=quiet))
    return metrics, out.getvalue(), err.getvalue()

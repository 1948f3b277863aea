"""Record pipelines (data pipeline v2): sources -> steps -> output, batch mode.

    is_record_pipeline(doc)                         does this YAML describe a record pipeline?
    load(doc, path=..., params=...)                 validate and build (SpecError with file:line:col)
    await pipeline.run(store=..., op_id=..., stdout=..., stderr=...)   -> metrics dict

Components (sources file/sql/http, steps transform/filter/sample/select/exclude, outputs
stub/stdout/file) describe themselves in `registry`; `explain(kind, type)` renders one.
"""
from __future__ import annotations

from clipipe.records.pipeline import RecordPipeline, is_record_pipeline, load
from clipipe.records.registry import explain

__all__ = ["RecordPipeline", "explain", "is_record_pipeline", "load"]

"""The `transform` step: a Bloblang-style mapping applied to every record."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipipe.records.core import Batch, Step
from clipipe.records.mapping import DELETED, MappingError, compile_mapping, locator
from clipipe.records.registry import option, register


@dataclass
class TransformConfig:
    mapping: str = option("The mapping (root = this, root.x = ..., deleted(), if, meta).",
                          examples=['root = this\nroot.full_name = this.first_name + " " + this.last_name'])


@register("step", "transform")
class TransformStep(Step):
    """Maps each record to a new one; `root = deleted()` drops it."""

    summary = "Rewrite each record with a mapping (a Bloblang subset); parsed once, errors at line:col."
    Config = TransformConfig
    examples = [
        """steps:
  - name: parse
    transform: |
      root = this
      root.full_name = this.first_name + " " + this.last_name
      root.password = deleted()
""",
        """steps:
  - name: tiers
    type: transform
    mapping: |
      root = this
      root.tier = if this.score >= 90 { "gold" } else { "basic" }
      meta source = "crm"
""",
    ]

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        return {"mapping": value} if isinstance(value, str) else value

    def __init__(self, config: TransformConfig, ctx: Any, mark: Any, name: str, on_error: str,
                 value_mark: Any = None) -> None:
        super().__init__(config, ctx, mark, name, on_error)
        src_lines = ctx.extra.get("source_lines")
        self.mapping = compile_mapping(config.mapping, locator(value_mark or mark, src_lines))
        self.writes_meta = "meta" in config.mapping

    def process(self, batch: Batch) -> Batch:
        recs = batch.records()
        apply = self.mapping.apply
        out: list[Any] = []
        keep: list[int] = []
        metas = batch.metas
        if self.writes_meta and metas is None:
            metas = [None] * len(recs)
        for i, r in enumerate(recs):
            if metas is not None:
                mi = metas[i]
                m = dict(mi if mi is not None else batch.meta)
            else:
                m = batch.meta
            try:
                new = apply(r, m)
            except MappingError as exc:
                self.fail(batch, i, f"{exc.message} (at {self.mapping.where(exc)})")
                continue
            except RecursionError:
                self.fail(batch, i, "mapping recursion too deep")
                continue
            if new is DELETED:
                continue
            if metas is not None:
                metas[i] = m
            out.append(new)
            keep.append(i)
        batch.metas = metas
        if len(keep) != len(recs):
            batch = batch.take(keep)
        batch.replace(out)
        return batch

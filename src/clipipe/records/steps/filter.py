"""The `filter` step: keep the records for which a jq expression's first output is truthy."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jq

from clipipe.errors import SpecError
from clipipe.records.core import Batch, Step
from clipipe.records.registry import option, register
from clipipe.records.steps.jqfast import JqError, compile_fast


@dataclass
class FilterConfig:
    expression: str = option("A jq expression; a record passes if its first output is neither false "
                             "nor null (no output: dropped).", examples=['.status == "active"'])
    fast_path: bool = option("Run simple expressions (paths, literals, comparisons, and/or/not) as "
                             "Python with jq's semantics instead of through libjq.", True)


@register("step", "filter")
class FilterStep(Step):
    """Drops the records a jq expression rejects; the program is compiled once."""

    summary = "Keep records matching a jq expression (real jq via the jq binding)."
    Config = FilterConfig
    examples = [
        """steps:
  - name: active_only
    filter: '.status == "active"'
""",
        """steps:
  - name: big_spenders
    filter: '.orders | map(.total) | add > 100'
""",
    ]

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        return {"expression": value} if isinstance(value, str) else value

    def __init__(self, config: FilterConfig, ctx: Any, mark: Any, name: str, on_error: str,
                 value_mark: Any = None) -> None:
        super().__init__(config, ctx, mark, name, on_error)
        expr = config.expression
        try:
            # one output per input: whether the expression's first output is truthy
            self.program = jq.compile(f"[limit(1; {expr})] | (length > 0 and (.[0] | . != null and . != false))")
            jq.compile(expr)
        except ValueError as exc:
            detail = str(exc).replace("jq: error: ", "").splitlines()[0]
            raise SpecError(f"filter {name!r}: invalid jq expression: {detail}",
                            mark=value_mark or mark) from None
        self.fast = compile_fast(expr) if config.fast_path else None

    def process(self, batch: Batch) -> Batch:
        recs = batch.records(lambda i, why: self.fail(batch, i, why))
        if self.fast is not None:
            f = self.fast
            try:
                keep = [i for i, r in enumerate(recs) if f(r)]
            except JqError:
                keep = self._one_by_one(batch, recs)
        else:
            keep = self._jq_batch(batch, recs)
        if len(keep) == len(recs):
            return batch
        return batch.take(keep)

    def _jq_batch(self, batch: Batch, recs: list[Any]) -> list[int]:
        lines = batch.raw_lines()
        try:
            if lines is not None:
                flags = self.program.input_text("\n".join(lines)).all()
            else:
                flags = self.program.input_values(recs).all()
        except ValueError:
            return self._one_by_one(batch, recs)
        return [i for i, ok in enumerate(flags) if ok]

    def _one_by_one(self, batch: Batch, recs: list[Any]) -> list[int]:
        keep = []
        for i, r in enumerate(recs):
            try:
                ok = self.fast(r) if self.fast is not None else self.program.input_value(r).first()
            except (JqError, ValueError) as exc:
                self.fail(batch, i, f"jq: {str(exc).splitlines()[0]}")
                continue
            if ok:
                keep.append(i)
        return keep

"""The `select` step: keep only the listed fields (dotted paths keep their nesting)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipipe.errors import SpecError
from clipipe.records.core import Batch, Step
from clipipe.records.registry import option, register


@dataclass
class SelectConfig:
    fields: list[str] = option("Fields to keep; `a.b` keeps b inside a. Missing fields are left out.",
                               examples=[["id", "name", "address.city"]])


def split_paths(fields: list[str], name: str, mark: Any) -> list[tuple[str, ...]]:
    """Dotted paths as tuples; an empty part is a SpecError."""
    out = []
    for f in fields:
        parts = tuple(f.split("."))
        if not all(parts):
            raise SpecError(f"step {name!r}: bad field path {f!r}", mark=mark)
        out.append(parts)
    return out


@register("step", "select")
class SelectStep(Step):
    """Builds each record anew from the selected paths."""

    summary = "Keep only some fields of each record (nested with dotted paths)."
    Config = SelectConfig
    examples = [
        """steps:
  - name: select_fields
    select: [id, name, email]
""",
        """steps:
  - name: slim
    select:
      - id
      - address.city
""",
    ]

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        return {"fields": value} if isinstance(value, list) else value

    def __init__(self, config: SelectConfig, ctx: Any, mark: Any, name: str, on_error: str,
                 value_mark: Any = None) -> None:
        super().__init__(config, ctx, mark, name, on_error)
        self.paths = split_paths(config.fields, name, value_mark or mark)
        self.flat = [p[0] for p in self.paths] if all(len(p) == 1 for p in self.paths) else None

    def process(self, batch: Batch) -> Batch:
        recs = batch.records(lambda i, why: self.fail(batch, i, why))
        flat = self.flat
        if flat is not None:
            try:
                out = [{k: r[k] for k in flat if k in r} for r in recs]
            except TypeError:
                out = None
            if out is not None and all(type(r) is dict for r in recs):
                batch.replace(out)
                return batch
        keep, out = [], []
        for i, r in enumerate(recs):
            if not isinstance(r, dict):
                self.fail(batch, i, f"select needs an object, got {type(r).__name__}")
                continue
            keep.append(i)
            out.append(self.pick(r))
        if len(keep) != len(recs):
            batch = batch.take(keep)
        batch.replace(out)
        return batch

    def pick(self, r: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for path in self.paths:
            v: Any = r
            for k in path:
                if isinstance(v, dict) and k in v:
                    v = v[k]
                else:
                    break
            else:
                cur = out
                for k in path[:-1]:
                    cur = cur.setdefault(k, {})
                cur[path[-1]] = v
        return out

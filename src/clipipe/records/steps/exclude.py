"""The `exclude` step: remove the listed fields (dotted paths reach inside objects)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipipe.records.core import Batch, Step
from clipipe.records.registry import option, register
from clipipe.records.steps.select import split_paths


@dataclass
class ExcludeConfig:
    fields: list[str] = option("Fields to remove; `a.b` removes b inside a. Missing fields are fine.",
                               examples=[["password", "ssn", "card.number"]])


@register("step", "exclude")
class ExcludeStep(Step):
    """Deletes paths from each record."""

    summary = "Remove fields from each record (nested with dotted paths)."
    Config = ExcludeConfig
    examples = [
        """steps:
  - name: remove_sensitive
    exclude: [password, ssn]
""",
        """steps:
  - name: scrub
    exclude:
      - card.number
""",
    ]

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        return {"fields": value} if isinstance(value, list) else value

    def __init__(self, config: ExcludeConfig, ctx: Any, mark: Any, name: str, on_error: str,
                 value_mark: Any = None) -> None:
        super().__init__(config, ctx, mark, name, on_error)
        self.paths = split_paths(config.fields, name, value_mark or mark)

    def process(self, batch: Batch) -> Batch:
        recs = batch.records(lambda i, why: self.fail(batch, i, why))
        keep, out = [], []
        for i, r in enumerate(recs):
            if not isinstance(r, dict):
                self.fail(batch, i, f"exclude needs an object, got {type(r).__name__}")
                continue
            keep.append(i)
            out.append(self.drop(r))
        if len(keep) != len(recs):
            batch = batch.take(keep)
        batch.replace(out)
        return batch

    def drop(self, r: dict[str, Any]) -> dict[str, Any]:
        r = dict(r)
        for path in self.paths:
            if len(path) == 1:
                r.pop(path[0], None)
                continue
            parents = [r]
            cur: Any = r
            for k in path[:-1]:
                cur = cur.get(k) if isinstance(cur, dict) else None
                if not isinstance(cur, dict):
                    break
                parents.append(cur)
            else:
                if path[-1] in cur:
                    # copy the chain so the input's nested objects are left alone
                    node = r
                    for k in path[:-1]:
                        node[k] = dict(node[k])
                        node = node[k]
                    del node[path[-1]]
        return r

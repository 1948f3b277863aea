"""The `sample` step: keep a deterministic fraction of the records."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipipe.errors import SpecError
from clipipe.records.core import Batch, Step
from clipipe.records.registry import option, register

_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64: a well-spread 64-bit hash of a record's position."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


@dataclass
class SampleConfig:
    rate: float = option("Fraction of records kept, 0 to 1.", examples=[0.1])
    seed: int = option("Changes which records are picked; the same seed picks the same records "
                       "every run (batch runs stay idempotent).", 0)


@register("step", "sample")
class SampleStep(Step):
    """Keeps a record when a hash of (seed, its position in the source) falls under the rate."""

    summary = "Keep a fraction of the records, the same ones on every run."
    Config = SampleConfig
    examples = [
        """steps:
  - name: sample
    sample: 0.1
""",
        """steps:
  - name: sample
    sample: {rate: 0.25, seed: 42}
""",
    ]

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"rate": value}
        return value

    def __init__(self, config: SampleConfig, ctx: Any, mark: Any, name: str, on_error: str,
                 value_mark: Any = None) -> None:
        super().__init__(config, ctx, mark, name, on_error)
        if not 0.0 <= config.rate <= 1.0:
            raise SpecError(f"sample {name!r}: rate must be between 0 and 1, got {config.rate}",
                            mark=value_mark or mark)
        self.threshold = int(config.rate * (1 << 64))
        self.salt = _mix(config.seed & _MASK)

    def process(self, batch: Batch) -> Batch:
        t, salt = self.threshold, self.salt
        keep = [i for i, pos in enumerate(batch.index) if _mix(pos ^ salt) < t]
        if len(keep) == len(batch):
            return batch
        return batch.take(keep)

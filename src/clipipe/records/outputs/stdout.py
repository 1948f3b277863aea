"""The `stdout` output: one JSON record per line."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from clipipe.records.core import Batch, Output
from clipipe.records.registry import option, register


@dataclass
class StdoutConfig:
    flush_every: int = option("Flush after this many batches (0: only at the end).", 1)


@register("output", "stdout")
class StdoutOutput(Output):
    """Writes NDJSON to the run's stdout; unchanged records keep their original text."""

    summary = "Print records as NDJSON on standard output."
    Config = StdoutConfig
    acknowledges = True
    examples = ["""output:
  type: stdout
"""]

    def __init__(self, config: StdoutConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        self.batches = 0

    async def write(self, batch: Batch) -> None:
        lines = batch.lines()
        if not lines:
            return
        out = self.ctx.stdout
        assert out is not None  # set by RecordPipeline.run
        out.write("\n".join(lines))
        out.write("\n")
        self.records += len(lines)
        self.batches += 1
        if self.config.flush_every and self.batches % self.config.flush_every == 0:
            out.flush()

    async def flush(self) -> None:
        """Flush stdout (realtime mode: the batch is delivered once this returns)."""
        assert self.ctx.stdout is not None  # set by RecordPipeline.run
        self.ctx.stdout.flush()

    async def close(self) -> None:
        assert self.ctx.stdout is not None  # set by RecordPipeline.run
        self.ctx.stdout.flush()

"""The `stub` output of the seed: log each record, collect metrics, optionally call back a URL.

The real storage lives on another platform; this output shows what would be stored. Records are
logged on stdout at level `info` (`log_level` is the threshold: `warn` hides them, `debug` adds a
line per batch); the metrics go to stderr at the end unless the run is quiet, and always into the
operation record. With `callback.enabled`, records are POSTed as JSON arrays of `batch_size`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from clipipe.errors import RecordError, SpecError
from clipipe.records.core import Batch, Output, dumps
from clipipe.records.registry import option, register

LEVELS = {"debug": 10, "info": 20, "warn": 30, "warning": 30, "error": 40}


@dataclass
class MetricsConfig:
    enabled: bool = option("Print the metrics at the end of the run.", True)
    prefix: str = option("Prefix of the metric names.", "pipeline")


@dataclass
class CallbackConfig:
    enabled: bool = option("POST the records to `url`.", False)
    url: str | None = option("Where to POST (JSON array of records).", None,
                             examples=["http://data-platform/ingest"])
    batch_size: int = option("Records per POST.", 100)
    timeout: float = option("Seconds per request.", 10.0)
    retries: int = option("Retries on 429/5xx/connection errors.", 3)
    headers: dict[str, str] = option("Extra request headers.", factory=dict)


@dataclass
class StubConfig:
    log_level: Literal["debug", "info", "warn", "warning", "error"] = option(
        "Lowest level logged; records are logged at info.", "info")
    log_format: Literal["json", "text"] = option("One JSON object per log line, or plain text.", "json")
    metrics: MetricsConfig = option("Metrics printed at the end.", factory=MetricsConfig)
    callback: CallbackConfig = option("Call an external system with the records.",
                                      factory=CallbackConfig)


@register("output", "stub")
class StubOutput(Output):
    """Logs records and metrics; the stand-in for the storage platform."""

    summary = "Log each record and the run's metrics; optionally POST batches to a callback URL."
    Config = StubConfig
    acknowledges = True
    examples = [
        """output:
  type: stub
  log_level: info
""",
        """output:
  type: stub
  log_level: debug
  log_format: text
  metrics:
    enabled: true
    prefix: pipeline
  callback:
    enabled: false
    url: http://data-platform/ingest
""",
    ]

    def __init__(self, config: StubConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        cb = config.callback
        if cb.enabled and not cb.url:
            raise SpecError("stub output: callback.enabled needs callback.url", mark=mark)
        if cb.batch_size < 1:
            raise SpecError("stub output: callback.batch_size must be at least 1", mark=mark)
        self.level = LEVELS[config.log_level]
        self.pending: list[Any] = []
        self.client: httpx.AsyncClient | None = None
        self.callbacks = 0
        self.callback_records = 0

    async def open(self) -> None:
        if self.config.callback.enabled:
            self.client = httpx.AsyncClient(timeout=self.config.callback.timeout)

    async def write(self, batch: Batch) -> None:
        n = len(batch)
        if not n:
            return
        out = self.ctx.stdout
        if self.level <= LEVELS["debug"]:
            self._log("debug", f"batch of {n} records", {"first_index": batch.index[0], "records": n})
        if self.level <= LEVELS["info"] and out is not None:
            lines = batch.lines()
            idx = batch.index
            if self.config.log_format == "json":
                name = dumps(self.ctx.pipeline)
                out.write("".join(f'{{"level":"info","msg":"record","pipeline":{name},"index":{idx[i]},'
                                  f'"record":{line}}}\n' for i, line in enumerate(lines)))
            else:
                out.write("".join(f"INFO record #{idx[i]} {line}\n" for i, line in enumerate(lines)))
        self.records += n
        if self.client is not None:
            self.pending.extend(batch.records())
            size = self.config.callback.batch_size
            while len(self.pending) >= size:
                chunk, self.pending = self.pending[:size], self.pending[size:]
                await self._post(chunk)

    def _log(self, level: str, msg: str, fields: dict[str, Any]) -> None:
        if LEVELS[level] < self.level or self.ctx.stdout is None:
            return
        if self.config.log_format == "json":
            self.ctx.stdout.write(dumps({"level": level, "msg": msg, "pipeline": self.ctx.pipeline,
                                         **fields}) + "\n")
        else:
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            self.ctx.stdout.write(f"{level.upper()} {msg} {extra}\n")

    async def _post(self, records: list[Any]) -> None:
        cb = self.config.callback
        assert self.client is not None and cb.url
        body = dumps(records).encode()
        headers = {"Content-Type": "application/json", **cb.headers}
        for attempt in range(cb.retries + 1):
            try:
                resp = await self.client.post(cb.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                if attempt == cb.retries:
                    raise RecordError(f"stub output: callback {cb.url} failed: {exc}") from exc
            else:
                if resp.status_code < 300:
                    self.callbacks += 1
                    self.callback_records += len(records)
                    return
                if resp.status_code not in (429, 500, 502, 503, 504) or attempt == cb.retries:
                    raise RecordError(f"stub output: callback {cb.url} answered {resp.status_code}: "
                                      f"{resp.text[:200]}")
            await asyncio.sleep(min(10.0, 0.2 * 2 ** attempt))

    async def flush(self) -> None:
        """Post the records still pending and flush the log: the batch is then delivered."""
        if self.client is not None and self.pending:
            chunk, self.pending = self.pending, []
            await self._post(chunk)
        if self.ctx.stdout is not None:
            self.ctx.stdout.flush()

    async def close(self) -> None:
        try:
            if self.client is not None and self.pending:
                chunk, self.pending = self.pending, []
                await self._post(chunk)
        finally:
            if self.client is not None:
                await self.client.aclose()
                self.client = None
        if self.ctx.stdout is not None:
            self.ctx.stdout.flush()

    async def abort(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "stub", "records": self.records}
        if self.config.callback.enabled:
            out["callbacks"] = self.callbacks
            out["callback_records"] = self.callback_records
        return out

    def report(self, metrics: dict[str, Any]) -> None:
        """Print the run's metrics to stderr (unless quiet or disabled)."""
        if not self.config.metrics.enabled or self.ctx.quiet or self.ctx.stderr is None:
            return
        if LEVELS["info"] < self.level:
            return
        p = self.config.metrics.prefix
        flat = {f"{p}.records_in": metrics["records_in"], f"{p}.records_out": metrics["records_out"],
                f"{p}.dropped": metrics["dropped"], f"{p}.errors": metrics["errors"],
                f"{p}.duration_s": metrics["duration_s"], f"{p}.records_per_s": metrics["records_per_s"],
                f"{p}.latency_ms.p50": metrics["latency_ms"]["p50"],
                f"{p}.latency_ms.p95": metrics["latency_ms"]["p95"]}
        for s in metrics["steps"]:
            for k in ("records_in", "records_out", "dropped", "errors"):
                flat[f"{p}.step.{s['name']}.{k}"] = s[k]
        rt = metrics.get("realtime")
        if rt:  # realtime mode: dedup, upsert, commits, lag
            for k in ("duplicates_skipped", "upserts_converted", "batches", "commits", "lag"):
                flat[f"{p}.realtime.{k}"] = rt.get(k)
            for t, n in rt.get("types", {}).items():
                flat[f"{p}.realtime.type.{t}"] = n
        err = self.ctx.stderr
        if self.config.log_format == "json":
            err.write(dumps({"level": "info", "msg": "metrics", "pipeline": self.ctx.pipeline,
                             "metrics": flat}) + "\n")
        else:
            err.write("metrics:\n" + "".join(f"  {k} = {v}\n" for k, v in flat.items()))
        err.flush()



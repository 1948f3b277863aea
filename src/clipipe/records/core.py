"""The record model and the component contracts shared by sources, steps and outputs.

Records travel in `Batch`es: per-record Python overhead is what limits a record pipeline, so every
component works on a list at a time. A batch keeps each record's original JSON text (`lines`) as long
as nothing has changed the record, so `source(ndjson) -> filter -> stdout` never re-serialises, and
parses JSON (`records`) only when a step needs the values.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, AsyncGenerator, Callable, ClassVar, Protocol, TextIO

from clipipe.errors import Mark, RecordError

try:  # orjson is 3-5x faster; optional, stdlib json is the fallback
    import orjson as _orjson
except ImportError:  # pragma: no cover - depends on the machine
    _orjson = None  # type: ignore[assignment]  # optional module missing: the stdlib fallback below

if _orjson is not None:
    def loads(text: str | bytes) -> Any:
        """Parse one JSON text."""
        return _orjson.loads(text)

    def dumps(value: Any) -> str:
        """Compact JSON text, non-ASCII kept as is (like `jq -c`)."""
        return _orjson.dumps(value, default=_default).decode()
else:
    _decoder = json.JSONDecoder()
    loads = json.loads  # type: ignore[assignment]
    _encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=lambda v: _default(v))

    def dumps(value: Any) -> str:  # type: ignore[misc]
        """Compact JSON text, non-ASCII kept as is (like `jq -c`)."""
        return _encoder.encode(value)


def _default(value: Any) -> Any:
    """JSON for values that drivers hand us (datetime, Decimal, bytes...)."""
    from clipipe.records.convert import to_json_value
    v = to_json_value(value)
    if v is value:
        raise TypeError(f"can't encode {type(value).__name__} as JSON")
    return v


class Batch:
    """A run of records with their positions in the source; parsed and serialised lazily."""

    __slots__ = ("_records", "_lines", "index", "meta", "metas", "born")

    def __init__(self, records: list[Any] | None = None, lines: list[str] | None = None, *,
                 index: list[int] | range, meta: dict[str, Any] | None = None,
                 metas: list[dict[str, Any] | None] | None = None, born: float = 0.0) -> None:
        self._records = records
        self._lines = lines
        self.index = index          #: each record's 0-based position in the source's output
        self.meta = meta or {}      #: metadata shared by the whole batch (e.g. the source file)
        self.metas = metas          #: per-record metadata overrides, created on first `meta x = ...`
        self.born = born            #: monotonic time the source produced it (for latency)

    def __len__(self) -> int:
        return len(self._records if self._records is not None else self._lines or ())

    @property
    def has_records(self) -> bool:
        """True if the parsed values are already at hand."""
        return self._records is not None

    def records(self, on_bad: Callable[[int, str], None] | None = None) -> list[Any]:
        """The parsed records (parsing the JSON lines on first use).

        A line that isn't JSON goes to `on_bad(position, reason)` (which raises to stop the run) and
        is dropped from the batch; without `on_bad` it raises RecordError.
        """
        if self._records is None:
            lines = self._lines or []
            try:
                self._records = [loads(x) for x in lines]
            except ValueError:
                keep, recs = [], []
                for i, line in enumerate(lines):
                    try:
                        recs.append(loads(line))
                        keep.append(i)
                    except ValueError as exc:
                        if on_bad is None:
                            raise RecordError(f"record {self.index[i]}: invalid JSON: {exc}") from exc
                        on_bad(i, f"invalid JSON: {exc}")
                self.index = [self.index[i] for i in keep]
                self._lines = [lines[i] for i in keep]
                if self.metas is not None:
                    self.metas = [self.metas[i] for i in keep]
                self._records = recs
        return self._records

    def lines(self) -> list[str]:
        """Each record as compact JSON text."""
        if self._lines is None:
            self._lines = [dumps(r) for r in self._records or ()]
        return self._lines

    def raw_lines(self) -> list[str] | None:
        """The JSON texts if the records are unchanged since the source, else None."""
        return self._lines

    def replace(self, records: list[Any]) -> None:
        """Set new record values (same positions); the original texts no longer apply."""
        self._records = records
        self._lines = None

    def meta_of(self, i: int) -> dict[str, Any]:
        """The metadata of record `i` (its own overrides over the batch's)."""
        if self.metas is not None and self.metas[i] is not None:
            return self.metas[i]  # type: ignore[return-value]
        return self.meta

    def take(self, keep: list[int]) -> Batch:
        """A batch of only the records at positions `keep` (in order)."""
        idx = self.index
        new_index = [idx[i] for i in keep]
        recs = self._records
        lines = self._lines
        return Batch([recs[i] for i in keep] if recs is not None else None,
                     [lines[i] for i in keep] if lines is not None else None,
                     index=new_index, meta=self.meta,
                     metas=[self.metas[i] for i in keep] if self.metas is not None else None,
                     born=self.born)


class RecordFailure(Exception):
    """One record failed in a step; the engine counts it and applies on_error."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class StepMetrics:
    """Counters of one step, reported in the operation record."""

    name: str
    type: str
    records_in: int = 0
    records_out: int = 0
    dropped: int = 0
    errors: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The step's figures for the metrics dict."""
        return {"name": self.name, "type": self.type, "records_in": self.records_in,
                "records_out": self.records_out, "dropped": self.dropped, "errors": self.errors,
                "seconds": round(self.seconds, 6)}


class ErrorSink(Protocol):
    """Where components report a failed record (the engine applies on_error)."""

    def record_error(self, where: str, index: int, reason: str, on_error: str) -> None: ...

    def warn(self, message: str) -> None: ...


@dataclass
class Context:
    """What components get from the pipeline: its name, file, state store, streams, error sink."""

    pipeline: str
    path: str
    op_id: str = ""
    store: Any = None
    stdout: TextIO | None = None
    stderr: TextIO | None = None
    quiet: bool = False
    errors: ErrorSink | None = None
    on_error: str = "stop"
    extra: dict[str, Any] = field(default_factory=dict)

    def warn(self, message: str) -> None:
        """Report a warning (kept in the metrics; printed unless quiet)."""
        if self.errors is not None:
            self.errors.warn(message)


class Source:
    """Produces batches of records. `commit` runs only after the output has succeeded."""

    kind: ClassVar[str] = "source"
    type_name: ClassVar[str]
    summary: ClassVar[str] = ""
    examples: ClassVar[list[str]] = []
    deferred_vars: ClassVar[tuple[str, ...]] = ()
    modes: ClassVar[tuple[str, ...]] = ("batch", "realtime")  #: the pipeline types it can feed

    def __init__(self, config: Any, ctx: Context, mark: Mark | None) -> None:
        self.config = config
        self.ctx = ctx
        self.mark = mark

    def batches(self) -> AsyncGenerator[Batch, None]:
        """Yield the records, a batch at a time, with bounded memory."""
        raise NotImplementedError

    async def commit(self) -> None:
        """Persist progress (incremental positions) once the output has taken everything."""

    async def aclose(self) -> None:
        """Release connections and threads (called on success and failure)."""

    def stats(self) -> dict[str, Any]:
        """Figures about the reading (files, bytes, pages, rows...)."""
        return {}


class Step:
    """Processes a batch synchronously, returning the records that go on."""

    kind: ClassVar[str] = "step"
    type_name: ClassVar[str]
    summary: ClassVar[str] = ""
    examples: ClassVar[list[str]] = []

    def __init__(self, config: Any, ctx: Context, mark: Mark | None, name: str, on_error: str) -> None:
        self.config = config
        self.ctx = ctx
        self.mark = mark
        self.name = name
        self.on_error = on_error
        self.metrics = StepMetrics(name, self.type_name)

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        """Turn the short form (`filter: '.x'`) into the Config mapping; default: a mapping as is."""
        return value

    def process(self, batch: Batch) -> Batch:
        """Return the batch of records that continue (raise RecordError to stop the run)."""
        raise NotImplementedError

    def fail(self, batch: Batch, i: int, reason: str) -> None:
        """Count record `i` of `batch` as failed here; raises RecordError if on_error is stop."""
        self.metrics.errors += 1
        assert self.ctx.errors is not None
        self.ctx.errors.record_error(f"step {self.name!r}", batch.index[i], reason, self.on_error)


class Output:
    """Takes batches; `close` makes the result final (rename, flush), `abort` removes partial results."""

    kind: ClassVar[str] = "output"
    type_name: ClassVar[str]
    summary: ClassVar[str] = ""
    examples: ClassVar[list[str]] = []
    #: True if `write` + `flush` deliver a batch for good (realtime mode commits after that);
    #: False for outputs that only finish at `close` (a file renamed at the end)
    acknowledges: ClassVar[bool] = False

    def __init__(self, config: Any, ctx: Context, mark: Mark | None) -> None:
        self.config = config
        self.ctx = ctx
        self.mark = mark
        self.records = 0

    async def open(self) -> None:
        """Prepare (create the temp file, the HTTP client)."""

    async def write(self, batch: Batch) -> None:
        """Deliver a batch; raise RecordError on failure."""
        raise NotImplementedError

    async def flush(self) -> None:
        """Deliver everything written so far (realtime mode acknowledges a batch after this)."""

    async def close(self) -> None:
        """Finish: everything written is now visible and complete."""

    async def abort(self) -> None:
        """The run failed: leave nothing that looks complete."""

    def stats(self) -> dict[str, Any]:
        """Figures about the writing."""
        return {"records": self.records}

    def summary_lines(self, metrics: dict[str, Any]) -> None:
        """Hook for outputs that print the run's metrics (the stub)."""


def apply_steps(steps: list[Any], batch: Batch) -> tuple[Batch, int]:
    """Run a batch through steps in order, keeping each step's metrics; (batch out, record errors).

    Stops early when a step leaves nothing. Shared by the engine and by steps that hold steps of
    their own (a route's handlers).
    """
    import time

    errors = 0
    for step in steps:
        m = step.metrics
        n = len(batch)
        before = m.errors
        t = time.perf_counter()
        batch = step.process(batch)
        m.seconds += time.perf_counter() - t
        m.records_in += n
        m.records_out += len(batch)
        m.dropped += n - len(batch) - (m.errors - before)
        errors += m.errors - before
        if not len(batch):
            break
    return batch, errors

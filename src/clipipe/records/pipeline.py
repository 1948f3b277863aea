"""Record pipelines: load (validate a marked YAML document) and run (source -> steps -> output).

The engine pulls batches from the source's async generator, runs them through the steps (plain
synchronous functions over a batch: the per-record work) and awaits the output; one batch is in
flight per stage, so memory is bounded by the batch size (the SQL source adds a bounded queue
between its driver thread and the loop). When the output has closed successfully the source
commits its position (incremental SQL); a failure aborts the output (no partial file is left
looking complete) and commits nothing.

Realtime mode (`type: realtime`, records/realtime.py) runs the same components in a loop of its own:
dedup and upsert before the steps, and `commit` after each acknowledged batch (Kafka offsets) instead
of at the end of the run.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, TextIO

from clipipe.errors import Mark, RecordError, SpecError
from clipipe.records.core import Batch, Context, Output, Source, Step, apply_steps
from clipipe.records.envinterp import interpolate_doc
from clipipe.records.registry import components, lookup, parse_config
from clipipe.spec.yamlmarks import mark_of

#: keys a record pipeline file may have at its top level
TOP_KEYS = {"name", "description", "version", "params", "type", "source", "steps", "output", "on_error",
            "tests"}  # tests: fixture cases for `clipipe test` (ignored by `clipipe run`)
STEP_KEYS = {"name", "type", "on_error"}
ON_ERROR = ("stop", "skip")
#: failed records printed to stderr; the rest are only counted (all are counted in the metrics)
MAX_PRINTED_ERRORS = 20
MAX_ERROR_SAMPLES = 100
MAX_LATENCIES = 100_000


def unwrap(doc: Any) -> Any:
    """The pipeline mapping, whether or not it sits under a `pipeline:` wrapper."""
    if isinstance(doc, dict) and isinstance(doc.get("pipeline"), dict):
        inner = doc["pipeline"]
        for k in doc:
            if k != "pipeline" and k not in ("name", "description", "version", "params"):
                raise SpecError(f"unknown key {k!r} next to pipeline:",
                                mark=getattr(doc, "key_marks", {}).get(k, mark_of(doc)))
        merged = type(inner)()
        merged.update({k: v for k, v in doc.items() if k != "pipeline"})
        merged.update(inner)
        merged.mark = mark_of(inner)  # type: ignore[attr-defined]
        merged.key_marks = {**getattr(doc, "key_marks", {}), **getattr(inner, "key_marks", {})}  # type: ignore[attr-defined]
        return merged
    return doc


def is_record_pipeline(doc: Any) -> bool:
    """True for `type: batch|realtime` or a `source:` key (top level or under `pipeline:`)."""
    if not isinstance(doc, dict):
        return False
    d = doc["pipeline"] if isinstance(doc.get("pipeline"), dict) else doc
    return d.get("type") in ("batch", "realtime") or "source" in d


def _key_mark(doc: Any, key: str) -> Mark | None:
    return getattr(doc, "key_marks", {}).get(key) or mark_of(doc)


def _on_error(doc: Any, default: str, where: str) -> str:
    v = doc.get("on_error", default)
    if v not in ON_ERROR:
        raise SpecError(f"{where}: on_error must be stop or skip, got {v!r}", mark=mark_of(v, mark_of(doc)))
    return str(v)


def load(doc: Any, *, path: str, params: dict[str, Any], source_text: str | None = None,
         env: dict[str, str] | None = None) -> RecordPipeline:
    """Validate a record pipeline document and build it (components constructed, nothing opened)."""
    doc = unwrap(doc)
    file_mark = Mark(path)
    if not isinstance(doc, dict):
        raise SpecError("a record pipeline must be a mapping", mark=mark_of(doc, file_mark))
    kind = doc.get("type", "batch")
    if kind not in ("batch", "realtime"):
        raise SpecError(f"type must be batch or realtime, got {kind!r}", mark=mark_of(kind, _key_mark(doc, "type")))
    known_keys = TOP_KEYS | ({"realtime"} if kind == "realtime" else set())
    for k in doc:
        if k not in known_keys:
            hint = " (realtime settings need type: realtime)" if k == "realtime" else ""
            raise SpecError(f"unknown key {k!r} in a record pipeline{hint} (known: "
                            f"{', '.join(sorted(known_keys))})", mark=_key_mark(doc, k))
    for k in ("source", "output"):
        if k not in doc:
            raise SpecError(f"a record pipeline needs {k}:", mark=mark_of(doc, file_mark))

    if source_text is None:
        try:
            source_text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            source_text = None
    src_raw = doc["source"]
    src_type = src_raw.get("type") if isinstance(src_raw, dict) else None
    src_cls = lookup("source", src_type, mark_of(src_type, mark_of(src_raw, file_mark)))
    if kind not in getattr(src_cls, "modes", ("batch", "realtime")):
        raise SpecError(f"a {src_type} source needs type: realtime (it runs until stopped and commits "
                        "as it goes)", mark=mark_of(src_type, mark_of(src_raw, file_mark)))
    deferred = src_cls.deferred(src_raw) if hasattr(src_cls, "deferred") else ()
    shell_paths = [("source", k) for k in getattr(src_cls, "shell_keys", ())]  # shell commands: quoted params
    doc = interpolate_doc(doc, env=env, params=params, deferred=deferred, skip_keys=("params",),
                          shell_paths=shell_paths)

    name = str(doc.get("name") or Path(path).stem)
    on_error = _on_error(doc, "stop", "pipeline")
    ctx = Context(pipeline=name, path=path, on_error=on_error,
                  extra={"source_lines": source_text.splitlines() if source_text else None})

    src_doc = doc["source"]
    source = src_cls(parse_config(src_cls.Config, src_doc, mark_of(src_doc), f"source ({src_type})",
                                  ignore=("type",)), ctx, mark_of(src_doc))

    steps_doc = doc.get("steps") or []
    if not isinstance(steps_doc, list):
        raise SpecError("steps: expected a list", mark=mark_of(steps_doc, _key_mark(doc, "steps")))
    steps = [_build_step(s, i, ctx, on_error) for i, s in enumerate(steps_doc)]
    names = [s.name for s in steps]
    for i, n in enumerate(names):
        if n in names[:i]:
            raise SpecError(f"two steps are named {n!r}", mark=mark_of(steps_doc[i]))

    out_doc = doc["output"]
    out_type = out_doc.get("type") if isinstance(out_doc, dict) else None
    out_cls = lookup("output", out_type, mark_of(out_type, mark_of(out_doc, file_mark)))
    output = out_cls(parse_config(out_cls.Config, out_doc, mark_of(out_doc), f"output ({out_type})",
                                  ignore=("type",)), ctx, mark_of(out_doc))
    if kind == "realtime":
        from clipipe.records import realtime
        return realtime.build(doc, ctx, source, steps, output, name, file_mark)
    return RecordPipeline(name, ctx, source, steps, output)


def _build_step(doc: Any, i: int, ctx: Context, default_on_error: str) -> Step:
    where = f"steps[{i}]"
    m = mark_of(doc)
    if not isinstance(doc, dict):
        raise SpecError(f"{where}: expected a mapping like {{name: x, filter: '...'}}", mark=m)
    table = components("step")
    name = str(doc.get("name", f"step{i + 1}"))
    on_error = _on_error(doc, default_on_error, f"step {name!r}")
    if "type" in doc:
        t = doc["type"]
        cls = lookup("step", t, mark_of(t, m))
        cfg_doc = {k: v for k, v in doc.items() if k not in STEP_KEYS}
        cfg_doc = _remark(doc, cfg_doc)
        value_mark = None
        if cls.type_name == "transform" and "mapping" in doc:
            value_mark = mark_of(doc["mapping"])
    else:
        kinds = [k for k in doc if k in table]
        if len(kinds) != 1:
            others = [k for k in doc if k not in STEP_KEYS]
            if not kinds:
                raise SpecError(f"step {name!r}: say what it does with one of "
                                f"{', '.join(sorted(table))} (or type:), got {', '.join(map(repr, others)) or 'nothing'}",
                                mark=_key_mark(doc, others[0]) if others else m)
            raise SpecError(f"step {name!r}: only one of {', '.join(kinds)} per step", mark=_key_mark(doc, kinds[1]))
        t = kinds[0]
        cls = table[t]
        for k in doc:
            if k not in STEP_KEYS and k != t:
                raise SpecError(f"step {name!r}: unknown key {k!r}", mark=_key_mark(doc, k))
        value = doc[t]
        value_mark = mark_of(value, _key_mark(doc, t))
        cfg_doc = cls.shorthand(value)
        if cfg_doc is value and not isinstance(value, dict):
            raise SpecError(f"step {name!r}: {t}: unexpected value {value!r}", mark=value_mark)
        if cfg_doc is not value:
            cfg_doc = _remark(value, cfg_doc, value_mark)
    config = parse_config(cls.Config, cfg_doc, mark_of(cfg_doc, m), f"step {name!r} ({cls.type_name})")
    return cls(config, ctx, m, name, on_error, value_mark=value_mark)


def _remark(origin: Any, plain: dict[str, Any], mark: Mark | None = None) -> Any:
    """A marked mapping from a plain one, so validation errors still point at the file."""
    from clipipe.spec.yamlmarks import MDict
    out = MDict(plain)
    out.mark = mark or mark_of(origin) or Mark("<string>")
    out.key_marks = {k: getattr(origin, "key_marks", {}).get(k, out.mark) for k in plain}
    return out


class _Run:
    """Error and warning bookkeeping of one run (the components' ErrorSink)."""

    def __init__(self, stderr: TextIO | None, quiet: bool) -> None:
        self.stderr = stderr
        self.quiet = quiet
        self.errors = 0
        self.samples: list[dict[str, Any]] = []
        self.warnings: list[str] = []

    def record_error(self, where: str, index: int, reason: str, on_error: str) -> None:
        self.errors += 1
        if on_error == "stop":
            raise RecordError(f"{where}: record {index}: {reason}",
                              hint="set on_error: skip on the step (or the pipeline) to count and skip such records")
        if len(self.samples) < MAX_ERROR_SAMPLES:
            self.samples.append({"where": where, "index": index, "reason": reason})
        if not self.quiet and self.stderr is not None and self.errors <= MAX_PRINTED_ERRORS:
            self.stderr.write(f"warning: {where}: record {index} skipped: {reason}\n")

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        if not self.quiet and self.stderr is not None:
            self.stderr.write(f"warning: {message}\n")


class RecordPipeline:
    """A validated record pipeline, ready to run."""

    def __init__(self, name: str, ctx: Context, source: Source, steps: list[Step], output: Output) -> None:
        self.name = name
        self.ctx = ctx
        self.source = source
        self.steps = steps
        self.output = output

    async def run(self, *, store: Any, op_id: str, stdout: TextIO, stderr: TextIO,
                  quiet: bool = False) -> dict[str, Any]:
        """Run once; returns the metrics for the operation record, raises RecordError on failure."""
        ctx = self.ctx
        run = self.begin(store=store, op_id=op_id, stdout=stdout, stderr=stderr, quiet=quiet)
        started = time.monotonic()
        records_in = records_out = 0
        latencies: list[float] = []
        status = "failed"
        src_on_error = ctx.on_error
        try:
            await self.output.open()
            gen = self.source.batches()
            try:
                async for batch in gen:
                    records_in += len(batch)
                    if not batch.has_records:
                        def on_bad(i: int, why: str, b: Batch = batch) -> None:
                            run.record_error("source", b.index[i], why, src_on_error)
                        batch.records(on_bad)
                    batch = self._process(batch)
                    if len(batch):
                        await self.output.write(batch)
                        records_out += len(batch)
                        if len(latencies) < MAX_LATENCIES:
                            latencies.append(time.monotonic() - batch.born)
            finally:
                await gen.aclose()
                await self.source.aclose()
            await self.output.close()
            await self.source.commit()
            status = "ok"
        except RecordError:
            await self._abort()
            raise
        except Exception as exc:
            await self._abort()
            raise RecordError(f"record pipeline {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.metrics = self._metrics(status, started, records_in, records_out, latencies, run)
        if hasattr(self.output, "report"):
            self.output.report(self.metrics)
        return self.metrics

    def begin(self, *, store: Any, op_id: str, stdout: TextIO | None, stderr: TextIO | None,
              quiet: bool) -> _Run:
        """Fresh per-run state: the context's store, streams and error sink, the steps' metrics."""
        run = _Run(stderr, quiet)
        ctx = self.ctx
        ctx.store, ctx.op_id, ctx.stdout, ctx.stderr, ctx.quiet, ctx.errors = (
            store, op_id, stdout, stderr, quiet, run)
        for s in self.steps:
            s.metrics = type(s.metrics)(s.name, s.type_name)
        return run

    def _process(self, batch: Batch) -> Batch:
        return apply_steps(self.steps, batch)[0]

    async def _abort(self) -> None:
        try:
            await self.output.abort()
        except Exception:  # the original failure is the one to report
            pass

    def _metrics(self, status: str, started: float, records_in: int, records_out: int,
                 latencies: list[float], run: _Run) -> dict[str, Any]:
        took = time.monotonic() - started
        lat = sorted(latencies)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else 0.0
        dropped = sum(s.metrics.dropped for s in self.steps)
        return {
            "kind": "records", "mode": "batch", "pipeline": self.name, "op_id": self.ctx.op_id,
            "status": status, "records_in": records_in, "records_out": records_out,
            "dropped": dropped, "errors": run.errors, "duration_s": round(took, 6),
            "records_per_s": round(records_in / took, 1) if took > 0 else 0.0,
            "latency_ms": {"p50": pct(0.5), "p95": pct(0.95), "p99": pct(0.99), "max": pct(1.0),
                           "what": "source read to output written, per batch"},
            "source": self.source.stats(),
            "steps": [s.metrics.as_dict() for s in self.steps],
            "output": self.output.stats(),
            "error_samples": run.samples, "warnings": run.warnings,
        }


def example_documents() -> list[tuple[str, str, str]]:
    """(kind, type, yaml) for every example of every registered component."""
    out = []
    for kind in ("source", "step", "output"):
        for name, cls in sorted(components(kind).items()):
            for ex in cls.examples:
                out.append((kind, name, ex))
    return out



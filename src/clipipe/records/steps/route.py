"""The `route` step: each record goes by a field's value to the first matching route, in priority order.

A route is a handler: a list of record steps built by the pipeline's own step builder (so anything a
top-level step can be, a route's step can be, a nested `route` included). Routes are tried from
the highest `priority` down (file order among equals); the first whose `match` fits the record's
field handles it. `match` is a value, a list of values, or a glob for strings (`tool_*`). Records
no route takes are dropped or passed on unchanged (`default`). Records come out in the order they
came in, whichever route they took.

`mode: sync` runs the routes of a batch one after the other (by priority); `mode: concurrent` runs
them in a thread pool. The steps are Python holding the GIL, so concurrency rarely helps (measured in
benchmarks/bench_jsonstream.py); it is there for steps that wait or release the GIL.

Metrics: per route, the records it took and gave out, its errors and its time; the handler steps'
own metrics are nested under it.
"""
from __future__ import annotations

import concurrent.futures
import fnmatch
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

from clipipe.errors import SpecError
from clipipe.records.core import Batch, Step, StepMetrics, apply_steps
from clipipe.records.registry import StepList, option, register
from clipipe.spec.yamlmarks import mark_of

_MISSING = object()
#: values whose route is remembered (event types are few; the bound keeps odd streams in check)
_CACHE_MAX = 4096


@dataclass
class RouteSpec:
    match: Any = option("The field value(s) this route takes: a value, a list, or a glob (`tool_*`).",
                        examples=["text", ["error", "warning"], "tool_*"])
    steps: StepList = option("The handler: record steps, as at the top level (empty: pass as is).",
                             factory=list)
    priority: int = option("Higher is tried first; equal priorities keep file order.", 0)
    name: str | None = option("Name in the metrics (default: the match).", None)


@dataclass
class RouteConfig:
    field: str = option("The field whose value picks the route (dotted for nested: `message.type`).",
                        examples=["type"])
    routes: list[RouteSpec] = option("The routes.")
    default: Literal["drop", "pass"] = option("What happens to records no route takes.", "drop")
    mode: Literal["sync", "concurrent"] = option(
        "sync: the routes of a batch run one after the other; concurrent: in a thread pool.", "sync")
    workers: int = option("concurrent: threads in the pool (default: one per route, at most 8).", 0)


@dataclass
class RouteMetrics(StepMetrics):
    """The step's counters plus one entry per route and the unmatched count."""

    unmatched: int = 0
    routes: dict[str, dict[str, Any]] | None = None

    def as_dict(self) -> dict[str, Any]:
        d = super().as_dict()
        d["unmatched"] = self.unmatched
        d["routes"] = list((self.routes or {}).values())
        return d


class _Route:
    """One route: its matcher and its handler steps."""

    def __init__(self, spec: RouteSpec, order: int, steps: list[Step]) -> None:
        self.spec = spec
        self.order = order
        self.name = spec.name or (spec.match if isinstance(spec.match, str) else str(spec.match))
        self.steps = steps
        self.rank = 0      #: position in priority order
        values = spec.match if isinstance(spec.match, list) else [spec.match]
        self.exact = [v for v in values if not (isinstance(v, str) and _is_glob(v))]
        self.globs = [v for v in values if isinstance(v, str) and _is_glob(v)]

    def matches(self, value: Any) -> bool:
        if value is _MISSING:
            return False
        if any(_same(value, v) for v in self.exact):
            return True
        return isinstance(value, str) and any(fnmatch.fnmatchcase(value, g) for g in self.globs)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1."""
    if type(a) is bool or type(b) is bool:
        return a is b
    return bool(a == b)


def _is_glob(s: str) -> bool:
    return any(c in s for c in "*?[")


@register("step", "route")
class RouteStep(Step):
    """Splits a batch by route, runs each route's steps on its part, merges in the original order."""

    summary = "Send each record by a field's value to handler steps, in priority order (sync or concurrent)."
    Config = RouteConfig
    examples = [
        """steps:
  - name: by-type
    route:
      field: type
      routes:
        - {match: text, priority: 10, steps: [{select: [type, text]}]}
        - {match: tool_use, steps: [{exclude: [input]}]}
        - {match: error, steps: [{transform: "root = this\\nroot.alert = true"}]}
      default: drop
      mode: sync
""",
        """steps:
  - name: triage
    route:
      field: event.kind
      default: pass
      mode: concurrent
      routes:
        - {match: "tool_*", name: tools, steps: [{filter: '.event.ok == false'}]}
        - {match: [warning, error], priority: 5}
""",
    ]

    def __init__(self, config: RouteConfig, ctx: Any, mark: Any, name: str, on_error: str,
                 value_mark: Any = None) -> None:
        from clipipe.records.pipeline import _build_step

        self._routes: list[_Route] = []
        super().__init__(config, ctx, mark, name, on_error)
        if not config.routes:
            raise SpecError(f"route {name!r}: give at least one route", mark=value_mark or mark)
        path = tuple(config.field.split("."))
        if not all(path):
            raise SpecError(f"route {name!r}: bad field path {config.field!r}", mark=value_mark or mark)
        self.path = path
        routes = []
        for i, spec in enumerate(config.routes):
            steps = [_build_step(s, j, ctx, on_error) for j, s in enumerate(spec.steps)]
            r = _Route(spec, i, steps)
            for s in steps:
                s.name = f"{name}/{r.name}/{s.name}"
            routes.append(r)
        names = [r.name for r in routes]
        for i, n in enumerate(names):
            if n in names[:i]:
                raise SpecError(f"route {name!r}: two routes are named {n!r} (give them name:)",
                                mark=mark_of(config.routes[i], value_mark or mark))
        self._routes = sorted(routes, key=lambda r: (-r.spec.priority, r.order))
        for rank, r in enumerate(self._routes):
            r.rank = rank
        self._cache: dict[Any, int] = {}  # field value -> rank of its route (len(routes): none)
        workers = config.workers or min(8, len(routes))
        self._pool = (concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=f"clipipe-route-{name}")
                      if config.mode == "concurrent" else None)
        self.metrics = RouteMetrics(name, self.type_name)

    @property  # type: ignore[override]  # a property, so that the engine's reset reaches the routes
    def metrics(self) -> StepMetrics:
        return self._metrics

    @metrics.setter
    def metrics(self, m: StepMetrics) -> None:
        """A fresh metrics object (each run): also fresh per-route and handler-step metrics."""
        rm = m if isinstance(m, RouteMetrics) else RouteMetrics(m.name, m.type)
        rm.routes = {}
        for r in getattr(self, "_routes", []):
            for s in r.steps:
                s.metrics = type(s.metrics)(s.name, s.type_name)
            rm.routes[r.name] = {"name": r.name, "records_in": 0, "records_out": 0, "errors": 0,
                                 "seconds": 0.0, "steps": []}
        self._metrics = rm

    def route_of(self, record: Any) -> _Route | None:
        """The route a record takes (None: no route)."""
        v: Any = record
        for k in self.path:
            if isinstance(v, dict) and k in v:
                v = v[k]
            else:
                v = _MISSING
                break
        if type(v) is bool:  # True == 1 as dict keys: don't let the cache confuse them
            return self._find(v)
        try:
            rank = self._cache[v]
        except KeyError:
            r = self._find(v)
            if len(self._cache) < _CACHE_MAX:
                self._cache[v] = len(self._routes) if r is None else r.rank
            return r
        except TypeError:  # an unhashable value (a list or an object): look it up every time
            return self._find(v)
        return self._routes[rank] if rank < len(self._routes) else None

    def _find(self, v: Any) -> _Route | None:
        for r in self._routes:
            if r.matches(v):
                return r
        return None

    def _ranks(self, recs: list[Any]) -> list[int]:
        """Each record's route as its rank in priority order (len(routes): none)."""
        none = len(self._routes)
        cache = self._cache
        if len(self.path) == 1:
            k = self.path[0]
            try:  # the common case, at C speed: objects, a top-level field, values seen before
                vals = [r.get(k, _MISSING) for r in recs]
                return [cache[v] if type(v) is not bool else none for v in vals]  # type: ignore[misc]
            except (AttributeError, KeyError, TypeError):
                pass
        out = []
        for rec in recs:
            r = self.route_of(rec)
            out.append(none if r is None else r.rank)
        return out

    def process(self, batch: Batch) -> Batch:
        recs = batch.records(lambda i, why: self.fail(batch, i, why))
        buckets: list[list[int]] = [[] for _ in range(len(self._routes) + 1)]
        for i, rank in enumerate(self._ranks(recs)):
            buckets[rank].append(i)
        passed = buckets.pop()
        parts = {k: idx for k, idx in enumerate(buckets) if idx}
        m = self._metrics
        assert isinstance(m, RouteMetrics)
        m.unmatched += len(passed)
        jobs = [(self._routes[k], batch.take(idx) if len(idx) != len(recs) else batch)
                for k, idx in sorted(parts.items())]
        if self._pool is not None and len(jobs) > 1:
            done = list(self._pool.map(lambda job: self._run(*job), jobs))
        else:
            done = [self._run(r, b) for r, b in jobs]
        results = [b for b, _ in done]
        m.errors += sum(e for _, e in done)  # the engine counts this step's failures from here
        if self.config.default == "pass" and passed:
            results.append(batch.take(passed) if len(passed) != len(recs) else batch)
        return _merge(results, batch)

    def _run(self, route: _Route, part: Batch) -> tuple[Batch, int]:
        """One route's handler steps over its records (the engine's per-step bookkeeping, nested)."""
        rm = (cast(RouteMetrics, self._metrics).routes or {})[route.name]
        rm["records_in"] += len(part)
        t = time.perf_counter()
        part, errors = apply_steps(route.steps, part)
        rm["seconds"] = round(rm["seconds"] + time.perf_counter() - t, 6)
        rm["records_out"] += len(part)
        rm["errors"] += errors
        rm["steps"] = [s.metrics.as_dict() for s in route.steps]
        return part, errors

    def close(self) -> None:
        """Stop the thread pool (concurrent mode)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def _merge(parts: list[Batch], like: Batch) -> Batch:
    """One batch of the parts' records in source order (each part is in order already)."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return like.take([])
    if len(parts) == 1:
        return parts[0]
    idx = like.index
    if isinstance(idx, range) and idx.step == 1:
        base = idx.start
        def pos_of(p: Batch) -> list[int]:
            return [i - base for i in p.index]
    else:
        where = {v: i for i, v in enumerate(idx)}
        def pos_of(p: Batch) -> list[int]:
            return [where[i] for i in p.index]
    n = len(idx)
    slot: list[tuple[int, int] | None] = [None] * n  # batch position -> (part, position in it)
    for k, p in enumerate(parts):
        for j, pos in enumerate(pos_of(p)):
            slot[pos] = (k, j)
    order = [s for s in slot if s is not None]
    recs_of = [p.records() for p in parts]
    lines_of = [p.raw_lines() for p in parts]
    records = [recs_of[k][j] for k, j in order]
    lines = None
    if all(x is not None for x in lines_of):
        lines = [lines_of[k][j] for k, j in order]  # type: ignore[index]  # checked just above
    metas = [parts[k].meta_of(j) for k, j in order] if any(p.metas is not None for p in parts) else None
    return Batch(records, lines, index=[parts[k].index[j] for k, j in order], meta=like.meta,
                 metas=metas, born=like.born)  # type: ignore[arg-type]  # metas: dicts, not None

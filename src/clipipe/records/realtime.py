"""Realtime mode: dedup by event id, upsert (UPDATE of an unknown entity becomes CREATE), per-batch
acknowledgement and commit.

Per batch, in source order:

    source batch -> admit: drop ids already seen (store + this batch), rewrite UPDATE->CREATE for
                    entities not known (store + earlier events of this batch)
                 -> steps -> output.write + output.flush         (the output acknowledged it)
                 -> record: known entities, then the admitted ids (with the TTL)
                 -> source.commit()                               (Kafka offsets, SQL positions)

Nothing is recorded before the output acknowledged, so a crash anywhere re-delivers the batch and
at worst duplicates it downstream; once its ids are recorded, a re-delivery is skipped as a
duplicate. Entity state follows the events that passed dedup (a step that filters an event out does
not change what the source said about the entity). One batch is in flight per process, so events of
one entity keep their source order; Kafka keeps order per partition, so events keyed by entity id
stay ordered across a consumer group too. Several processes share ids and entities through Redis.

SIGINT/SIGTERM stop gracefully: the batch in flight is finished, acknowledged and committed, then
the run ends (status `cancelled` after SIGINT -> exit 130; `stopped` after SIGTERM -> exit 0); a
second signal stops at once without committing the batch in flight.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal, TextIO

from clipipe.errors import Mark, RecordError, SpecError
from clipipe.records.core import Batch, Context, Output, Source, Step
from clipipe.records.pipeline import MAX_LATENCIES, RecordPipeline, _Run
from clipipe.records.registry import option, parse_config
from clipipe.spec.parse import parse_duration
from clipipe.spec.yamlmarks import mark_of

EVENT_TYPES = ("CREATE", "UPDATE", "DELETE")


@dataclass
class RealtimeConfig:
    id_field: str = option("Dotted path of the event id that dedup checks.", examples=["event_id"])
    event_type_field: str | None = option(
        "Dotted path of the event type (CREATE / UPDATE / DELETE, any case); enables upsert.", None,
        examples=["event_type"])
    entity_field: str = option("Dotted path of the entity id the events are about (upsert).",
                               "entity_id")
    upsert: bool = option("Turn an UPDATE for an entity never seen into a CREATE.", True)
    dedup: bool = option("Skip events whose id was already processed within dedup_ttl.", True)
    dedup_storage: Literal["memory", "sqlite", "redis"] = option(
        "Where ids and known entities live: memory (this process, lost on exit), sqlite (clipipe's "
        "state store, survives restarts), redis (shared by every process of a consumer group).",
        "sqlite")
    dedup_ttl: str | float = option("How long an id is remembered.", "24h", examples=["24h", "15m"])
    dedup_namespace: str | None = option(
        "Name the ids and entities are kept under (default: the pipeline name); processes of one "
        "consumer group must use the same.", None)
    redis_url: str = option("redis: the server (redis://[:password@]host:port/db).",
                            "redis://127.0.0.1:6379/0")
    redis_prefix: str = option("redis: prefix of every key clipipe writes.", "clipipe:")
    sqlite_path: str | None = option(
        "sqlite: a database file of its own (default: clipipe's state.db).", None)


def get_path(record: Any, path: str) -> Any:
    """The value at a dotted path (`data.id`), or None."""
    if "." not in path:
        return record.get(path) if isinstance(record, dict) else None
    for part in path.split("."):
        if not isinstance(record, dict):
            return None
        record = record.get(part)
    return record


def getter(path: str) -> Any:
    """A fast function record -> value at `path` (a plain key skips the dotted walk)."""
    if "." in path:
        return lambda r: get_path(r, path)
    return lambda r: r.get(path) if type(r) is dict else get_path(r, path)


def _entity(value: Any) -> str | None:
    """An entity id as text, or None when it can't be one (missing, empty, a container)."""
    if value is None or value == "" or isinstance(value, (dict, list, bool)):
        return None
    return value if isinstance(value, str) else str(value)


def set_path(record: dict[str, Any], path: str, value: Any) -> None:
    """Set the value at a dotted path whose parents exist (the event type field)."""
    *parents, last = path.split(".")
    for part in parents:
        record = record[part]
    record[last] = value


class _BulkAdapter:
    """Gives a store with only the per-item protocol methods the bulk forms."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def describe(self) -> str:
        return getattr(self.store, "describe", lambda: type(self.store).__name__)()

    def contains_many(self, ns: str, items: list[str]) -> list[bool]:
        return [self.store.contains(ns, x) for x in items]

    def add_many(self, ns: str, items: list[str], ttl: float) -> None:
        for x in items:
            self.store.add(ns, x, ttl)

    def get_many(self, keys: list[str]) -> list[str | None]:
        return [self.store.get(k) for k in keys]

    def set_many(self, items: dict[str, str]) -> None:
        for k, v in items.items():
            self.store.set(k, v)

    def delete_many(self, keys: list[str]) -> None:
        for k in keys:
            self.store.delete(k)

    def close(self) -> None:
        pass


@dataclass
class Admitted:
    """What a batch changes in the state once the output has acknowledged it."""

    ids: list[str]
    entities: dict[str, str | None]  #: entity -> id of the event that made it known (None: deleted)
    known_before: dict[str, bool] = dataclasses.field(default_factory=dict)  #: as the store said


class Realtime:
    """The dedup + upsert stage and its state store."""

    def __init__(self, cfg: RealtimeConfig, ctx: Context, ttl: float, namespace: str) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.ttl = ttl
        self.namespace = namespace
        self.dedup_ns = f"dedup:{namespace}"
        self.entity_prefix = f"entity:{namespace}:"
        self.store: Any = None
        self.blocking = True   #: store calls go to a thread (a slow Redis must not stall heartbeats)
        self._own_store = False
        self.reset()

    def reset(self) -> None:
        """Zero the counters (a pipeline object may run more than once)."""
        self.duplicates = 0
        self.upserts = 0
        self.types: Counter[str] = Counter()
        self.ids_recorded = 0
        self.entities_set = 0
        self.entities_forgotten = 0

    # -- the store -------------------------------------------------------------------------------
    async def open(self, default_store: Any) -> None:
        """Connect the configured store (the run's state store for sqlite, unless a path is given)."""
        cfg = self.cfg
        if cfg.dedup_storage == "memory":
            from clipipe.state.memory import MemoryStore
            self.store, self.blocking, self._own_store = MemoryStore(), False, True
        elif cfg.dedup_storage == "redis":
            from clipipe.state.redis import RedisStore
            self.store = await asyncio.to_thread(RedisStore, cfg.redis_url, cfg.redis_prefix)
            self._own_store = True
        elif cfg.sqlite_path or default_store is None:
            from clipipe.state.sqlite import SQLiteStore
            path = cfg.sqlite_path
            if path and not os.path.isabs(os.path.expanduser(path)) and self.ctx.path:
                path = os.path.join(os.path.dirname(os.path.abspath(self.ctx.path)), path)
            self.store, self._own_store = SQLiteStore(os.path.expanduser(path) if path else None), True
        else:
            self.store = default_store
        if not hasattr(self.store, "contains_many") or not hasattr(self.store, "get_many"):
            self.store = _BulkAdapter(self.store)

    async def _call(self, fn: Any, *args: Any) -> Any:
        if self.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    def close(self) -> None:
        """Release a store this stage opened itself."""
        if self._own_store and self.store is not None:
            self.store.close()
        self.store = None

    def describe(self) -> str:
        """The store in words (no secrets)."""
        if self.store is None:
            return self.cfg.dedup_storage
        return str(getattr(self.store, "describe", lambda: self.cfg.dedup_storage)())

    # -- per batch -------------------------------------------------------------------------------
    def _fail(self, batch: Batch, i: int, reason: str) -> None:
        assert self.ctx.errors is not None  # set by the run
        self.ctx.errors.record_error("realtime", batch.index[i], reason, self.ctx.on_error)

    async def admit(self, batch: Batch) -> tuple[Batch, Admitted]:
        """Drop duplicates, convert upserts; returns the batch that goes on and what to record later."""
        cfg = self.cfg
        recs = batch.records()
        typed = cfg.event_type_field is not None
        id_of, ent_of = getter(cfg.id_field), getter(cfg.entity_field)
        rows: list[int] = []
        ids: list[str] = []
        ents: list[str | None] = []  #: entity per row (typed pipelines only)
        for i, r in enumerate(recs):
            v = id_of(r)
            if type(v) is not str or not v:  # the common case (a non-empty string) costs one check
                if v is None or v == "" or isinstance(v, (dict, list, bool)):
                    self._fail(batch, i, f"no usable id in {cfg.id_field!r} (got {v!r})")
                    continue
                v = str(v)
            rows.append(i)
            ids.append(v)
            if typed:
                e = ent_of(r)
                ents.append(e if type(e) is str and e else _entity(e))
        uniq = list(dict.fromkeys(ids)) if cfg.dedup else []
        need = list(dict.fromkeys(e for e in ents if e is not None)) if typed and cfg.upsert else []
        seen_vals, ent_vals = await self._call(self._lookup, uniq, need)  # one trip for both
        seen = dict(zip(uniq, seen_vals))
        known = {e: v is not None for e, v in zip(need, ent_vals)}
        keep: list[tuple[int, str, str | None]] = []
        in_batch: set[str] = set()
        for k, (i, x) in enumerate(zip(rows, ids)):
            if cfg.dedup and (seen.get(x) or x in in_batch):
                self.duplicates += 1
                continue
            in_batch.add(x)
            keep.append((i, x, ents[k] if typed else None))
        entities: dict[str, str | None] = {}
        if typed:
            keep = self._upsert(batch, recs, keep, known, entities)
        if len(keep) != len(recs):
            batch = batch.take([i for i, _, _ in keep])
        return batch, Admitted([x for _, x, _ in keep], entities, known)

    def _lookup(self, ids: list[str], entities: list[str]) -> tuple[list[bool], list[str | None]]:
        """Which ids were seen, which entities are known (runs in the store thread)."""
        store = self.store
        return (store.contains_many(self.dedup_ns, ids) if ids else [],
                store.get_many([self.entity_prefix + e for e in entities]) if entities else [])

    def _upsert(self, batch: Batch, recs: list[Any], keep: list[tuple[int, str, str | None]],
                known: dict[str, bool], entities: dict[str, str | None]) -> list[tuple[int, str, str | None]]:
        """Classify each kept event; UPDATE of an unknown entity -> CREATE (in place)."""
        cfg = self.cfg
        tf = cfg.event_type_field
        assert tf is not None
        type_of = getter(tf)
        out: list[tuple[int, str, str | None]] = []
        changed = False
        types = self.types
        for row in keep:
            i, x, e = row
            rec = recs[i]
            raw = type_of(rec)
            t = raw if raw in EVENT_TYPES else (raw.upper() if isinstance(raw, str) else None)
            if t not in EVENT_TYPES:
                self._fail(batch, i, f"event type {tf!r} is {raw!r}, expected CREATE, UPDATE or DELETE")
                continue
            if e is None:
                self._fail(batch, i, f"no usable entity id in {cfg.entity_field!r} "
                                     f"(got {get_path(rec, cfg.entity_field)!r})")
                continue
            if t == "UPDATE" and cfg.upsert:
                is_known = entities[e] is not None if e in entities else known.get(e, False)
                if not is_known:
                    set_path(rec, tf, "CREATE" if raw.isupper() or not raw.islower() else "create")
                    m = dict(batch.meta_of(i))
                    m["realtime_upsert"] = True
                    m["realtime_original_type"] = raw
                    if batch.metas is None:
                        batch.metas = [None] * len(recs)
                    batch.metas[i] = m
                    self.upserts += 1
                    changed = True
                    t = "CREATE"
            types[t] += 1
            if t == "DELETE":
                entities[e] = None
            elif entities.get(e) is None:
                entities[e] = x
            out.append(row)
        if changed:
            batch.replace(recs)
        return out

    async def acknowledge(self, admitted: Admitted) -> None:
        """The output has the batch: record its entities, then its ids (a crash between re-delivers)."""
        await self._call(self._record, admitted)

    def _record(self, admitted: Admitted) -> None:
        """The writes of `acknowledge` (runs in the store thread)."""
        store = self.store
        if admitted.entities and self.cfg.upsert:
            # only changes are written: in a steady stream most events update known entities
            before = admitted.known_before
            known = {self.entity_prefix + e: v for e, v in admitted.entities.items()
                     if v is not None and not before.get(e)}
            gone = [self.entity_prefix + e for e, v in admitted.entities.items() if v is None and before.get(e)]
            if known:
                store.set_many(known)
                self.entities_set += len(known)
            if gone:
                store.delete_many(gone)
                self.entities_forgotten += len(gone)
        if admitted.ids and self.cfg.dedup:
            store.add_many(self.dedup_ns, admitted.ids, self.ttl)
            self.ids_recorded += len(admitted.ids)

    def metrics(self) -> dict[str, Any]:
        """The stage's figures for the operation record."""
        return {"dedup_storage": self.describe(), "namespace": self.namespace, "ttl_s": self.ttl,
                "duplicates_skipped": self.duplicates, "upserts_converted": self.upserts,
                "types": {t: self.types.get(t, 0) for t in EVENT_TYPES},
                "ids_recorded": self.ids_recorded, "entities_known_set": self.entities_set,
                "entities_forgotten": self.entities_forgotten}


class _Stopper:
    """SIGINT/SIGTERM: the first asks for a graceful stop, a second one cancels the run at once."""

    def __init__(self, stderr: TextIO | None, quiet: bool) -> None:
        self.stderr = stderr
        self.quiet = quiet
        self.signal: str | None = None
        self.forced = False
        self._fut: asyncio.Future[None] | None = None
        self._task: asyncio.Task[Any] | None = None

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        self._fut = loop.create_future()
        self._task = asyncio.current_task()
        added = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
                added.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                pass
        try:
            yield
        finally:
            for sig in added:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self.signal is None:
            self.signal = sig.name
            if not self.quiet and self.stderr is not None:
                self.stderr.write(f"{sig.name}: finishing the batch in flight, committing, stopping "
                                  "(again to stop at once)\n")
                self.stderr.flush()
            if self._fut is not None and not self._fut.done():
                self._fut.set_result(None)
        elif not self.forced and self._task is not None:
            self.forced = True
            self._task.cancel()

    @property
    def stopping(self) -> bool:
        return self.signal is not None

    async def next(self, gen: Any) -> Batch | None:
        """The source's next batch, or None when it ended or a stop was asked for while waiting."""
        assert self._fut is not None
        nxt = asyncio.ensure_future(gen.__anext__())
        await asyncio.wait((nxt, self._fut), return_when=asyncio.FIRST_COMPLETED)
        if not nxt.done():
            nxt.cancel()  # nothing of an unfinished fetch was yielded, so nothing is lost
            await asyncio.gather(nxt, return_exceptions=True)
            return None
        try:
            return nxt.result()  # type: ignore[no-any-return]
        except StopAsyncIteration:
            return None


class RealtimePipeline(RecordPipeline):
    """A record pipeline in realtime mode: runs until its source ends or a signal stops it."""

    def __init__(self, name: str, ctx: Context, source: Source, steps: list[Step], output: Output,
                 realtime: Realtime) -> None:
        super().__init__(name, ctx, source, steps, output)
        self.realtime = realtime

    async def run(self, *, store: Any, op_id: str, stdout: TextIO, stderr: TextIO,
                  quiet: bool = False) -> dict[str, Any]:
        """Run until the source ends or SIGINT/SIGTERM; returns the metrics, raises RecordError."""
        ctx = self.ctx
        run = self.begin(store=store, op_id=op_id, stdout=stdout, stderr=stderr, quiet=quiet)
        rt = self.realtime
        rt.reset()
        stopper = _Stopper(stderr, quiet)
        started = time.monotonic()
        counts = [0, 0, 0]  # records in, records out, batches
        latencies: list[float] = []
        status = "failed"
        try:
            with stopper.installed():
                await rt.open(store)
                await self.output.open()
                await self._loop(stopper, run, counts, latencies)
                await self.output.close()
            status = {"SIGINT": "cancelled", "SIGTERM": "stopped"}.get(stopper.signal or "", "ok")
        except asyncio.CancelledError:
            await self._abort()
            if stopper.forced:
                status = "cancelled"
                raise KeyboardInterrupt from None
            raise
        except RecordError:
            await self._abort()
            raise
        except Exception as exc:
            await self._abort()
            raise RecordError(f"record pipeline {self.name!r} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self.metrics = self._metrics(status, started, counts[0], counts[1], latencies, run)
            self.metrics["mode"] = "realtime"
            self.metrics["realtime"] = {**rt.metrics(), "batches": counts[2], "stopped_by": stopper.signal,
                                        "commits": self.source.stats().get("commits", counts[2]),
                                        "lag": self.source.stats().get("lag")}
            rt.close()
        if hasattr(self.output, "report"):
            self.output.report(self.metrics)
        return self.metrics

    async def _loop(self, stopper: _Stopper, run: _Run, counts: list[int], latencies: list[float]) -> None:
        """Batch after batch: admit, steps, output + flush, record, commit."""
        rt = self.realtime
        src_on_error = self.ctx.on_error
        gen = self.source.batches()
        try:
            while not stopper.stopping:
                batch = await stopper.next(gen)
                if batch is None:
                    break
                counts[0] += len(batch)
                if not batch.has_records:
                    def on_bad(i: int, why: str, b: Batch = batch) -> None:
                        run.record_error("source", b.index[i], why + _where(b.meta_of(i)), src_on_error)
                    batch.records(on_bad)
                batch, admitted = await rt.admit(batch)
                if len(batch):
                    batch = self._process(batch)
                if len(batch):
                    await self.output.write(batch)
                    await self.output.flush()
                    counts[1] += len(batch)
                    if len(latencies) < MAX_LATENCIES:
                        latencies.append(time.monotonic() - batch.born)
                await rt.acknowledge(admitted)
                await self.source.commit()
                counts[2] += 1
        finally:
            await gen.aclose()
            await self.source.aclose()


def _where(meta: dict[str, Any]) -> str:
    """` (topic/partition offset N)` for a Kafka record, so a bad message can be found."""
    if "kafka_offset" not in meta:
        return ""
    return f" (at {meta['kafka_topic']}/{meta['kafka_partition']} offset {meta['kafka_offset']})"


def build(doc: Any, ctx: Context, source: Source, steps: list[Step], output: Output,
          name: str, file_mark: Mark) -> RealtimePipeline:
    """The realtime pipeline of a validated document (its `realtime:` block checked here)."""
    raw = doc.get("realtime")
    if raw is None:
        raise SpecError("type: realtime needs a realtime: block (at least id_field: ...)",
                        mark=mark_of(doc, file_mark))
    cfg = parse_config(RealtimeConfig, raw, mark_of(raw, file_mark), "realtime")

    def at(key: str) -> Mark | None:
        return raw.mark_of(key) if hasattr(raw, "mark_of") else mark_of(raw, file_mark)

    ttl = parse_duration(cfg.dedup_ttl, at("dedup_ttl"), "realtime: dedup_ttl")
    if ttl <= 0:
        raise SpecError(f"realtime: dedup_ttl must be more than 0, got {cfg.dedup_ttl!r}", mark=at("dedup_ttl"))
    for key in ("id_field", "entity_field", "event_type_field"):
        v = getattr(cfg, key)
        if v is not None and (not v or any(not p for p in v.split("."))):
            raise SpecError(f"realtime: {key} must be a field name or dotted path, got {v!r}", mark=at(key))
    if cfg.dedup_storage == "redis" and not cfg.redis_url.startswith(("redis://", "rediss://", "unix://")):
        from clipipe.state.redis import safe_url
        raise SpecError(f"realtime: redis_url must start with redis://, rediss:// or unix://, got "
                        f"{safe_url(cfg.redis_url)!r}", mark=at("redis_url"))
    if not output.acknowledges:
        raise SpecError(f"realtime: the {output.type_name} output only finishes at the end of a run, so "
                        "no batch could be acknowledged (use stub or stdout)",
                        mark=mark_of(doc["output"].get("type"), output.mark))
    namespace = cfg.dedup_namespace or name
    return RealtimePipeline(name, ctx, source, steps, output, Realtime(cfg, ctx, ttl, namespace))


EXAMPLE = """type: realtime
realtime:
  id_field: event_id
  event_type_field: event_type    # CREATE / UPDATE / DELETE
  entity_field: entity_id
  dedup_storage: redis            # memory | sqlite | redis
  dedup_ttl: 24h
  redis_url: redis://127.0.0.1:6379/0
"""


def explain() -> str:
    """`clipipe explain realtime`: the realtime: block's fields, rendered like a component's."""
    from clipipe.records.registry import _type_name, fields_of

    lines = ["realtime: block of a type: realtime pipeline: dedup by id, upsert, commit after output",
             "", "fields:"]
    for f, tp in fields_of(RealtimeConfig):
        if f.default is dataclasses.MISSING:
            default = " (required)"
        else:
            default = f" (default: {f.default!r})"
        lines.append(f"  {f.name}: {_type_name(tp)}{default}")
        lines.append(f"      {f.metadata.get('description', '')}")
    lines += ["", "example:", EXAMPLE.rstrip()]
    return "\n".join(lines)

"""One operation: load, plan and run a pipeline on its targets, and keep the operation record."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any, Callable, Iterator

from clipipe import __version__
from clipipe.engine import rerun
from clipipe.engine.output import Console
from clipipe.engine.record import iso, make_scrubber, ms, new_op_id
from clipipe.errors import ClipipeError, ContextError, UserError
from clipipe.plan.dag import Plan, build_plan
from clipipe.spec import params as params_mod
from clipipe.spec.model import Pipeline
from clipipe.targets.base import Target

if TYPE_CHECKING:  # the runner (and the stream core under it) loads only when a pipeline runs:
    from clipipe.engine.runner import RunResult   # an ad-hoc fleet command never needs it

#: Names every pipeline can use without declaring them.
BUILTIN_NAMES = ("name", "date", "time", "datetime", "timestamp", "op_id", "hostname", "user")


@dataclass
class RunOptions:
    """How to run: where, how parallel, what to show."""

    context: str | None = None           #: -c: the default context of steps without their own
    contexts_path: str | None = None
    jobs: int = 8
    quiet: bool = False
    progress: str = "auto"               #: auto, tty, plain, quiet
    dry_run: bool = False
    out: IO[str] = field(default_factory=lambda: sys.stdout)
    err: IO[str] = field(default_factory=lambda: sys.stderr)


class TargetPool:
    """Opens each context's target once per run and keeps connection facts for the record."""

    def __init__(self, contexts_path: str | None) -> None:
        self.contexts_path = contexts_path
        self._contexts: Any = None
        self._targets: dict[str, Target] = {}
        self._opening: dict[str, asyncio.Task[Target]] = {}
        self._made: dict[str, Target] = {}      #: made but maybe never opened (see `make`)
        self.used: dict[str, dict[str, Any]] = {}

    def contexts(self) -> Any:
        """The loaded contexts.yaml (or the embedded default)."""
        if self._contexts is None:
            try:
                from clipipe.targets.contexts import load_contexts
            except ImportError:
                self._contexts = False
            else:
                self._contexts = load_contexts(self.contexts_path)
        return self._contexts

    def default_name(self) -> str:
        """The default context: contexts.yaml's `default: true`, else local."""
        c = self.contexts()
        return c.default_name if c else "local"

    def remote_names(self, names: set[str]) -> set[str]:
        """Those of `names` whose context is not the local machine."""
        c = self.contexts()
        return {n for n in names if c and c.get(n).type != "local"}

    def check(self, name: str) -> None:
        """Raise ContextError if `name` is not a known context."""
        c = self.contexts()
        known = c.names() if c else ["local"]
        if name not in known and name != "local":  # local always exists
            raise ContextError(f"unknown context {name!r} (known: {', '.join(known)})",
                               hint="define it in contexts.yaml; see `clipipe context list`")

    def make(self, name: str) -> Target:
        """The target of context `name`, not opened (for what needs no agent, e.g. a port-forward)."""
        if name in self._targets:
            return self._targets[name]
        c = self.contexts()
        if not c:
            raise ContextError(f"unknown context {name!r}")
        target = c.make_target(name)        # the same cached instance `get` opens
        self._made.setdefault(name, target)
        return target

    async def get(self, name: str) -> Target:
        """The open target of context `name` (opened on first use)."""
        if name in self._targets:
            return self._targets[name]
        if name not in self._opening:
            self._opening[name] = asyncio.ensure_future(self._open(name))
        return await asyncio.shield(self._opening[name])

    async def _open(self, name: str) -> Target:
        c = self.contexts()
        if c:
            target = c.make_target(name)
        else:
            from clipipe.targets.local import LocalTarget

            target = LocalTarget(name)
        t0 = time.monotonic()
        await target.open()
        info = dict(target.describe())
        info.setdefault("connection_time_ms", ms(time.monotonic() - t0))
        self.used[name] = info
        self._targets[name] = target
        return target

    async def close(self) -> None:
        """Close every target opened or made this run."""
        every = {**self._made, **self._targets}
        for t in list(every.values()):
            try:
                await t.close()
            except Exception:  # noqa: BLE001 - closing must not hide the run's own result
                pass
        for name, t in every.items():  # figures measured during the run (bytes, paths)
            self.used[name] = {**self.used.get(name, {}), **describe_target(t)}


def describe_target(target: Target) -> dict[str, Any]:
    """`target.describe()`, or {} when it fails (descriptions are best effort)."""
    try:
        return dict(target.describe())
    except Exception:  # noqa: BLE001 - a description is best effort
        return {}


@dataclass
class Prepared:
    """A pipeline ready to run: resolved values and a plan."""

    pipeline: Pipeline
    values: dict[str, Any]
    plan: Plan
    op_id: str
    scrub: Callable[[str], str]


def prepare(pipeline: Pipeline, given: dict[str, Any], pool: TargetPool, context: str | None,
            op_id: str | None = None) -> Prepared:
    """Resolve params and build the plan; every user mistake surfaces here, before anything runs."""
    op_id = op_id or new_op_id()
    base = params_mod.builtins(pipeline.name, op_id)
    values = params_mod.resolve(pipeline, given, base)
    default = context or pool.default_name()
    plan = build_plan(pipeline, default_context=default, known_values=list(BUILTIN_NAMES))
    for name in sorted(set(plan.contexts.values()) | {c for s in pipeline.steps for b in s.branches
                                                     for c in [b.context, *(x.context for x in b.steps)] if c}):
        pool.check(name)
    scrub = make_scrubber(params_mod.secret_values(pipeline, values))
    return Prepared(pipeline=pipeline, values=values, plan=plan, op_id=op_id, scrub=scrub)


def build_record(prep: Prepared, result: RunResult | None, pool: TargetPool, started: float,
                 ended: float, status: str, error: str | None = None) -> dict[str, Any]:
    """The operation JSON record (secrets masked)."""
    p = prep.pipeline
    secret_vars = {v for v in (result.variables if result else {}) if params_mod._SECRET_NAME.search(v)}
    rec: dict[str, Any] = {
        "id": prep.op_id, "type": "pipeline-stream" if prep.plan.consumers else "pipeline",
        "clipipe": __version__, "pipeline": p.name, "file": p.path, "version": p.version or None,
        "file_abs": rerun.pipeline_key(p.path) if p.path != "<command line>" else None,
        "status": status, "started": iso(started), "ended": iso(ended), "started_ts": started,
        "duration_ms": ms(ended - started), "params": params_mod.masked(p, prep.values),
        "steps": [r.to_json(prep.scrub) for r in result.steps.values()] if result else [],
        "streams": result.streams if result else [],
        "variables": {k: ("***" if k in secret_vars else prep.scrub(v))
                      for k, v in (result.variables if result else {}).items()},
        "contexts_used": [{"name": n, **info, "steps": [s for s, c in prep.plan.contexts.items() if c == n]}
                          for n, info in pool.used.items()],
    }
    if result and result.transfers:
        rec["transfers"] = result.transfers
    if result and result.forwards:
        rec["port_forwards"] = result.forwards
    if error:
        rec["error"] = prep.scrub(error)
    return rec


async def execute(prep: Prepared, pool: TargetPool, console: Console, opts: RunOptions,
                  progress: Any = None, reuse: tuple[set[str], dict[str, str], str] | None = None) -> RunResult:
    """Run the plan, stopping cleanly (every process group killed) on SIGINT/SIGTERM."""
    from clipipe.engine.runner import Runner

    runner = Runner(prep.plan, prep.values, pool.get, console, jobs=opts.jobs, progress=progress,
                    remote_contexts=pool.remote_names(set(prep.plan.contexts.values())),
                    contexts=pool.contexts() or None, make_target=pool.make)
    if reuse is not None:           # --rerun-failed: these steps' earlier success stands
        runner.reuse(*reuse)
    task = asyncio.ensure_future(runner.run())
    try:
        with cancel_on_signals(task):
            return await task
    finally:
        await pool.close()


#: Signals that stop a run like Ctrl-C does (SIGINT is asyncio.run's own).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def cancel_on_signals(fut: "asyncio.Future[Any]") -> Iterator[None]:
    """While inside, SIGTERM and SIGHUP cancel `fut` (so every process group gets killed)."""
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        try:
            loop.add_signal_handler(sig, fut.cancel)
        except (NotImplementedError, RuntimeError):
            pass
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass


def open_store() -> Any:
    """The state store (SQLite under the state dir)."""
    from clipipe.state.sqlite import SQLiteStore

    return SQLiteStore()


def env_flag(name: str) -> bool:
    """True if environment variable `name` is set to a true-ish value."""
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


__all__ = ["ClipipeError", "Prepared", "RunOptions", "TargetPool", "build_record", "execute", "prepare"]

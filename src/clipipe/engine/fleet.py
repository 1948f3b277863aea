"""A fleet run: the same ad-hoc command or pipeline on many contexts at once, `forks` at a time.

Per host: open its target (one per host per run, from a fresh pool: nothing survives the run), run,
and classify the end: `ok` (every step exited 0), `failed` (a command failed: exit status or signal),
`unreachable` (connect, login, host key, or the connection was lost mid-run; the reason says which).
One host's trouble never stops the others. Ad-hoc commands on ssh hosts use a plain exec channel
(see `clipipe.targets.plainexec`); pipelines run through the Runner with the host as default context,
so their steps reuse the host's one agent.

Output (`mode`): `prefix` writes `host | line` as lines arrive; `grouped` writes each host's output as
one block when the host ends (a block identical to one already shown says so instead of repeating);
`json` writes nothing live (the CLI prints one JSON object per host at the end). Every mode keeps
each host's output (up to KEEP_BYTES) and a digest of all of it, for the recap that groups hosts
whose output was identical and for the operation record.
"""
from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from clipipe import __version__
from clipipe.engine.operation import Prepared, TargetPool, cancel_on_signals, describe_target, prepare
from clipipe.engine.output import Console
from clipipe.engine.record import iso, ms, new_op_id
from clipipe.engine import rerun
from clipipe.errors import (AgentError, AuthError, ClipipeError, HostKeyError, TargetError,
                            UnreachableError)
from clipipe.spec import templates
from clipipe.spec.model import Pipeline
from clipipe.targets import plainexec, preconnect
from clipipe.targets.base import Target

#: Exit status of a fleet run: every host ok / some failed / some unreachable / both.
EXIT_OK, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_FAILED_AND_UNREACHABLE = 0, 1, 3, 4

#: Default number of hosts worked on at once (Ansible's default too).
DEFAULT_FORKS = 10

#: Output kept per host for the recap, --output=grouped|json and the record; more is counted, not kept.
KEEP_BYTES = 1024 * 1024

OUTPUT_MODES = ("prefix", "grouped", "json")

#: Seconds between redraws of the live status line on a terminal.
TTY_REDRAW = 0.2
#: Seconds between plain status lines (logs, CI): a long run shows it is alive, a short one stays quiet.
PLAIN_EVERY = 10.0


# ------------------------------------------------------------------------------------------ targets
class FleetPool(TargetPool):
    """A TargetPool over a given (possibly inventory-merged) Contexts, closing targets in parallel."""

    def __init__(self, contexts: Any, contexts_path: str | None = None) -> None:
        super().__init__(contexts_path)
        self._contexts = contexts
        self._made: dict[str, Target] = {}
        self._closing: list[asyncio.Task[None]] = []
        self._shared = plainexec.SharedCredentials()

    def make(self, name: str) -> Target:
        """The target of context `name`, not opened (for the plain exec path)."""
        if name not in self._made:
            self._made[name] = self._contexts.make_target(name)
            self._shared.attach(self._made[name])
        return self._made[name]

    async def _open(self, name: str) -> Target:
        self.make(name)                        # the same instance, with shared credentials
        return await super()._open(name)

    async def close_one(self, name: str) -> None:
        """Close host `name`'s target now (its part of the run is over), keeping its figures."""
        target = self._targets.pop(name, None) or self._made.pop(name, None)
        if target is None:
            return
        try:
            await target.close()
        except Exception:  # noqa: BLE001 - closing must not hide the run's result
            pass
        self.used[name] = {**self.used.get(name, {}), **describe_target(target)}

    def close_soon(self, name: str) -> None:
        """Close host `name`'s target in the background."""
        self._closing.append(asyncio.ensure_future(self.close_one(name)))

    async def close(self) -> None:
        """Close every target still open, all at once."""
        names = list(dict.fromkeys([*self._targets, *self._made]))
        await asyncio.gather(*self._closing, *(self.close_one(n) for n in names), return_exceptions=True)


def load_catalog(contexts_path: str | None, inventories: list[str] | tuple[str, ...] = ()) -> Any:
    """contexts.yaml (found as usual) merged with the given Ansible inventories."""
    from clipipe.targets.contexts import load_contexts

    base = load_contexts(contexts_path)
    if not inventories:
        return base
    from clipipe.targets.inventory import load_inventory, merge_inventory

    return merge_inventory(base, [load_inventory(p) for p in inventories])


def make_pool(contexts_path: str | None, inventories: list[str] | tuple[str, ...] = ()) -> TargetPool:
    """The pool of a run: the usual TargetPool, over inventories too when some are given."""
    if not inventories:
        return TargetPool(contexts_path)
    return FleetPool(load_catalog(contexts_path, inventories), contexts_path)


# ------------------------------------------------------------------------------------------ results
@dataclass
class HostResult:
    """What happened on one host."""

    host: str
    status: str = "pending"            #: ok, failed, unreachable, cancelled
    exit_code: int | None = None
    signal: int | None = None
    reason: str | None = None          #: why it failed or was unreachable (one line)
    reason_kind: str | None = None     #: timeout, refused, dns, auth, host-key, connection-lost, ...
    started: float = 0.0
    connected: float = 0.0
    ended: float = 0.0
    steps: list[dict[str, Any]] = field(default_factory=list)
    output: HostOutput | None = None

    @property
    def duration(self) -> float:
        """Seconds from the host's start to its end."""
        return max(0.0, self.ended - self.started) if self.started else 0.0

    def to_json(self, target: dict[str, Any] | None = None) -> dict[str, Any]:
        """The host's entry in the operation record."""
        out = self.output
        d: dict[str, Any] = {
            "host": self.host, "status": self.status, "exit_code": self.exit_code, "signal": self.signal,
            "reason": self.reason, "reason_kind": self.reason_kind,
            "started": iso(self.started), "ended": iso(self.ended), "duration_ms": ms(self.duration),
            "connect_ms": ms(self.connected - self.started) if self.connected else None,
            "bytes_out": out.bytes_out if out else 0, "bytes_err": out.bytes_err if out else 0,
            "output_digest": out.digest() if out else None,
        }
        if self.steps:
            d["steps"] = self.steps
        if target:
            d["target"] = target
        return d


class HostOutput:
    """One host's output: shown as the mode says, kept (bounded) and digested."""

    def __init__(self, host: str, console: Console, mode: str) -> None:
        self.host = host
        self.console = console
        self.mode = mode
        self.lines: list[tuple[bool, str]] = []     #: (is_stderr, text), in arrival order
        self.bytes_out = 0
        self.bytes_err = 0
        self.kept = 0
        self.truncated = False
        self._pending = {False: b"", True: b""}
        self._hash = {False: hashlib.sha256(), True: hashlib.sha256()}

    def feed(self, chunk: bytes, err: bool) -> None:
        """Bytes from the host's stdout or stderr; whole lines are emitted."""
        if err:
            self.bytes_err += len(chunk)
        else:
            self.bytes_out += len(chunk)
        data = self._pending[err] + chunk
        *lines, self._pending[err] = data.split(b"\n")
        for raw in lines:
            self._emit(raw.decode("utf-8", "replace").rstrip("\r"), err)
        if len(self._pending[err]) > 65536:
            self._emit(self._pending[err].decode("utf-8", "replace"), err)
            self._pending[err] = b""

    def line(self, text: str, err: bool) -> None:
        """A whole line (from the Runner's relays)."""
        n = len(text.encode("utf-8", "replace")) + 1
        if err:
            self.bytes_err += n
        else:
            self.bytes_out += n
        self._emit(text, err)

    def _emit(self, text: str, err: bool) -> None:
        self._hash[err].update(text.encode("utf-8", "replace") + b"\n")
        if self.kept < KEEP_BYTES:
            self.lines.append((err, text))
            self.kept += len(text) + 1
        else:
            self.truncated = True
        if self.mode == "prefix":
            self.console.host_line(self.host, text, err=err)

    def note(self, text: str) -> None:
        """clipipe's own line about this host (not part of its output)."""
        if self.mode == "prefix":
            self.console.host_line(self.host, text, err=True)

    def flush(self) -> None:
        """Emit a last line without newline."""
        for err in (False, True):
            if self._pending[err]:
                self._emit(self._pending[err].decode("utf-8", "replace"), err)
                self._pending[err] = b""

    def digest(self) -> str:
        """A digest of everything the host wrote (stdout and stderr hashed apart: order-proof)."""
        return hashlib.sha256(self._hash[False].digest() + self._hash[True].digest()).hexdigest()[:16]

    def text(self) -> tuple[str, str]:
        """(stdout, stderr) as kept."""
        out = "".join(t + "\n" for e, t in self.lines if not e)
        err = "".join(t + "\n" for e, t in self.lines if e)
        return out, err


class HostConsole(Console):
    """The Console a host's Runner writes to: lines go to the host's HostOutput."""

    def __init__(self, output: HostOutput, parent: Console, multi_step: bool) -> None:
        super().__init__(parent.out, parent.err, parent.scrub)
        self.output = output
        self.multi_step = multi_step

    def line(self, text: str, *, prefix: str | None = None, err: bool = False) -> None:
        """A step's line: `[step] text` when the pipeline has several steps."""
        self.output.line(f"[{prefix}] {text}" if prefix and self.multi_step else text, err)

    def note(self, text: str) -> None:
        """The Runner's status lines (a step failed, a retry)."""
        self.output.note(text)


class _Watched:
    """A host's target as its Runner sees it: remembers a lost connection, hands on the rest."""

    def __init__(self, target: Target, lost: list[BaseException]) -> None:
        self._t = target
        self._lost = lost
        self.name = target.name
        self.kind = target.kind

    async def run_segment(self, procs: Any, io: Any) -> Any:
        try:
            return await self._t.run_segment(procs, io)
        except asyncio.CancelledError:
            raise
        except ClipipeError as exc:
            if isinstance(exc, (TargetError, AgentError)):
                self._lost.append(exc)
            raise
        except Exception as exc:  # noqa: BLE001 - transport errors the target did not map
            self._lost.append(exc)
            raise UnreachableError(f"connection lost: {exc or type(exc).__name__}", target=self.name) from exc

    def __getattr__(self, item: str) -> Any:
        return getattr(self._t, item)


def classify(exc: BaseException) -> tuple[str, str]:
    """(reason kind, one-line reason) of a host's failure to connect or to stay connected."""
    cause = exc.__cause__
    message = getattr(exc, "message", None) or str(exc)
    text = message.splitlines()[0] if message else type(exc).__name__
    if isinstance(exc, HostKeyError):
        return "host-key", text
    if isinstance(exc, AuthError):
        return "auth", text
    if isinstance(exc, UnreachableError):
        import socket
        if isinstance(cause, (asyncio.TimeoutError, TimeoutError)) or "timed out" in text:
            return "timeout", text
        if isinstance(cause, ConnectionRefusedError) or "refused" in text:
            return "refused", text
        if isinstance(cause, socket.gaierror) or "unknown host" in text:
            return "dns", text
        if "lost" in text or "closed the connection" in text:
            return "connection-lost", text
        return "unreachable", text
    if isinstance(exc, (AgentError, TargetError)):
        return "connection-lost" if "lost" in text or "EOF" in text else "target-error", text
    return "connection-lost", text


# ------------------------------------------------------------------------------------------ the run
@dataclass
class FleetResult:
    """Every host's result, in selection order, and the run's figures."""

    hosts: list[HostResult]
    started: float
    ended: float
    forks: int
    status: str = "ok"                 #: ok, failed, cancelled
    max_running: int = 0               #: the most hosts worked on at once

    def counts(self) -> dict[str, int]:
        """Hosts per status."""
        out = {"ok": 0, "failed": 0, "unreachable": 0, "cancelled": 0}
        for h in self.hosts:
            out[h.status] = out.get(h.status, 0) + 1
        return out


def exit_code(result: FleetResult) -> int:
    """0 all ok; 1 some failed; 3 some unreachable; 4 both; 130 cancelled."""
    c = result.counts()
    if result.status == "cancelled":
        return 130
    if c["failed"] and c["unreachable"]:
        return EXIT_FAILED_AND_UNREACHABLE
    if c["unreachable"]:
        return EXIT_UNREACHABLE
    if c["failed"]:
        return EXIT_FAILED
    return EXIT_OK


class Fleet:
    """Runs one pipeline (an ad-hoc command is a one-step pipeline) on every selected host."""

    def __init__(self, pipeline: Pipeline, given: dict[str, Any], hosts: list[str], pool: FleetPool,
                 console: Console, *, forks: int = DEFAULT_FORKS, mode: str = "prefix", jobs: int = 8,
                 op_id: str | None = None, adhoc: bool = False, progress: str = "quiet") -> None:
        if mode not in OUTPUT_MODES:
            raise ValueError(f"unknown output mode {mode!r}")
        self.pipeline = pipeline
        self.hosts = hosts
        self.pool = pool
        self.console = console
        self.forks = max(1, forks)
        self.mode = mode
        self.jobs = jobs
        self.adhoc = adhoc
        console.host_width = max(len(h) for h in hosts)
        # every user mistake surfaces here, before anything runs
        self.op_id = op_id or new_op_id()
        self.preps = {h: prepare(pipeline, given, pool, h, op_id=self.op_id) for h in hosts}
        self.results = {h: HostResult(h) for h in hosts}
        self._running = 0
        self._max_running = 0
        self._shown: dict[str, str] = {}          #: digest -> first host shown with it (grouped)
        self._explicit = {c for s in pipeline.steps for c in [s.context] if c}
        #: "tty": a live status line under the output; "plain": a status line every PLAIN_EVERY s
        self.progress = progress

    @property
    def prep(self) -> Prepared:
        """The first host's preparation (params and values are the same on every host)."""
        return self.preps[self.hosts[0]]

    async def run(self) -> FleetResult:
        """Run every host, `forks` at a time; Ctrl-C / SIGTERM cancels what runs, then reports."""
        started = time.time()
        self._preconnect()
        sem = asyncio.Semaphore(self.forks)
        tasks = [asyncio.ensure_future(self._host(h, sem)) for h in self.hosts]
        gathered = asyncio.gather(*tasks)
        ticker = asyncio.ensure_future(self._show_progress()) if self.progress != "quiet" else None
        status = "ok"
        try:
            with cancel_on_signals(gathered):
                await gathered
        except asyncio.CancelledError:
            status = "cancelled"
            await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            if ticker is not None:
                ticker.cancel()
            self.console.clear_status()
            preconnect.discard_all()
            await self.pool.close()
        hosts = [self.results[h] for h in self.hosts]
        for h in hosts:
            if h.status in ("pending", "running"):
                h.status, h.reason = "cancelled", "the run was interrupted"
                h.ended = h.ended or time.time()
        if status != "cancelled" and any(h.status != "ok" for h in hosts):
            status = "failed"
        return FleetResult(hosts, started, time.time(), self.forks, status, self._max_running)

    def progress_text(self) -> str:
        """`fleet 23/50 done: 21 ok, 1 failed, 1 unreachable; 10 running` (counts so far)."""
        counts: dict[str, int] = {}
        for r in self.results.values():
            counts[r.status] = counts.get(r.status, 0) + 1
        ended = [k for k in ("ok", "failed", "unreachable", "cancelled") if counts.get(k)]
        done = sum(counts.get(k, 0) for k in ended)
        parts = ", ".join(f"{counts[k]} {k}" for k in ended) or "none yet"
        return (f"fleet {done}/{len(self.hosts)} done: {parts}; {counts.get('running', 0)} running, "
                f"{counts.get('pending', 0)} waiting")

    async def _show_progress(self) -> None:
        """Redraw the TTY status line, or print a plain status line now and then."""
        if self.progress == "tty":
            self.console.status = self.progress_text
            while True:
                self.console.redraw()
                await asyncio.sleep(TTY_REDRAW)
        while True:
            await asyncio.sleep(PLAIN_EVERY)
            self.console.note(self.progress_text())

    def _preconnect(self) -> None:
        """Start the TCP connects of the first `forks` ssh hosts before their targets are made."""
        contexts = self.pool.contexts()
        if not contexts:
            return
        first = [contexts.get(h) for h in self.hosts[:self.forks]]
        preconnect.start([d.settings for d in first if d.type == "ssh"])

    async def _host(self, host: str, sem: asyncio.Semaphore) -> None:
        res = self.results[host]
        res.output = HostOutput(host, self.console, self.mode)
        async with sem:
            self._running += 1
            self._max_running = max(self._max_running, self._running)
            res.started = time.time()
            res.status = "running"
            try:
                if self.adhoc and plainexec.supports_plain(self.pool.make(host)):
                    await self._plain(host, res)
                else:
                    await self._pipeline(host, res)
            except asyncio.CancelledError:
                res.status, res.reason = "cancelled", "the run was interrupted"
                raise
            except ClipipeError as exc:
                if isinstance(exc, (TargetError, AgentError)):
                    res.status = "unreachable"
                    res.reason_kind, res.reason = classify(exc)
                else:
                    res.status, res.reason = "failed", str(exc)
            except Exception as exc:  # noqa: BLE001 - one host's surprise must not stop the fleet
                res.status = "unreachable"
                res.reason_kind, res.reason = classify(exc)
            finally:
                res.ended = time.time()
                self._running -= 1
                res.output.flush()
                if not self._explicit:
                    self.pool.close_soon(host)
        self._finished(res)

    async def _plain(self, host: str, res: HostResult) -> None:
        """An ad-hoc command over the host's connection (no agent)."""
        target = self.pool.make(host)
        await plainexec.connect(target)
        res.connected = time.time()
        self.pool.used.setdefault(host, {})
        step = self.prep.pipeline.steps[0]
        command = templates.render(step.command or "", self.prep.values, shell=True, mark=step.mark)
        assert res.output is not None
        outcome = await plainexec.run_plain(target, command, res.output.feed)
        res.exit_code, res.signal = outcome.exit_code, outcome.signal
        res.steps = [{"name": step.name, "context": host, "command": self.prep.scrub(command),
                      "status": "ok" if outcome.exit_code == 0 else "failed",
                      "exit_code": outcome.exit_code, "signal": outcome.signal,
                      "duration_ms": ms(time.time() - res.connected)}]
        self._judge_exit(res)

    async def _pipeline(self, host: str, res: HostResult) -> None:
        """The pipeline with `host` as its default context, through the host's one target."""
        prep = self.preps[host]
        target = await self.pool.get(host)     # connect and boot the agent: unreachable shows here
        res.connected = time.time()
        lost: list[BaseException] = []
        watched = _Watched(target, lost)

        async def get(ctx: str) -> Any:
            return watched if ctx == host else await self.pool.get(ctx)

        assert res.output is not None
        console = HostConsole(res.output, self.console, multi_step=len(prep.plan.steps) > 1)
        contexts = set(prep.plan.contexts.values()) | {host}
        from clipipe.engine.runner import Runner   # not loaded for ad-hoc commands

        runner = Runner(prep.plan, prep.values, get, console, jobs=self.jobs,
                        remote_contexts=self.pool.remote_names(contexts),  # piped steps join on the host
                        contexts=self.pool.contexts() or None, make_target=self.pool.make)
        runner.direct_output = False           # every line goes through the host's output
        result = await runner.run()
        res.steps = [r.to_json(prep.scrub) for r in result.steps.values()]
        if lost:
            raise lost[0] if isinstance(lost[0], ClipipeError) else UnreachableError(
                f"connection lost: {lost[0]}", target=host)
        failed = [result.steps[n] for n in result.failed]
        if result.status == "ok":
            res.exit_code = 0
        elif failed:
            res.exit_code, res.signal = failed[0].exit_code, failed[0].signal
            res.reason = failed[0].error
        self._judge_exit(res, result.status)

    def _judge_exit(self, res: HostResult, status: str | None = None) -> None:
        if status == "cancelled":
            res.status, res.reason = "cancelled", "the run was interrupted"
        elif res.exit_code == 0 and status in (None, "ok"):
            res.status = "ok"
        else:
            res.status = "failed"
            if res.reason is None:
                res.reason = (f"killed by signal {res.signal}" if res.signal
                              else f"exited with status {res.exit_code}")

    def _finished(self, res: HostResult) -> None:
        """A host ended: in grouped mode its block is shown now."""
        if self.mode != "grouped" or res.output is None:
            return
        verdict = res.status if res.status == "ok" else f"{res.status}: {res.reason}"
        head = f"── {res.host} ({verdict}, {res.duration:.2f}s)"
        digest = res.output.digest()
        if digest in self._shown and res.output.lines:
            self.console.block([f"{head}: same output as {self._shown[digest]}"])
            return
        self._shown.setdefault(digest, res.host)
        lines = [head] + [t for _e, t in res.output.lines]
        if res.output.truncated:
            lines.append(f"... (output past {KEEP_BYTES} bytes not kept)")
        self.console.block(lines)


# ------------------------------------------------------------------------------------------ reports
def output_groups(result: FleetResult) -> list[tuple[list[str], HostResult]]:
    """Hosts grouped by identical output (like `dshbak -c`), biggest group first; each with an example."""
    groups: dict[str, list[HostResult]] = {}
    for h in result.hosts:
        if h.output is None or h.status in ("unreachable", "cancelled"):
            continue
        groups.setdefault(h.output.digest(), []).append(h)
    ordered = sorted(groups.values(), key=lambda g: -len(g))
    return [([h.host for h in g], g[0]) for g in ordered]


def compress_hosts(names: list[str]) -> str:
    """`web-1,web-2,web-3,db` -> `web-[1-3],db` (numeric suffix runs folded, like pdsh's hostlist)."""
    by_stem: dict[tuple[str, str], list[str]] = {}
    order: list[tuple[str, str]] = []
    plain: dict[tuple[str, str], str] = {}
    for n in names:
        m = re.fullmatch(r"(.*?)(\d+)(\D*)", n)
        key = (m.group(1), m.group(3)) if m else (n, "\0")
        if key not in by_stem:
            by_stem[key] = []
            order.append(key)
        if m:
            by_stem[key].append(m.group(2))
        else:
            plain[key] = n
    parts: list[str] = []
    for key in order:
        if key in plain:
            parts.append(plain[key])
            continue
        nums = by_stem[key]
        if len(nums) == 1:
            parts.append(f"{key[0]}{nums[0]}{key[1]}")
            continue
        parts.append(f"{key[0]}[{_ranges(nums)}]{key[1]}")
    return ",".join(parts)


def _ranges(nums: list[str]) -> str:
    vals = sorted(set(nums), key=lambda s: (int(s), s))
    out: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while (j + 1 < len(vals) and int(vals[j + 1]) == int(vals[j]) + 1
               and (len(vals[j + 1]) == len(vals[i]) or not _padded(vals[i]))):
            j += 1
        out.append(vals[i] if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ",".join(out)


def _padded(num: str) -> bool:
    return len(num) > 1 and num.startswith("0")


def host_json(h: HostResult) -> dict[str, Any]:
    """One host as `--output=json` prints it."""
    out, err = h.output.text() if h.output else ("", "")
    return {"host": h.host, "status": h.status, "exit_code": h.exit_code, "signal": h.signal,
            "reason": h.reason, "reason_kind": h.reason_kind, "duration_ms": ms(h.duration),
            "stdout": out, "stderr": err,
            "truncated": bool(h.output and h.output.truncated)}


def fleet_record(fleet: Fleet, result: FleetResult, selection: str, limit: str | None,
                 error: str | None = None) -> dict[str, Any]:
    """The one operation record of a fleet run: per-host status, timings and bytes."""
    prep = fleet.prep
    p = prep.pipeline
    from clipipe.spec import params as params_mod

    hosts = [h.to_json(fleet.pool.used.get(h.host)) for h in result.hosts]
    steps = [{**s, "context": h.host, "name": s.get("name", "command") if len(p.steps) > 1
              or not fleet.adhoc else "command"} for h in result.hosts for s in h.steps]
    rec: dict[str, Any] = {
        "id": fleet.op_id, "type": "fleet", "clipipe": __version__, "pipeline": p.name,
        "file": p.path, "file_abs": None if fleet.adhoc else rerun.pipeline_key(p.path),
        "status": result.status, "started": iso(result.started), "ended": iso(result.ended),
        "started_ts": result.started, "duration_ms": ms(result.ended - result.started),
        "params": params_mod.masked(p, prep.values),
        "selection": selection, "limit": limit, "forks": result.forks, "max_running": result.max_running,
        "summary": result.counts(), "exit_code": exit_code(result),
        "bytes_out": sum(h["bytes_out"] for h in hosts), "bytes_err": sum(h["bytes_err"] for h in hosts),
        "hosts": hosts, "steps": steps,
        "recap": [{"hosts": names, "count": len(names), "output_digest": ex.output.digest() if ex.output else None}
                  for names, ex in output_groups(result)],
    }
    if fleet.adhoc:
        rec["command"] = prep.scrub(p.steps[0].command or "")
    if error:
        rec["error"] = prep.scrub(error)
    return rec

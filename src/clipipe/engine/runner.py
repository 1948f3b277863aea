"""The scheduler: runs a plan's stream groups as soon as what they wait for is done, in parallel.

Each group is one attempt (or several, under `on_error: retry`): its processes start together, joined
by pipes and pumps (see wiring.py). The first hard failure in a group kills the rest of the group.
A producer killed by SIGPIPE because its reader stopped early (`head -c 1`) is not a failure.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from clipipe import fastpipe
from clipipe.engine import remote_tee
from clipipe.engine import steptypes
from clipipe.engine.output import Console
from clipipe.engine.record import StepRecord, ms
from clipipe.engine.wiring import Proc, Pump, Wiring, run_in_thread, segment_io
from clipipe.errors import ClipipeError, TargetError
from clipipe.plan.dag import Plan
from clipipe.spec import templates
from clipipe.spec.model import Branch, Step
from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO, Target

TargetGetter = Callable[[str], Awaitable[Target]]

#: Exit status a shell reports for a child killed by SIGPIPE (128 + 13).
SIGPIPE_STATUS = 128 + signal.SIGPIPE


@dataclass
class RunResult:
    """What a run did, for the summary and the operation record."""

    status: str                                  #: "ok", "failed" or "cancelled"
    steps: dict[str, StepRecord]
    streams: list[dict[str, Any]] = field(default_factory=list)
    variables: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    transfers: list[dict[str, Any]] = field(default_factory=list)   #: transfer steps (record `transfers`)
    forwards: list[dict[str, Any]] = field(default_factory=list)    #: port-forward steps, as stopped


class GroupFailed(Exception):
    """An attempt at a group failed; carries the step to blame."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(message)
        self.step = step


class Runner:
    """Runs one plan with given values on given targets."""

    def __init__(self, plan: Plan, values: dict[str, Any], targets: TargetGetter, console: Console, *,
                 jobs: int = 8, progress: Any = None, remote_contexts: set[str] | None = None,
                 contexts: Any = None, make_target: Callable[[str], Target] | None = None) -> None:
        self.plan = plan
        self.contexts = contexts            #: the run's Contexts, for transfer steps' endpoints
        self.make_target = make_target      #: an unopened target (port-forwards need no agent)
        self.forwards: dict[str, list[Any]] = {}      #: port-forward step -> its running forwards
        self.forward_stats: list[dict[str, Any]] = []
        self.transfers: list[dict[str, Any]] = []
        self._reused: set[str] = set()      #: steps an earlier run did (--rerun-failed)
        #: contexts where consecutive piped steps run as one segment, joined by the remote's own pipes
        self.remote_contexts = remote_contexts or set()
        self.values = dict(values)
        self.targets = targets
        self.console = console
        self.jobs = max(1, jobs)
        self.progress = progress
        self.variables: dict[str, str] = {}
        self.records = {n: StepRecord(name=n, context=plan.contexts[n]) for n in plan.steps}
        self.streams: list[dict[str, Any]] = []
        self._stream_seq = 0
        #: tee step -> None (runs on its producer's host) or why it runs on the controller
        self.tee_placement: dict[str, str | None] = {}
        single = len(plan.steps) == 1 and plan.pipeline.steps[0].type == "command"
        self.direct_output = single   #: one command: give it our stdout/stderr fds directly
        width = max((len(n) for n in plan.steps), default=0)
        console.prefix_width = width

    # -- scheduling ---------------------------------------------------------------------------------
    async def run(self) -> RunResult:
        """Run every group once its dependencies are done; stop on a failure under on_error: stop."""
        plan = self.plan
        deps: dict[int, set[int]] = {g.id: set() for g in plan.groups}
        for e in plan.edges:
            a, b = plan.group_of[e.src], plan.group_of[e.dst]
            if e.kind != "stream" and a != b:
                deps[b].add(a)
        status: dict[int, str] = {gid: "ok" for gid in deps
                                  if all(n in self._reused for n in plan.groups[gid].steps)}
        running: dict[asyncio.Task[str], int] = {}
        sem = asyncio.Semaphore(self.jobs)
        stop = False
        cancelled = False
        try:
            while True:
                for gid in sorted(deps):
                    if gid in status or (stop and not self._is_cleanup(gid)):
                        continue
                    if any(self._pending(d, status, stop) for d in deps[gid]):
                        continue
                    bad = [d for d in deps[gid] if status.get(d, "skipped") in ("failed", "skipped", "cancelled")]
                    status[gid] = "running"
                    if bad and not self._is_cleanup(gid):     # a cleanup runs whatever came before
                        status[gid] = "skipped"
                        for n in plan.groups[gid].steps:
                            self.records[n].status = "skipped"
                            self.records[n].note = "a step it depends on failed"
                        continue
                    running[asyncio.ensure_future(self._guarded(gid, sem))] = gid
                if not running:
                    break
                done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    gid = running.pop(t)
                    status[gid] = "cancelled" if t.cancelled() else t.result()
                    if status[gid] == "failed" and not stop:
                        stop = True
                        for other in running:
                            other.cancel()
        except asyncio.CancelledError:
            cancelled = True
            for t in running:
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)
        finally:
            await steptypes.close_all(self)      # forwards no cleanup step stopped end with the run
        for gid in deps:
            if gid not in status or status[gid] == "running":
                for n in plan.groups[gid].steps:
                    if self.records[n].status in ("pending", "running"):
                        self.records[n].status = "cancelled" if cancelled else "skipped"
        failed = [n for n, r in self.records.items() if r.status == "failed" and not r.ignored]
        result = "cancelled" if cancelled else ("failed" if failed or stop else "ok")
        return RunResult(status=result, steps=self.records, streams=self.streams,
                         variables=dict(self.variables), failed=failed, transfers=self.transfers,
                         forwards=self.forward_stats)

    def reuse(self, steps: set[str], variables: dict[str, str], run_id: str) -> None:
        """Mark steps as done by an earlier run (`--rerun-failed`), with the variables they captured."""
        self._reused = set(steps)
        self.variables.update(variables)
        for n in steps:
            rec = self.records[n]
            rec.status, rec.note = "ok", f"ok in {run_id}; not run again"

    def _pending(self, gid: int, status: dict[int, str], stop: bool) -> bool:
        """True while group `gid` may still run: running, or not started and the run goes on."""
        state = status.get(gid)
        return state == "running" or (state is None and (not stop or self._is_cleanup(gid)))

    def _is_cleanup(self, gid: int) -> bool:
        names = self.plan.groups[gid].steps
        return len(names) == 1 and self.plan.steps[names[0]].type == "cleanup"

    async def _guarded(self, gid: int, sem: asyncio.Semaphore) -> str:
        async with sem:
            return await self._run_group(gid)

    async def _run_group(self, gid: int) -> str:
        """Run a group with retries; return its status: ok, failed (stop) or continued."""
        names = self.plan.groups[gid].steps
        steps = [self.plan.steps[n] for n in names]
        attempt = 0
        while True:
            attempt += 1
            for n in names:
                self.records[n].attempts = attempt
                self.records[n].status = "running"
            try:
                try:
                    await self._attempt(steps)
                except ClipipeError as exc:  # e.g. a template that can't be rendered: the step fails
                    for n in names:
                        self.records[n].ended = time.time()
                    self.records[names[0]].status = "failed"
                    self.records[names[0]].error = str(exc)
                    raise GroupFailed(names[0], str(exc)) from exc
                return "ok"
            except GroupFailed as exc:
                blame = self.plan.steps[exc.step]
                policy = blame.on_error or self.plan.pipeline.on_error
                retry = blame.retry
                if policy == "retry" and retry and attempt < retry.count:
                    delay = retry.delay * (retry.backoff ** (attempt - 1))
                    self.console.note(f"✗ {exc.step}: {exc} — retry {attempt}/{retry.count - 1} "
                                      f"in {delay:g}s")
                    await asyncio.sleep(delay)
                    continue
                self.console.note(f"✗ {exc.step}: {exc}")
                if policy == "continue":
                    for n in names:
                        if self.records[n].status == "failed":
                            self.records[n].ignored = True
                    return "continued"
                return "failed"

    # -- one attempt at a group ---------------------------------------------------------------------
    def _render(self, text: str, step: Step) -> str:
        return templates.render(text, {**self.values, **self.variables}, shell=True, mark=step.mark)

    def _spec(self, key: str, command: str, step: Step) -> ProcSpec:
        env = {k: templates.render(v, {**self.values, **self.variables}, shell=False)
               for k, v in {**self.plan.pipeline.env, **step.env}.items()}
        return ProcSpec(name=key, command=self._render(command, step), env=env,
                        cwd=step.cwd and templates.render(step.cwd, {**self.values, **self.variables},
                                                          shell=False))

    def _prefix(self, key: str) -> str | None:
        return None if self.direct_output else key

    def _wire(self, steps: list[Step]) -> tuple[Wiring, dict[str, Branch]]:
        """Create every pipe, pump and reader of the group."""
        w = Wiring()
        branch_of: dict[str, Branch] = {}
        procs: dict[str, Proc] = {}
        pumps: dict[str, Pump] = {}
        merged = self._merges(steps)
        remote = {self.plan.producer_of[t]: t for t in (x.name for x in steps)
                  if t in self.tee_placement and self.tee_placement[t] is None}
        tees: list[remote_tee.RemoteTee] = []
        for s in steps:
            if s.name in self.plan.consumers and s.name not in merged.values() and s.name not in remote:
                self._stream_seq += 1
                readers = self.plan.consumers[s.name]
                kind = "tee" if any(self.plan.steps[c].type == "tee" for c in readers) else (
                    "fanout" if len(readers) > 1 else "pipe")
                pumps[s.name] = Pump(id=f"str-{self._stream_seq:03d}", producer=s.name, src=-1,
                                     kind=kind, counter=fastpipe.Counter())
        if self.progress is not None:
            for pname, pump in pumps.items():
                self.progress.add(pname, pump.counter)
        for s in steps:
            if s.type == "tee" and s.name in remote.values():
                tees.append(remote_tee.wire(self, s, w, procs, branch_of))
                continue
            if s.type == "tee":
                self._wire_tee(s, pumps[self.plan.producer_of[s.name]], w, procs, branch_of)
                continue
            p = Proc(key=s.name, context=self.plan.contexts[s.name], spec=self._spec(s.name, s.command or "", s))
            self.records[s.name].command = p.spec.command
            if s.name in merged:  # joined to its producer on the remote host: no controller fds between
                procs[merged[s.name]].downstream.append(s.name)
                w.segment_of[s.name] = w.segment_of[merged[s.name]]
            elif s.name in self.plan.producer_of:
                p.stdin = pumps[self.plan.producer_of[s.name]].add_sink(s.name)
            w.segment_of.setdefault(s.name, s.name)
            if s.name in merged.values() or s.name in remote:
                pass  # its stdout is the next step's stdin (or its tee's), on the remote host
            elif s.name in pumps:
                r, wfd = os.pipe()
                pumps[s.name].src = r
                p.stdout = wfd
                p.feeds_pump = pumps[s.name]
            else:
                p.stdout = w.output_fd(s.name, s.output, self.console, prefix=self._prefix(s.name),
                                       direct=self.direct_output and not s.variable
                                       and not (s.output or "").startswith("file:"))
            p.stderr = w.stderr_fd(s.name, self.console, prefix=self._prefix(s.name))
            procs[s.name] = p
        w.procs = list(procs.values())
        w.pumps = list(pumps.values()) + w.pumps  # plus the links between a tee branch's steps
        remote_tee.join(w, procs, tees)
        return w, branch_of

    def _merges(self, steps: list[Step]) -> dict[str, str]:
        """consumer -> producer for plain pipes between two command steps on the same remote context."""
        out: dict[str, str] = {}
        order = [x.name for x in steps]
        for s in steps:
            prod = self.plan.producer_of.get(s.name)
            if prod is None or s.type != "command":
                continue
            ctx = self.plan.contexts[s.name]
            if (ctx in self.remote_contexts and self.plan.contexts[prod] == ctx
                    and order.index(prod) < order.index(s.name)
                    and self.plan.consumers.get(prod) == [s.name] and self.plan.steps[prod].type == "command"):
                out[s.name] = prod
                self._stream_seq += 1
                self.streams.append({"id": f"str-{self._stream_seq:03d}", "type": "remote-pipe", "from": prod,
                                     "to": [s.name], "readers": [s.name], "context": ctx,
                                     "bytes_transferred": None,
                                     "note": "joined on the remote host; bytes not counted"})
        return out

    def _wire_tee(self, tee: Step, pump: Pump, w: Wiring, procs: dict[str, Proc],
                  branch_of: dict[str, Branch]) -> None:
        ctx = self.plan.contexts[tee.name]
        for b in tee.branches:
            key = f"{tee.name}/{b.name}"
            branch_of[key] = b
            if self._builtin_branch(tee, b, pump.counter, pump.checksums):
                continue
            chain = self._branch_chain(tee, b, ctx)
            self._wire_chain(tee, chain, pump.add_sink(chain[0][0], b.on_exit), w, procs)

    def _builtin_branch(self, tee: Step, b: Branch, counter: Any, checksums: list[str]) -> bool:
        """Apply a checksum or progress branch to the stream's counter and checksums; False for others."""
        if b.kind == "checksum":
            if b.algorithm not in fastpipe.ALGORITHMS:
                raise GroupFailed(tee.name, f"branch {b.name!r}: unknown checksum algorithm "
                                  f"{b.algorithm!r} (known: {', '.join(fastpipe.ALGORITHMS)})")
            if b.algorithm not in checksums:
                checksums.append(b.algorithm)
            return True
        if b.kind == "progress":
            if b.size:
                size = templates.render(b.size, {**self.values, **self.variables}, shell=False)
                try:
                    counter.total = int(float(size))
                except ValueError:
                    self.console.note(f"warning: {tee.name}/{b.name}: size {size!r} is not a number of bytes")
            return True
        return False

    def _branch_chain(self, tee: Step, b: Branch, ctx: str) -> list[tuple[str, str, str | None, str]]:
        """A command or steps branch as (proc key, command, output, context) per stage."""
        key = f"{tee.name}/{b.name}"
        if b.kind == "command":
            return [(key, b.command or "", b.output, b.context or ctx)]
        return [(f"{key}/{ns.name}", ns.command or "", ns.output, ns.context or b.context or ctx) for ns in b.steps]

    def _wire_chain(self, tee: Step, chain: list[tuple[str, str, str | None, str]], stdin: int, w: Wiring,
                    procs: dict[str, Proc]) -> None:
        """Procs for a branch's stages: the first reads stdin, the last writes the branch's output."""
        prev: Proc | None = None
        for i, (k, cmd, output, bctx) in enumerate(chain):
            p = Proc(key=k, context=bctx, spec=self._spec(k, cmd, tee))
            if i == 0:
                p.stdin = stdin
            else:
                assert prev is not None
                prev.downstream.append(k)
                if p.context == prev.context and p.context in self.remote_contexts:
                    w.segment_of[k] = w.segment_of.get(prev.key, prev.key)  # piped on the remote host
                else:  # through a counting pump: sizes per stage (compression ratio) in the record
                    self._stream_seq += 1
                    link = Pump(id=f"str-{self._stream_seq:03d}", producer=prev.key, src=-1,
                                counter=fastpipe.Counter())
                    link.src, prev.stdout = os.pipe()
                    prev.feeds_pump = link
                    p.stdin = link.add_sink(k)
                    w.pumps.append(link)
            if i == len(chain) - 1:
                p.stdout = w.output_fd(k, output, self.console, prefix=self._prefix(k), direct=False)
            p.stderr = w.stderr_fd(k, self.console, prefix=self._prefix(k))
            procs[k] = p
            prev = p

    async def _start(self, seg: list[Proc], w: Wiring) -> list[ProcOutcome]:
        """Run a segment (one proc, several piped on one remote context, or a remote tee) on its target."""
        rt = w.remote_tees.get(w.segment_of.get(seg[0].key, seg[0].key))
        try:
            target = await self.targets(seg[0].context)
        except ClipipeError as exc:
            if isinstance(exc, TargetError):
                for proc in seg:
                    self.records[self._step_of(proc.key)].unreachable = True
            segment_io(seg).close()
            if rt is not None:
                SegmentIO(None, None, [b.fd for b in rt.branches]).close()
            return [ProcOutcome(name=p.key, error=str(exc), started=time.time(), ended=time.time()) for p in seg]
        if rt is not None:
            return await remote_tee.run(target, rt, seg, w)
        return await target.run_segment([p.spec for p in seg], segment_io(seg))

    async def _attempt(self, steps: list[Step]) -> None:
        """Start the group's processes and pumps, wait, and judge the outcome."""
        if len(steps) == 1 and steps[0].type in steptypes.TYPES:
            await steptypes.run(self, steps[0])
            return
        self.tee_placement.update(await remote_tee.place(self, steps))
        try:
            w, branch_of = self._wire(steps)
        except OSError as exc:
            raise GroupFailed(steps[0].name, f"can't set up pipes: {exc}") from exc
        started = time.time()
        for s in steps:
            self.records[s.name].started = started
        proc_tasks = {asyncio.ensure_future(self._start(seg, w)): seg for seg in w.segments()}
        pump_tasks = {asyncio.ensure_future(self._pump(p)): p for p in w.pumps}
        readers = asyncio.ensure_future(asyncio.gather(*(r.run() for r in w.readers)))
        blame: tuple[str, str] | None = None
        try:
            pending = set(proc_tasks) | set(pump_tasks)
            while pending and blame is None:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for t in done:
                    if t in proc_tasks:
                        rt = w.remote_tees.get(w.segment_of.get(proc_tasks[t][0].key, ""))
                        if blame is None and rt is not None and not t.exception():
                            blame = remote_tee.blame(rt)
                        for proc, outcome in zip(proc_tasks[t], t.result()):
                            proc.outcome = outcome
                            if blame is None and not outcome.ok and not self._maybe_sigpipe(outcome):
                                blame = (self._step_of(proc.key), self._describe_failure(proc, w))
                    else:
                        pump = pump_tasks[t]
                        pump_exc = t.exception()
                        if pump_exc is not None:
                            blame = (pump.producer, f"stream {pump.id} failed: {pump_exc}")
                        elif pump.result.failed is not None:
                            reader = pump.sink_keys[pump.result.failed]
                            if reader in branch_of:
                                blame = (self._step_of(reader), f"branch {branch_of[reader].name!r} stopped "
                                         f"reading early ({pump.result.sink_errors.get(pump.result.failed)})")
            if blame is not None:
                for t in proc_tasks:
                    t.cancel()
                await asyncio.gather(*proc_tasks, return_exceptions=True)
                w.close_all()
                await asyncio.gather(*pump_tasks, return_exceptions=True)
            for t, seg in proc_tasks.items():
                if t.done() and not t.cancelled() and t.exception() is None:
                    for p, outcome in zip(seg, t.result()):
                        p.outcome = p.outcome or outcome
            await readers
        except asyncio.CancelledError:
            for t in proc_tasks:
                t.cancel()
            await asyncio.gather(*proc_tasks, return_exceptions=True)
            w.close_all()
            await asyncio.gather(*pump_tasks, return_exceptions=True)
            readers.cancel()
            for s in steps:
                self.records[s.name].status = "cancelled"
                self.records[s.name].ended = time.time()
            for sink in w.sinks:
                sink.discard()
            raise
        finally:
            w.close_all()
        self._judge(steps, w, branch_of, blame)

    async def _pump(self, pump: Pump) -> Any:
        try:
            pump.result = await run_in_thread(pump.run_blocking)
        finally:
            if pump.result is None or pump.result.failed is None:
                pump.close_sinks()
            pump.close_src()  # a producer still writing (its reader quit) gets SIGPIPE
        return pump.result

    def _step_of(self, key: str) -> str:
        return key.split("/", 1)[0]

    @staticmethod
    def _maybe_sigpipe(o: ProcOutcome) -> bool:
        return o.signal == signal.SIGPIPE or o.exit_code == SIGPIPE_STATUS

    def _describe_failure(self, proc: Proc, w: Wiring) -> str:
        o = proc.outcome
        assert o is not None
        if o.error:
            return o.error
        what = f"killed by signal {o.signal}" if o.signal else f"exited with status {o.exit_code}"
        return f"{proc.key}: {what}" if "/" in proc.key else what

    def _sigpipe_ok(self, proc: Proc, outcomes: dict[str, ProcOutcome]) -> bool:
        """A SIGPIPE death is fine when a reader of this process stopped reading first."""
        if proc.feeds_pump is not None:
            r = proc.feeds_pump.result
            return r is not None and (bool(r.sink_errors) or r.failed is not None)
        return any(outcomes.get(k) is not None and outcomes[k].ok for k in proc.downstream)

    def _judge(self, steps: list[Step], w: Wiring, branch_of: dict[str, Branch],
               blame: tuple[str, str] | None) -> None:
        outcomes = {p.key: p.outcome for p in w.procs if p.outcome is not None}
        failure = blame
        for p in w.procs:
            o = p.outcome
            step = self._step_of(p.key)
            rec = self.records[step]
            if o is None:
                continue
            relay = w.relays.get(p.key)
            if "/" not in p.key:
                rec.exit_code, rec.signal = o.exit_code, o.signal
                rec.ended = o.ended or time.time()
                if relay:
                    rec.stderr_tail = list(relay.tail)
            if not o.ok:
                if self._maybe_sigpipe(o) and self._sigpipe_ok(p, outcomes):
                    if "/" not in p.key:
                        rec.note = "stopped early by its reader (SIGPIPE)"
                    continue
                if failure is None:
                    failure = (step, self._describe_failure(p, w))
                if "/" in p.key and relay:
                    rec.stderr_tail = list(relay.tail)
        for s in steps:
            rec = self.records[s.name]
            rec.ended = rec.ended or time.time()
            rt = next((r for r in w.remote_tees.values() if r.tee == s.name), None)
            if rt is not None:
                rec.branches = remote_tee.branch_results(self, s, rt, w, outcomes)
            elif s.type == "tee":
                rec.branches = self._branch_results(s, w, outcomes)
        for name, cap in w.captures.items():
            if cap.overflow and failure is None:
                failure = (self.plan.variables.get(name, steps[0].name),
                           f"output for variable {name!r} is larger than 16 MiB")
            self.variables[name] = cap.value
        for pump in w.pumps:
            self._record_stream(pump, w, branch_of)
        self.streams.extend(remote_tee.stream_entry(self, rt) for rt in w.remote_tees.values())
        for key, b in branch_of.items():
            if b.kind != "checksum":
                continue
            producer = self.plan.producer_of[self._step_of(key)]
            pump = next(p for p in [*w.pumps, *w.remote_tees.values()] if p.producer == producer)
            if pump.result and b.algorithm in pump.result.digests:
                var = b.output.split(":", 1)[1] if b.output and b.output.startswith("variable:") else b.name
                self.variables[var] = pump.result.digests[b.algorithm]
        for sink in w.sinks:
            if failure is None:
                sink.commit()
            else:
                sink.discard()
        failed_step = failure[0] if failure else None
        for s in steps:
            rec = self.records[s.name]
            if failed_step is None:
                rec.status = "ok"
            elif s.name == failed_step:
                rec.status = "failed"
                rec.error = failure[1] if failure else None
            else:
                rec.status = "cancelled" if blame else rec.status if rec.status != "running" else "ok"
        if failure is not None:
            raise GroupFailed(failure[0], failure[1])

    def _branch_results(self, tee: Step, w: Wiring, outcomes: dict[str, ProcOutcome]) -> list[dict[str, Any]]:
        pump = next((p for p in w.pumps if p.producer == self.plan.producer_of[tee.name]), None)
        out: list[dict[str, Any]] = []
        for b in tee.branches:
            key = f"{tee.name}/{b.name}"
            entry: dict[str, Any] = {"name": b.name, "kind": b.kind}
            if b.kind == "checksum" and pump and pump.result:
                entry["algorithm"] = b.algorithm
                entry["result"] = pump.result.digests.get(b.algorithm)
            elif b.kind == "progress" and pump and pump.counter:
                snap = pump.counter.snapshot()
                entry["metrics"] = {"total_bytes": snap.bytes, "average_speed": int(snap.avg_rate),
                                    "peak_speed": int(snap.peak_rate), "duration_ms": ms(snap.elapsed)}
            else:
                keys = [k for k in outcomes if k == key or k.startswith(key + "/")]
                codes = {k.rsplit("/", 1)[-1] if k != key else b.name: outcomes[k].exit_code for k in keys}
                entry["exit_codes"] = codes
                entry["status"] = "ok" if all(outcomes[k].ok for k in keys) else "failed"
                if pump and pump.result:
                    idx = [i for i, k in enumerate(pump.sink_keys) if k.startswith(key)]
                    if any(i in pump.result.dropped for i in idx):
                        entry["status"] = "dropped"
                if b.output and b.output.startswith("variable:"):
                    entry["variable"] = b.output.split(":", 1)[1]
                if b.kind == "steps" and pump and pump.result:
                    first = next((p for p in w.pumps if p.producer == f"{key}/{b.steps[0].name}"), None)
                    if first is not None and first.result is not None:
                        entry["bytes_in"], entry["bytes_out"] = pump.result.bytes, first.result.bytes
                        entry["stage"] = b.steps[0].command
                        if pump.result.bytes:
                            entry["ratio"] = round(first.result.bytes / pump.result.bytes, 4)
            out.append(entry)
        return out

    def _record_stream(self, pump: Pump, w: Wiring, branch_of: dict[str, Branch]) -> None:
        r = pump.result
        snap = pump.counter.snapshot() if pump.counter else None
        readers = list(dict.fromkeys(pump.sink_keys))
        entry: dict[str, Any] = {
            "id": pump.id, "type": pump.kind, "from": pump.producer,
            "to": self.plan.consumers.get(pump.producer, []),
            "readers": readers,
            "bytes_transferred": r.bytes if r else (snap.bytes if snap else 0),
            "duration_ms": ms(r.duration) if r else None,
        }
        if snap:
            entry["average_speed"] = int(snap.avg_rate)
            entry["peak_speed"] = int(snap.peak_rate)
        tee = next((t for t in entry["to"] if self.plan.steps[t].type == "tee"), None)
        if pump.kind == "tee" and tee is not None:
            entry["placement"] = "controller"
            if self.tee_placement.get(tee):
                entry["placement_reason"] = self.tee_placement[tee]
        if r:
            if r.digests:
                entry["checksums"] = dict(r.digests)
            if r.dropped:
                entry["dropped"] = [pump.sink_keys[i] for i in r.dropped]
            if r.sink_errors:
                entry["closed_early"] = {pump.sink_keys[i]: e for i, e in r.sink_errors.items()}
        self.streams.append(entry)


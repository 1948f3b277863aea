"""Tees placed on their producer's host: the producer chain, the fan-out and the host's branches as one
agent segment, so only progress, checksum and exit frames and the bytes that must leave the host cross
the wire (DESIGN.md, "The agent").

A tee runs there when its producer is a command step on the tee's own remote context, the tee is the
only reader of that stream, at most one branch reads it off the host (two would make the bytes cross
once per branch instead of once), and the context's target can (an agent with tee support; not the
raw-exec fallback, not a bulk segment forced onto the OpenSSH mux). Otherwise the controller's tee
(wiring.Pump) runs, and the stream's record says why. The results land where the controller's tee puts
them: `{{.checksum}}` variables, the step's `branches`, the `streams` entry, the live progress line.
"""
from __future__ import annotations

import asyncio
import hashlib
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from clipipe.engine.record import ms
from clipipe.engine.wiring import Proc, Wiring, close_fd
from clipipe.errors import ClipipeError
from clipipe.fastpipe import PumpResult
from clipipe.spec.model import Branch, Step
from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO
from clipipe.wire.session import SegmentStats
from clipipe.wire.tee import RemoteCounter, TeeBranch, TeeResult, TeeSpec

if TYPE_CHECKING:
    from clipipe.engine.runner import Runner

#: Set to 0 to keep every tee on the controller (to compare, or to spare a busy host the hashing).
ENV_SWITCH = "CLIPIPE_REMOTE_TEE"

#: Checksums every remote Python's hashlib has (the agent can't use the controller's xxhash).
REMOTE_ALGORITHMS = frozenset(hashlib.algorithms_guaranteed)


@runtime_checkable
class TeeTarget(Protocol):
    """A target that can run a tee segment on its host (AgentTarget, SSHTarget)."""

    def remote_tee_blocker(self, bulk: bool) -> str | None:
        """Why it can't now (None: it can); bulk: bytes would cross the wire in bulk."""

    async def run_tee_segment(self, procs: list[ProcSpec], io: SegmentIO, tee: TeeSpec,
                              counter: RemoteCounter | None = None) -> tuple[list[ProcOutcome], SegmentStats]:
        """Run the segment; outcomes in procs order, the tee's figures in SegmentStats.tee."""


@dataclass
class RemoteBranch:
    """A command or steps branch of a remote tee: its stages on the host, and where its bytes go."""

    key: str                        #: "tee/branch"
    name: str
    on_exit: str
    reader: str                     #: key of the first process reading the tee's stream for it
    host_keys: list[str] = field(default_factory=list)  #: its stages on the tee's host, in order
    fd: int | None = None           #: controller fd of its host chain's output, or of the raw stream
    hold: int | None = None         #: a dup of fd's pipe kept until we know the tee did not fail
    count_links: bool = False


@dataclass
class RemoteTee:
    """A tee run by the agent; `result` has the controller pump's shape (PumpResult) once it ended."""

    tee: str
    producer: str
    context: str
    id: str
    counter: RemoteCounter = field(default_factory=RemoteCounter)
    checksums: list[str] = field(default_factory=list)
    branches: list[RemoteBranch] = field(default_factory=list)
    kind: str = "tee"
    result: PumpResult | None = None
    tee_result: TeeResult | None = None
    wire: SegmentStats | None = None

    @property
    def sink_keys(self) -> list[str]:
        """The first reader of each branch, like Pump.sink_keys."""
        return [b.reader for b in self.branches]


# ---------------------------------------------------------------------------------------- placement
def _blocker(runner: Runner, tee: Step) -> str | None:
    """Why the plan alone keeps this tee on the controller (None: the target decides)."""
    plan = runner.plan
    ctx = plan.contexts[tee.name]
    producer = plan.producer_of[tee.name]
    if plan.contexts[producer] != ctx:
        return f"its producer {producer!r} runs on {plan.contexts[producer]!r}, not {ctx!r}"
    if plan.steps[producer].type != "command":
        return f"its producer {producer!r} is not a command step"
    if plan.consumers.get(producer) != [tee.name]:
        return f"the stream of {producer!r} has other readers"
    leaving = 0
    for b in tee.branches:
        if b.kind == "checksum" and b.algorithm not in REMOTE_ALGORITHMS:
            return f"checksum {b.algorithm!r} is not in every remote hashlib"
        if b.kind in ("command", "steps") and runner._branch_chain(tee, b, ctx)[0][3] != ctx:
            leaving += 1
    if leaving > 1:
        return f"{leaving} branches read the stream off {ctx!r}: through the controller it crosses once"
    return None


def _bulk(runner: Runner, tee: Step) -> bool:
    """True when bulk bytes would cross the wire: the producer chain reads a stream, or a branch leaves."""
    plan = runner.plan
    ctx = plan.contexts[tee.name]
    head = plan.producer_of[tee.name]
    while head in plan.producer_of:
        up = plan.producer_of[head]
        if (plan.contexts[up] != ctx or plan.consumers.get(up) != [head]
                or plan.steps[up].type != "command"):
            return True  # its stdin comes from a pump on the controller
        head = up
    return any(b.kind in ("command", "steps") and runner._branch_chain(tee, b, ctx)[0][3] != ctx
               for b in tee.branches)


async def place(runner: Runner, steps: list[Step]) -> dict[str, str | None]:
    """For each tee of the group on a remote context: None = on its producer's host, else why not."""
    out: dict[str, str | None] = {}
    candidates = [s for s in steps if s.type == "tee" and runner.plan.contexts[s.name] in runner.remote_contexts]
    if candidates:  # open the group's targets together, as its segments would (errors surface there)
        used = {runner.plan.contexts[s.name] for s in steps}
        used |= {stage[3] for t in candidates for b in t.branches if b.kind in ("command", "steps")
                 for stage in runner._branch_chain(t, b, runner.plan.contexts[t.name])}
        await asyncio.gather(*(runner.targets(c) for c in sorted(used)), return_exceptions=True)
    for s in candidates:
        why = _blocker(runner, s)
        if why is None and os.environ.get(ENV_SWITCH) == "0":
            why = f"{ENV_SWITCH}=0"
        if why is None:
            try:
                target = await runner.targets(runner.plan.contexts[s.name])
                boot = getattr(target, "ensure_agent", None)   # targets that boot their agent lazily
                if callable(boot):
                    await boot()
            except ClipipeError:
                why = "its context could not be opened"
            else:
                if isinstance(target, TeeTarget):
                    why = target.remote_tee_blocker(_bulk(runner, s))
                else:
                    why = f"{getattr(target, 'kind', 'this')} targets run no agent"
        out[s.name] = why
    return out


# ------------------------------------------------------------------------------------------- wiring
def wire(runner: Runner, tee: Step, w: Wiring, procs: dict[str, Proc], branch_of: dict[str, Branch]) -> RemoteTee:
    """Procs for the tee's branches: stages on the host join the producer's segment; the rest read fds."""
    ctx = runner.plan.contexts[tee.name]
    runner._stream_seq += 1
    rt = RemoteTee(tee=tee.name, producer=runner.plan.producer_of[tee.name], context=ctx,
                   id=f"str-{runner._stream_seq:03d}")
    for b in tee.branches:
        key = f"{tee.name}/{b.name}"
        branch_of[key] = b
        if runner._builtin_branch(tee, b, rt.counter, rt.checksums):
            continue
        chain = runner._branch_chain(tee, b, ctx)
        n_host = next((i for i, stage in enumerate(chain) if stage[3] != ctx), len(chain))
        host, rest = chain[:n_host], chain[n_host:]
        rb = RemoteBranch(key=key, name=b.name, on_exit=b.on_exit, reader=chain[0][0],
                          host_keys=[k for k, *_ in host], count_links=len(host) > 1)
        prev: Proc | None = None
        for i, (k, cmd, output, _) in enumerate(host):
            p = Proc(key=k, context=ctx, spec=runner._spec(k, cmd, tee))
            if prev is not None:
                prev.downstream.append(k)
            if i == len(host) - 1 and not rest:
                rb.fd = w.output_fd(k, output, runner.console, prefix=runner._prefix(k), direct=False)
            p.stderr = w.stderr_fd(k, runner.console, prefix=runner._prefix(k))
            procs[k] = p
            prev = p
        if rest:  # stages elsewhere read what leaves the host, through a pipe the session writes
            r, rb.fd = os.pipe()
            rb.hold = os.dup(rb.fd)
            w.loose_fds.append(rb.hold)
            if prev is not None:
                prev.downstream.append(rest[0][0])
            runner._wire_chain(tee, rest, r, w, procs)
        rt.branches.append(rb)
    if runner.progress is not None:
        runner.progress.add(rt.producer, rt.counter)
    return rt


def join(w: Wiring, procs: dict[str, Proc], tees: list[RemoteTee]) -> None:
    """Put each remote tee's host stages into its producer's segment (after every Proc exists)."""
    for rt in tees:
        producer = procs[rt.producer]
        producer.feeds_pump = rt  # duck-typed like a Pump: only .result is read
        seg_key = w.segment_of.get(rt.producer, rt.producer)
        for b in rt.branches:
            for k in b.host_keys:
                w.segment_of[k] = seg_key
        w.remote_tees[seg_key] = rt


async def run(target: Any, rt: RemoteTee, seg: list[Proc], w: Wiring) -> list[ProcOutcome]:
    """Run the segment by the target's agent; outcomes in seg's order, figures into rt."""
    branch_keys = {k for b in rt.branches for k in b.host_keys}
    order = [p for p in seg if p.key not in branch_keys]  # the producer chain, then each branch
    by_key = {p.key: p for p in seg}
    order += [by_key[k] for b in rt.branches for k in b.host_keys]
    index = {p.key: i for i, p in enumerate(order)}
    spec = TeeSpec(after=index[rt.producer], checksums=list(rt.checksums),
                   branches=[TeeBranch(procs=[index[k] for k in b.host_keys], fd=b.fd, on_exit=b.on_exit,
                                       count_links=b.count_links) for b in rt.branches])
    io = SegmentIO(stdin=order[0].stdin, stdout=None, stderr=[p.stderr for p in order])
    outcomes, stats = await target.run_tee_segment([p.spec for p in order], io, spec, counter=rt.counter)
    tr = stats.tee or TeeResult()
    rt.wire, rt.tee_result = stats, tr
    rt.result = PumpResult(bytes=tr.bytes, digests=dict(tr.digests), duration=tr.duration, mode="agent",
                           sink_errors={i: b.error for i, b in enumerate(tr.branches) if b.error},
                           dropped=[i for i, b in enumerate(tr.branches) if b.status == "dropped"],
                           failed=tr.failed)
    if tr.failed is None:  # the readers off the host may see their EOF now
        for b in rt.branches:
            if b.hold is not None and b.hold in w.loose_fds:
                w.loose_fds.remove(b.hold)
                close_fd(b.hold)
            b.hold = None
    got = {p.key: o for p, o in zip(order, outcomes)}
    return [got[p.key] for p in seg]


# ------------------------------------------------------------------------------------------- results
def blame(rt: RemoteTee) -> tuple[str, str] | None:
    """(step, message) when a branch under `on_branch_exit: fail` stopped the tee."""
    tr = rt.tee_result
    if tr is None or tr.failed is None or tr.failed >= len(rt.branches):
        return None
    why = tr.branches[tr.failed].error if tr.failed < len(tr.branches) else None
    return rt.tee, f"branch {rt.branches[tr.failed].name!r} stopped reading early ({why})"


def branch_results(runner: Runner, tee: Step, rt: RemoteTee, w: Wiring,
                   outcomes: dict[str, ProcOutcome]) -> list[dict[str, Any]]:
    """The step record's `branches`, as the controller's tee writes them, plus where each ran."""
    out: list[dict[str, Any]] = []
    by_key = {b.key: (i, b) for i, b in enumerate(rt.branches)}
    tr = rt.tee_result
    for b in tee.branches:
        key = f"{tee.name}/{b.name}"
        entry: dict[str, Any] = {"name": b.name, "kind": b.kind}
        if b.kind == "checksum":
            entry.update(algorithm=b.algorithm, result=rt.result.digests.get(b.algorithm) if rt.result else None,
                         placement="remote")
        elif b.kind == "progress":
            snap = rt.counter.snapshot()
            entry["metrics"] = {"total_bytes": snap.bytes, "average_speed": int(snap.avg_rate),
                                "peak_speed": int(snap.peak_rate), "duration_ms": ms(snap.elapsed)}
            entry["placement"] = "remote"
        else:
            i, rb = by_key[key]
            got = tr.branches[i] if tr and i < len(tr.branches) else None
            keys = [k for k in outcomes if k == key or k.startswith(key + "/")]
            entry["exit_codes"] = {k.rsplit("/", 1)[-1] if k != key else b.name: outcomes[k].exit_code for k in keys}
            entry["status"] = "ok" if all(outcomes[k].ok for k in keys) else "failed"
            if got is not None and got.status in ("dropped", "failed"):
                entry["status"] = got.status
            entry["placement"] = "remote" if rb.host_keys else "off-host"
            entry["context"] = runner._branch_chain(tee, b, rt.context)[0][3]
            if b.output and b.output.startswith("variable:"):
                entry["variable"] = b.output.split(":", 1)[1]
            if b.kind == "steps" and got is not None:
                stage_out = _first_stage_bytes(rb, got, w)
                entry["bytes_in"] = got.bytes
                if stage_out is not None:
                    entry["bytes_out"], entry["stage"] = stage_out, b.steps[0].command
                    if got.bytes:
                        entry["ratio"] = round(stage_out / got.bytes, 4)
        out.append(entry)
    return out


def _first_stage_bytes(rb: RemoteBranch, got: Any, w: Wiring) -> int | None:
    """What a steps branch's first stage wrote, where it was measured (agent link, wire, link pump)."""
    if got.links:
        return int(got.links[0])
    if len(rb.host_keys) == 1:
        return int(got.wire_bytes)
    first = next((p for p in w.pumps if p.producer == rb.reader), None)
    return first.result.bytes if first is not None and first.result is not None else None


def stream_entry(runner: Runner, rt: RemoteTee) -> dict[str, Any]:
    """The `streams` record of a remote tee: the controller's fields, where it ran, what crossed the wire."""
    r = rt.result
    snap = rt.counter.snapshot()
    entry: dict[str, Any] = {
        "id": rt.id, "type": "tee", "from": rt.producer,
        "to": runner.plan.consumers.get(rt.producer, []), "readers": rt.sink_keys,
        "placement": "remote", "context": rt.context,
        "bytes_transferred": r.bytes if r else snap.bytes,
        "duration_ms": ms(r.duration) if r else None,
        "average_speed": int(snap.avg_rate), "peak_speed": int(snap.peak_rate),
    }
    if r:
        if r.digests:
            entry["checksums"] = dict(r.digests)
        if r.dropped:
            entry["dropped"] = [rt.sink_keys[i] for i in r.dropped if i < len(rt.sink_keys)]
        if r.sink_errors:
            entry["closed_early"] = {rt.sink_keys[i]: e for i, e in r.sink_errors.items() if i < len(rt.sink_keys)}
    if rt.wire is not None:
        entry["wire"] = {"path": "agent-tee", "bytes_in": rt.wire.bytes_in, "bytes_out": rt.wire.bytes_out,
                         "stderr_bytes": sum(rt.wire.stderr_bytes)}
    return entry

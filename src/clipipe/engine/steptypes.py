"""Steps that are not shell commands: `port-forward`, `cleanup` and `transfer`.

    - name: setup-portforward          # a background forward, up once it answers
      context: k8s-prod
      type: port-forward
      service: minio                   # or pod: NAME (kubernetes); address: HOST (ssh, default 127.0.0.1)
      ports: "9000:9000"               # LOCAL:REMOTE, REMOTE (same local port), 0:REMOTE (any), or a list
    - name: mirror-bucket
      command: "mc mirror --insecure http://{{.setup-portforward.address}}/{{.bucket}} ./backup/"
      depends_on: setup-portforward
    - name: cleanup
      type: cleanup
      stop: setup-portforward          # a name or a list
    - name: upload
      type: transfer
      source: ./backup/                # clipipe transfer SRC DST, as a step
      destination: "backup-server:/backups/{{.date}}/"

A port-forward step succeeds when its forwards are listening and probed; they stay up (probed, and
reconnected with back-off: `clipipe.targets.portforward`) until a cleanup step stops them or the run
ends, whatever happens. Its local address is a template value: `{{.NAME.host}}`, `{{.NAME.port}}`,
`{{.NAME.address}}` (`host:port` of the first forward) and `{{.NAME.ports}}` (every local port). The
plan makes a cleanup step wait for the forwards it stops and for everything that depends on them, and
a cleanup step runs even when those failed.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from clipipe.errors import ClipipeError
from clipipe.spec import templates
from clipipe.spec.parse import port_pairs
from clipipe.spec.model import Step

if TYPE_CHECKING:
    from clipipe.engine.runner import Runner

#: The step types this module runs.
TYPES = ("port-forward", "cleanup", "transfer")


def _render(runner: Runner, step: Step, value: Any) -> str:
    return templates.render(str(value), {**runner.values, **runner.variables}, shell=False, mark=step.mark)


async def run(runner: Runner, step: Step) -> None:
    """Run one non-command step; record it; raise GroupFailed (from the runner) on failure."""
    from clipipe.engine.runner import GroupFailed

    rec = runner.records[step.name]
    rec.started = time.time()
    try:
        if step.type == "port-forward":
            await _port_forward(runner, step)
        elif step.type == "cleanup":
            await stop_forwards(runner, step.stops, rec)
        else:
            await _transfer(runner, step)
    except ClipipeError as exc:
        rec.ended = time.time()
        rec.status, rec.error = "failed", exc.message + (f" (hint: {exc.hint})" if exc.hint else "")
        raise GroupFailed(step.name, rec.error) from exc
    rec.ended = time.time()
    rec.status = "ok"


async def _port_forward(runner: Runner, step: Step) -> None:
    from clipipe.targets.portforward import open_forward

    o = step.options
    ctx = runner.plan.contexts[step.name]
    # a forward needs the context's connection, not its agent (nor, on kubernetes, a pod of its own)
    target = runner.make_target(ctx) if runner.make_target is not None else await runner.targets(ctx)
    where: dict[str, Any] = {}
    if getattr(target, "kind", "") == "kubernetes":
        for key in ("pod", "service"):
            if o.get(key):
                where[key] = _render(runner, step, o[key])
    elif o.get("address"):
        where["remote_host"] = _render(runner, step, o["address"])
    pairs = port_pairs(o.get("ports"))
    started = []
    try:
        for local, remote in pairs:
            fwd = open_forward(target, remote, local, **where)
            await fwd.start()
            started.append(fwd)
    except BaseException:
        for fwd in started:
            await fwd.stop()
        raise
    runner.forwards[step.name] = started
    first = started[0]
    runner.values[step.name] = {"host": first.host, "port": first.port, "address": f"{first.host}:{first.port}",
                                "ports": [f.port for f in started]}
    runner.records[step.name].note = ", ".join(f"{f.host}:{f.port} -> {ctx}:{r}"
                                               for f, (_, r) in zip(started, pairs))
    runner.console.note(f"⇄ {step.name}: {runner.records[step.name].note}")


async def stop_forwards(runner: Runner, names: list[str], rec: Any = None) -> None:
    """Stop the forwards of these port-forward steps (those not up are skipped)."""
    stopped = []
    for name in names:
        for fwd in runner.forwards.pop(name, []):
            runner.forward_stats.append({"step": name, "local": f"{fwd.host}:{fwd.port}",
                                         "connections": fwd.connections, "reconnects": fwd.reconnects,
                                         "bytes_up": fwd.bytes_up, "bytes_down": fwd.bytes_down})
            await fwd.stop()
            stopped.append(name)
    if rec is not None:
        rec.note = f"stopped {', '.join(dict.fromkeys(stopped))}" if stopped else "nothing was running"


async def close_all(runner: Runner) -> None:
    """At the end of a run: every forward still up is stopped."""
    await stop_forwards(runner, list(runner.forwards))


async def _transfer(runner: Runner, step: Step) -> None:
    from clipipe.engine import transfer
    from clipipe.errors import TransferError

    o = step.options
    pool_contexts = getattr(runner, "contexts", None)
    src = transfer.parse_endpoint(_render(runner, step, o.get("source") or o.get("src")), pool_contexts)
    dst = transfer.parse_endpoint(_render(runner, step, o.get("destination") or o.get("dst")), pool_contexts)

    async def target_of(ep: transfer.Endpoint) -> Any:
        name = ep.context
        if ep.pod is not None and pool_contexts is not None:
            name = pool_contexts.variant(ep.context, ep.pod, pod=ep.pod)
        return await runner.targets(name)

    job = transfer.Job(src, dst)
    if runner.progress is not None:
        runner.progress.add(step.name, job.counter)
    await transfer.run_job(job, target_of)
    runner.transfers.append({"step": step.name, **job.to_json()})
    runner.records[step.name].note = f"{job.bytes} bytes, sha256 {job.sha256}" if job.status == "ok" else None
    if job.status != "ok":
        raise TransferError(job.error or f"transfer {job.status}")

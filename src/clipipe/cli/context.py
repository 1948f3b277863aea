"""`clipipe context list|show|test`: what contexts exist, how they are set, whether they answer."""
from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import click

from clipipe.errors import AuthError, ClipipeError, HostKeyError, TargetError, UnreachableError, UserError
from clipipe.targets.contexts import Contexts, load_contexts

#: Seconds `context list` waits for each target: a list should come back fast even with dead hosts.
LIST_TIMEOUT = 3.0

#: Exit status of `context test` when the target can't be used (as TargetError says).
EXIT_UNREACHABLE = 3


def _contexts_path() -> str | None:
    """The root group's `--contexts` option, if the root group has one."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    obj = ctx.find_root().obj
    return obj.get("contexts_path") if isinstance(obj, dict) else None


def _load() -> Contexts:
    try:
        return load_contexts(_contexts_path())
    except UserError as exc:
        _fail(exc)
        raise  # unreachable


def _fail(exc: ClipipeError) -> None:
    """Print one line (and a hint) and exit with the error's status."""
    click.echo(f"error: {exc}", err=True)
    if exc.hint:
        click.echo(f"hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def status_of(exc: BaseException | None) -> str:
    """The STATUS column for a probe outcome."""
    if exc is None:
        return "ready"
    if isinstance(exc, AuthError):
        return "auth failed"
    if isinstance(exc, HostKeyError):
        return "host key unknown" if "unknown" in exc.message else "host key changed"
    if isinstance(exc, UnreachableError):
        return f"unreachable: {exc.message}"
    # reached, but can't be used (a kubernetes pod that is missing, an ssh protocol error)
    return f"error: {exc.message if isinstance(exc, ClipipeError) else exc}"


async def probe(contexts: Contexts, name: str, timeout: float) -> str:
    """Reachability of one context: connect (and authenticate) only, no agent."""
    d = contexts.get(name)
    if d.type == "local":
        return "ready"
    try:
        target = contexts.make_target(name)
    except ClipipeError as exc:
        return status_of(exc)
    connect = getattr(target, "connect", None) or target.open
    try:
        await asyncio.wait_for(connect(), timeout)
        detail = getattr(target, "status_detail", None)   # e.g. which pod a kubernetes context found
        return f"ready ({detail()})" if callable(detail) and detail() else "ready"
    except asyncio.TimeoutError:
        return f"unreachable: no answer within {timeout:g}s"
    except ClipipeError as exc:
        return status_of(exc)
    except Exception as exc:  # noqa: BLE001 - a status column must not crash the listing
        return f"error: {exc}"


async def probe_all(contexts: Contexts, timeout: float) -> dict[str, str]:
    """Probe every context concurrently; close the targets only at the end (jumps share them)."""
    names = contexts.names()
    try:
        results = await asyncio.gather(*(probe(contexts, n, timeout) for n in names))
    finally:
        try:
            await asyncio.wait_for(contexts.close_all(), timeout + 5)
        except asyncio.TimeoutError:
            pass
    return dict(zip(names, results))


@click.group("context")
def context() -> None:
    """List, inspect and test the contexts of contexts.yaml."""


@context.command("list")
@click.option("--json", "as_json", is_flag=True, help="print JSON instead of a table")
@click.option("--timeout", default=LIST_TIMEOUT, show_default=True, help="seconds per reachability check")
@click.option("--no-check", is_flag=True, help="don't connect; STATUS shows '-'")
def list_cmd(as_json: bool, timeout: float, no_check: bool) -> None:
    """NAME TYPE DEFAULT STATUS for every context (STATUS from a real, concurrent connect)."""
    contexts = _load()
    statuses = ({n: "-" for n in contexts.names()} if no_check
                else asyncio.run(probe_all(contexts, timeout)))
    rows = [{"name": n, "type": contexts.get(n).type, "default": n == contexts.default_name,
             "status": statuses[n]} for n in contexts.names()]
    if as_json:
        click.echo(json.dumps({"source": contexts.source, "contexts": rows,
                               "groups": contexts.groups}, indent=2))
        return
    headers = ("NAME", "TYPE", "DEFAULT", "STATUS")
    table: list[tuple[str, str, str, str]] = [
        (str(r["name"]), str(r["type"]), "✓" if r["default"] else "", str(r["status"])) for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in table)) for i, h in enumerate(headers[:3])]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers[:3], widths)) + "  " + headers[3])
    for row in table:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row[:3], widths)) + "  " + row[3])


@context.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show_cmd(name: str, as_json: bool) -> None:
    """The settings of context NAME (secrets masked) and where it was defined."""
    contexts = _load()
    try:
        d = contexts.get(name)
    except UserError as exc:
        _fail(exc)
        return
    info: dict[str, Any] = {"name": d.name, "type": d.type, "default": d.name == contexts.default_name,
                            "source": str(d.mark) if d.mark else contexts.source,
                            "settings": d.masked_settings()}
    groups = [g for g, members in contexts.groups.items() if d.name in members]
    if groups:
        info["groups"] = groups
    if as_json:
        click.echo(json.dumps(info, indent=2, default=str))
        return
    click.echo(f"{d.name} ({d.type}){'  [default]' if info['default'] else ''}")
    click.echo(f"  defined at: {info['source']}")
    if groups:
        click.echo(f"  groups: {', '.join(groups)}")
    for k, v in info["settings"].items():
        click.echo(f"  {k}: {v if v is not None else '-'}")


async def _test(contexts: Contexts, name: str) -> dict[str, Any]:
    target = contexts.make_target(name)
    t0 = time.monotonic()
    try:
        boot = getattr(target, "ensure_agent", None) or target.open   # the test boots the agent too
        await boot()
        total = time.monotonic() - t0
        d = target.describe()
        d["open_seconds"] = round(total, 4)
        return d
    finally:
        await target.close()


@context.command("test")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def test_cmd(name: str, as_json: bool) -> None:
    """Connect to NAME, boot the agent, print its HELLO and the connect time (exit 3 on failure)."""
    contexts = _load()
    try:
        contexts.get(name)
        d = asyncio.run(_test(contexts, name))
    except UserError as exc:
        _fail(exc)
        return
    except ClipipeError as exc:
        click.echo(f"{name}: FAILED: {exc.message}", err=True)
        if exc.hint:
            click.echo(f"hint: {exc.hint}", err=True)
        sys.exit(EXIT_UNREACHABLE)
    if as_json:
        click.echo(json.dumps(d, indent=2, default=str))
        return
    click.echo(f"{name}: ok")
    if "connect_seconds" in d:
        click.echo(f"  connect: {d['connect_seconds'] * 1000:.0f} ms "
                   f"(with agent boot: {d['open_seconds'] * 1000:.0f} ms)")
    for k in ("address", "transport", "pod_from", "exec_protocol", "fallback"):
        if d.get(k):
            click.echo(f"  {k}: {d[k]}")
    agent = d.get("agent") or {}
    for k in ("version", "protocol", "python", "platform", "hostname", "pid", "cwd"):
        if k in agent:
            click.echo(f"  agent.{k}: {agent[k]}")

"""`clipipe validate`, `clipipe graph`, `clipipe explain`: look at pipelines without running them."""
from __future__ import annotations

import click

from clipipe.engine.operation import BUILTIN_NAMES, TargetPool
from clipipe.plan import draw
from clipipe.plan.dag import build_plan
from clipipe.spec import parse


def _plan(path: str, context: str | None):  # type: ignore[no-untyped-def]
    doc, pipeline = parse.load_pipeline(path)
    if pipeline is None:
        return doc, None
    pool = TargetPool(click.get_current_context().find_root().obj.get("contexts_path"))
    plan = build_plan(pipeline, default_context=context or pool.default_name(),
                      known_values=list(BUILTIN_NAMES))
    return doc, plan


@click.command()
@click.argument("pipeline", metavar="PIPELINE.yaml", nargs=-1, required=True)
@click.option("-c", "--context", metavar="CONTEXT", help="The default context to plan for.")
def validate(pipeline: tuple[str, ...], context: str | None) -> int:
    """Check pipeline files: syntax, schema, references, cycles. Exit 2 on the first error."""
    for path in pipeline:
        doc, plan = _plan(path, context)
        if plan is None:
            from clipipe import records

            rp = records.load(doc, path=path, params=_record_params(doc, path))
            click.echo(f"{path}: ok (record pipeline {rp.name!r})")
            continue
        click.echo(f"{path}: ok ({len(plan.steps)} steps, {len(plan.levels)} levels)")
        for w in plan.warnings:
            click.echo(f"{path}: warning: {w}")
    return 0


def _record_params(doc, path):  # type: ignore[no-untyped-def]
    """Defaults of a record pipeline's params, for validation only."""
    from clipipe.spec import params as params_mod
    from clipipe.spec.model import Pipeline
    from clipipe.spec.parse import parse_param, unwrap

    node = unwrap(doc, path)
    pnode = node.get("params") or {}
    shell = Pipeline(name=str(node.get("name") or path), steps=[],
                     params={str(k): parse_param(str(k), v, None) for k, v in pnode.items()}, path=path)
    for p in shell.params.values():
        if p.default is None:
            p.required, p.default = False, ""
    return params_mod.resolve(shell, {}, params_mod.builtins(shell.name, "validate"))


@click.command()
@click.argument("pipeline", metavar="PIPELINE.yaml")
@click.option("-f", "--format", "fmt", type=click.Choice(["text", "dot", "mermaid"]), default="text",
              show_default=True, help="text: levels and streams; dot: Graphviz; mermaid: a flowchart.")
@click.option("-c", "--context", metavar="CONTEXT", help="The default context to plan for.")
def graph(pipeline: str, fmt: str, context: str | None) -> int:
    """Draw the plan of a pipeline: what runs together, in which order, where."""
    _doc, plan = _plan(pipeline, context)
    if plan is None:
        raise click.UsageError("graph draws command pipelines; this is a record pipeline")
    click.echo({"text": draw.to_text, "dot": draw.to_dot, "mermaid": draw.to_mermaid}[fmt](plan))
    return 0


@click.command()
@click.argument("component", required=False, metavar="[KIND/]TYPE")
def explain(component: str | None) -> int:
    """Describe a record component: fields, defaults, examples. Without TYPE: list them all.

    \b
    Examples:
      clipipe explain              # every source, step and output type
      clipipe explain http         # the http source
      clipipe explain output/file  # when a name is both a source and an output
    """
    from clipipe.errors import UserError
    from clipipe.records import registry

    table = {kind: registry.components(kind) for kind in registry.KINDS}
    if component is None:
        for kind, comps in table.items():
            click.echo(f"{kind}s:")
            for name, cls in sorted(comps.items()):
                click.echo(f"  {name:<12} {cls.summary}")
        click.echo("blocks:\n  realtime     The realtime: block (dedup, upsert) of a type: realtime pipeline.")
        return 0
    if component == "realtime":
        from clipipe.records import realtime
        click.echo(realtime.explain())
        return 0
    kind, _, name = component.rpartition("/")
    matches = [k for k in table if name in table[k] and (not kind or k == kind)]
    if not matches:
        known = ", ".join(sorted({n for comps in table.values() for n in comps}))
        raise UserError(f"no record component {component!r} (known: {known})")
    for i, k in enumerate(matches):
        if i:
            click.echo("")
        click.echo(registry.explain(k, name))
    return 0

"""Drawing a plan: plain text levels, Graphviz DOT, Mermaid."""
from __future__ import annotations

from clipipe.plan.dag import Plan
from clipipe.spec.model import Step

_EDGE_STYLE = {"stream": "==>", "depends": "-->", "variable": "-.->"}


def _label(step: Step) -> str:
    if step.type == "tee":
        return f"{step.name} (tee: {', '.join(b.name for b in step.branches)})"
    if step.command:
        cmd = step.command if len(step.command) <= 48 else step.command[:45] + "..."
        return f"{step.name}: {cmd}"
    return f"{step.name} ({step.type})"


def to_text(plan: Plan) -> str:
    """Levels of groups, each step with its context and where its bytes go."""
    lines = [f"pipeline {plan.pipeline.name}: {len(plan.steps)} steps, {len(plan.groups)} groups, "
             f"{len(plan.levels)} levels"]
    for li, level in enumerate(plan.levels, 1):
        lines.append(f"level {li}:")
        for gid in level:
            names = plan.groups[gid].steps
            prefix = "  stream group: " if len(names) > 1 else "  "
            if len(names) > 1:
                lines.append(prefix + " | ".join(names))
            for n in names:
                s = plan.steps[n]
                after = plan.upstream(n)
                extra = f"  (after {', '.join(after)})" if after else ""
                indent = "    " if len(names) > 1 else "  "
                lines.append(f"{indent}[{plan.contexts[n]}] {_label(s)}{extra}")
                for c in plan.consumers.get(n, []):
                    lines.append(f"{indent}  ==> {c}")
                for b in s.branches:
                    what = b.command or (f"{b.kind} {b.algorithm}" if b.kind == "checksum" else b.kind)
                    if b.kind == "steps":
                        what = " | ".join(x.command or x.name for x in b.steps)
                    out = f" -> {b.output}" if b.output else ""
                    lines.append(f"{indent}  ├─ {b.name}: {what}{out}")
    for w in plan.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _id(name: str) -> str:
    return '"' + name.replace('"', '\\"') + '"'


def to_dot(plan: Plan) -> str:
    """Graphviz DOT: streams bold, depends_on solid, variables dashed; stream groups as clusters."""
    out = [f"digraph {_id(plan.pipeline.name)} {{", "  rankdir=LR;", "  node [shape=box];"]
    for g in plan.groups:
        if len(g.steps) > 1:
            out.append(f"  subgraph cluster_{g.id} {{ style=dashed; label=\"stream group {g.id}\";")
            out.extend(f"    {_id(n)};" for n in g.steps)
            out.append("  }")
    for n, s in plan.steps.items():
        out.append(f"  {_id(n)} [label={_id(_label(s) + chr(10) + '@' + plan.contexts[n])}];")
        for b in s.branches:
            bid = f"{n}/{b.name}"
            out.append(f"  {_id(bid)} [label={_id(b.name)}, shape=ellipse];")
            out.append(f"  {_id(n)} -> {_id(bid)} [style=bold];")
    style = {"stream": "bold", "depends": "solid", "variable": "dashed"}
    for e in plan.edges:
        out.append(f"  {_id(e.src)} -> {_id(e.dst)} [style={style[e.kind]}];")
    out.append("}")
    return "\n".join(out)


def _mid(name: str) -> str:
    return "n_" + "".join(c if c.isalnum() else "_" for c in name)


def to_mermaid(plan: Plan) -> str:
    """Mermaid flowchart: `==>` streams, `-->` depends_on, `-.->` variables."""
    out = ["flowchart LR"]
    for n, s in plan.steps.items():
        label = _label(s).replace('"', "'")
        out.append(f'  {_mid(n)}["{label} @{plan.contexts[n]}"]')
        for b in s.branches:
            out.append(f'  {_mid(n + "/" + b.name)}(["{b.name}"])')
            out.append(f"  {_mid(n)} ==> {_mid(n + '/' + b.name)}")
    for e in plan.edges:
        out.append(f"  {_mid(e.src)} {_EDGE_STYLE[e.kind]} {_mid(e.dst)}")
    return "\n".join(out)

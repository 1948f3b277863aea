"""The plan: which steps run together (joined by streams), in which order, on which context. Pure.

Steps joined by a stream (`output: stream` + `input: pipe`, `output: NAME` + `input: NAME`) must run
at the same time, so they form a *group*. Ordering edges (`depends_on`, and the implicit edge from a
step that captures `output: variable:NAME` to every step whose command uses `{{.NAME}}`) order the
groups; groups are scheduled in topological *levels* (everything in a level may run in parallel).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from clipipe.errors import PlanError
from clipipe.spec import templates
from clipipe.spec.model import Pipeline, Step


@dataclass
class Edge:
    """A relation between two top-level steps."""

    src: str
    dst: str
    kind: str  #: "stream" (run together, bytes flow src->dst), "depends" or "variable" (src first)


@dataclass
class Group:
    """Steps joined by streams; they start together and the group ends when all have ended."""

    id: int
    steps: list[str]


@dataclass
class Plan:
    """Everything the engine needs to schedule a pipeline, computed without I/O."""

    pipeline: Pipeline
    steps: dict[str, Step]
    edges: list[Edge]
    groups: list[Group]
    levels: list[list[int]]                 #: group ids per level, in order
    group_of: dict[str, int]
    producer_of: dict[str, str]             #: consumer step -> the step whose stream it reads
    consumers: dict[str, list[str]]         #: producer step -> consumers of its stream, in file order
    variables: dict[str, str]               #: variable name -> step that captures it
    contexts: dict[str, str]                #: step -> context name it runs on
    warnings: list[str] = field(default_factory=list)

    def upstream(self, name: str) -> list[str]:
        """Steps that must have finished before `name`'s group starts."""
        return list(dict.fromkeys(e.src for e in self.edges if e.dst == name and e.kind != "stream"))


def _variables(pipeline: Pipeline) -> dict[str, str]:
    out: dict[str, str] = {}
    for s in pipeline.steps:
        names = [s.variable] if s.variable else []
        if s.type == "port-forward":
            names.append(s.name)            # {{.NAME.port}}, {{.NAME.address}}: its local end
        for b in s.branches:
            if b.output and b.output.startswith("variable:"):
                names.append(b.output.split(":", 1)[1])
            elif b.kind == "checksum":
                names.append(b.name)
            for ns in b.steps:
                if ns.variable:
                    names.append(ns.variable)
        for v in names:
            if v in out and out[v] != s.name:
                raise PlanError(f"variable {v!r} is captured by both {out[v]!r} and {s.name!r}", mark=s.mark)
            out[v] = s.name
    return out


def _commands(step: Step) -> Iterable[str]:
    if step.command:
        yield step.command
    for b in step.branches:
        if b.command:
            yield b.command
        if b.size:
            yield b.size
        for ns in b.steps:
            if ns.command:
                yield ns.command
            if ns.output and ns.output.startswith("file:"):
                yield ns.output
        if b.output and b.output.startswith("file:"):
            yield b.output
    if step.output and step.output.startswith("file:"):
        yield step.output
    for v in step.env.values():
        yield v
    if step.cwd:
        yield step.cwd


def _stream_edges(pipeline: Pipeline) -> list[Edge]:
    by_stream: dict[str, str] = {}
    for s in pipeline.steps:
        sn = s.stream_name
        if sn:
            if sn in by_stream:
                raise PlanError(f"stream {sn!r} is produced by both {by_stream[sn]!r} and {s.name!r}",
                                mark=s.mark)
            by_stream[sn] = s.name
    edges: list[Edge] = []
    for i, s in enumerate(pipeline.steps):
        if s.input is None:
            if s.type == "tee":
                raise PlanError(f"tee step {s.name!r} needs an input (input: pipe or input: NAME)", mark=s.mark)
            continue
        if s.input == "pipe":
            if i == 0:
                raise PlanError(f"step {s.name!r} reads 'input: pipe' but is the first step", mark=s.mark)
            prev = pipeline.steps[i - 1]
            if not prev.stream_name:
                raise PlanError(f"step {s.name!r} reads 'input: pipe' but the step before it, {prev.name!r}, "
                                "has no 'output: stream'", mark=s.mark,
                                hint=f"add 'output: stream' to {prev.name!r}")
            edges.append(Edge(prev.name, s.name, "stream"))
        else:
            src = by_stream.get(s.input)
            if src is None:
                known = ", ".join(sorted(by_stream)) or "none"
                raise PlanError(f"step {s.name!r} reads stream {s.input!r}, which no step produces "
                                f"(streams: {known})", mark=s.mark)
            if src == s.name:
                raise PlanError(f"step {s.name!r} reads its own output", mark=s.mark)
            edges.append(Edge(src, s.name, "stream"))
    return edges


def _cleanup_edges(pipeline: Pipeline, steps: dict[str, Step], edges: list[Edge]) -> list[Edge]:
    """A cleanup step waits for the steps it stops and for every step that depends on those."""
    succ: dict[str, list[str]] = {}
    for e in edges:
        succ.setdefault(e.src, []).append(e.dst)
    out: list[Edge] = []
    for s in pipeline.steps:
        if s.type != "cleanup":
            continue
        todo = s.stops
        for name in todo:
            if name not in steps:
                raise PlanError(f"step {s.name!r}: stop: {name!r} is not a step of the pipeline", mark=s.mark)
        seen: set[str] = set()
        while todo:
            n = todo.pop()
            if n in seen or n == s.name:
                continue
            seen.add(n)
            out.append(Edge(n, s.name, "cleanup"))
            todo.extend(succ.get(n, []))
    return out


def find_cycle(nodes: Iterable[str], succ: dict[str, list[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative DFS, safe for deep graphs)."""
    color: dict[str, int] = {}
    for root in nodes:
        if color.get(root):
            continue
        stack: list[tuple[str, int]] = [(root, 0)]
        path: list[str] = []
        color[root] = 1
        path.append(root)
        while stack:
            node, idx = stack[-1]
            nexts = succ.get(node, [])
            if idx < len(nexts):
                stack[-1] = (node, idx + 1)
                nxt = nexts[idx]
                c = color.get(nxt, 0)
                if c == 1:
                    return path[path.index(nxt):] + [nxt]
                if c == 0:
                    color[nxt] = 1
                    path.append(nxt)
                    stack.append((nxt, 0))
            else:
                color[node] = 2
                path.pop()
                stack.pop()
    return None


def build_plan(pipeline: Pipeline, *, default_context: str = "local",
               known_values: Iterable[str] = ()) -> Plan:
    """Validate cross-step references and compute groups, levels and contexts."""
    steps = {s.name: s for s in pipeline.steps}
    edges = _stream_edges(pipeline)
    for s in pipeline.steps:
        for dep in s.depends_on:
            if dep not in steps:
                raise PlanError(f"step {s.name!r} depends on unknown step {dep!r} "
                                f"(steps: {', '.join(steps)})", mark=s.depends_marks.get(dep, s.mark))
            if dep == s.name:
                raise PlanError(f"step {s.name!r} depends on itself", mark=s.depends_marks.get(dep, s.mark))
            edges.append(Edge(dep, s.name, "depends"))
    variables = _variables(pipeline)
    known = set(known_values) | set(pipeline.params) | set(variables)
    for s in pipeline.steps:
        for text in _commands(s):
            for ref in templates.references(text):
                if ref not in known:
                    raise PlanError(f"step {s.name!r} uses {{{{.{ref}}}}}, which is not a param, a built-in "
                                    f"or a captured variable", mark=s.mark)
                if ref in variables and variables[ref] != s.name:
                    edges.append(Edge(variables[ref], s.name, "variable"))
    edges += _cleanup_edges(pipeline, steps, edges)
    succ_set: dict[str, dict[str, None]] = {n: {} for n in steps}  # ordered sets: hubs stay O(1)
    for e in edges:
        succ_set[e.src][e.dst] = None
    succ = {n: list(d) for n, d in succ_set.items()}
    cycle = find_cycle(steps, succ)
    if cycle:
        raise PlanError(f"dependency cycle: {' -> '.join(cycle)}", mark=steps[cycle[0]].mark)

    producer_of = {e.dst: e.src for e in edges if e.kind == "stream"}
    consumers: dict[str, list[str]] = {}
    for e in edges:
        if e.kind == "stream":
            consumers.setdefault(e.src, []).append(e.dst)
    group_of = _group(pipeline, producer_of)
    groups = _groups(pipeline, group_of)
    levels = _levels(pipeline, edges, group_of, groups, steps)

    contexts: dict[str, str] = {}
    for s in pipeline.steps:
        contexts[s.name] = s.context or pipeline.context or default_context
    warnings = [f"step {s.name!r} has 'output: {s.output}' but no step reads it; its output is shown"
                for s in pipeline.steps if s.stream_name and s.name not in consumers
                and s.output == "stream"]
    return Plan(pipeline=pipeline, steps=steps, edges=edges, groups=groups, levels=levels,
                group_of=group_of, producer_of=producer_of, consumers=consumers, variables=variables,
                contexts=contexts, warnings=warnings)


def _group(pipeline: Pipeline, producer_of: dict[str, str]) -> dict[str, int]:
    parent = {s.name: s.name for s in pipeline.steps}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for dst, src in producer_of.items():
        parent[find(dst)] = find(src)
    ids: dict[str, int] = {}
    out: dict[str, int] = {}
    for s in pipeline.steps:
        root = find(s.name)
        out[s.name] = ids.setdefault(root, len(ids))
    return out


def _groups(pipeline: Pipeline, group_of: dict[str, int]) -> list[Group]:
    groups: list[Group] = [Group(i, []) for i in range(max(group_of.values()) + 1)]
    for s in pipeline.steps:
        groups[group_of[s.name]].steps.append(s.name)
    return groups


def _levels(pipeline: Pipeline, edges: list[Edge], group_of: dict[str, int], groups: list[Group],
            steps: dict[str, Step]) -> list[list[int]]:
    gsucc: dict[int, set[int]] = {g.id: set() for g in groups}
    indeg = {g.id: 0 for g in groups}
    why: dict[tuple[int, int], Edge] = {}
    for e in edges:
        if e.kind == "stream":
            continue
        a, b = group_of[e.src], group_of[e.dst]
        if a == b:
            if e.kind == "variable":
                raise PlanError(f"step {e.dst!r} uses a variable captured by {e.src!r}, but the two are joined "
                                "by a stream and run at the same time", mark=steps[e.dst].mark)
            continue  # depends_on inside a stream group: they start together anyway
        if b not in gsucc[a]:
            gsucc[a].add(b)
            indeg[b] += 1
            why[(a, b)] = e
    level = [g for g in sorted(indeg) if indeg[g] == 0]
    levels: list[list[int]] = []
    done = 0
    while level:
        levels.append(level)
        done += len(level)
        nxt: list[int] = []
        for g in level:
            for h in sorted(gsucc[g]):
                indeg[h] -= 1
                if indeg[h] == 0:
                    nxt.append(h)
        level = sorted(nxt)
    if done != len(groups):
        stuck = [g for g in indeg if indeg[g] > 0]
        names = [n for g in stuck for n in groups[g].steps]
        raise PlanError("steps joined by a stream also wait for each other through other steps "
                        f"(a cycle through a stream): {', '.join(names)}", mark=steps[names[0]].mark)
    return levels

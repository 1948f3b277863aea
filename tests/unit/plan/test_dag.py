"""The planner: groups, levels, implicit edges, cycles — and its speed on big graphs (no I/O)."""
from __future__ import annotations

import pytest

from clipipe.errors import PlanError
from clipipe.plan import draw
from clipipe.plan.dag import build_plan
from clipipe.spec.parse import parse_pipeline
from clipipe.spec.yamlmarks import loads


def plan(text: str):
    return build_plan(parse_pipeline(loads(text, "p.yaml"), "p.yaml"), known_values=["name", "date"])


def test_parallel_then_join():
    p = plan("""
steps:
  - {name: a, run: x}
  - {name: b, run: x}
  - {name: c, run: x}
  - {name: m, run: x, depends_on: [a, b, c]}
""")
    assert [[p.groups[g].steps for g in lvl] for lvl in p.levels] == [[["a"], ["b"], ["c"]], [["m"]]]


def test_streams_group_steps_and_variables_order_them():
    p = plan("""
steps:
  - {name: tar, run: x, output: stream}
  - {name: gz, run: x, input: pipe, output: stream}
  - {name: save, run: x, input: pipe}
  - {name: src, run: x, output: s}
  - {name: r1, run: x, input: s}
  - {name: r2, run: x, input: s, output: "variable:sum"}
  - {name: use, run: "echo {{.sum}}"}
""")
    assert p.groups[p.group_of["tar"]].steps == ["tar", "gz", "save"]
    assert p.consumers["src"] == ["r1", "r2"]
    assert p.group_of["use"] != p.group_of["r2"]
    assert p.levels[-1] == [p.group_of["use"]]


@pytest.mark.parametrize("text, message", [
    ("steps:\n  - {name: a, run: x, depends_on: c}\n  - {name: b, run: x, depends_on: a}\n"
     "  - {name: c, run: x, depends_on: b}\n", "dependency cycle: a -> b -> c -> a"),
    ("steps:\n  - {name: a, run: x, depends_on: a}\n", "depends on itself"),
    ("steps:\n  - {name: a, run: x, depends_on: zz}\n", "unknown step 'zz'"),
    ("steps:\n  - {name: a, run: x, input: pipe}\n", "is the first step"),
    ("steps:\n  - {name: a, run: x}\n  - {name: b, run: x, input: pipe}\n", "has no 'output: stream'"),
    ("steps:\n  - {name: a, run: x, input: nope}\n", "which no step produces"),
    ("steps:\n  - {name: a, run: 'echo {{.ghost}}'}\n", "not a param, a built-in or a captured variable"),
    ("steps:\n  - {name: a, run: x, output: stream}\n  - {name: b, run: x, input: pipe, depends_on: c}\n"
     "  - {name: c, run: x, depends_on: a}\n", "cycle through a stream"),
])
def test_plan_errors(text, message):
    with pytest.raises(PlanError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(text)


def _chain(n: int) -> str:
    lines = ["steps:"]
    for i in range(n):
        dep = f", depends_on: [s{i - 1}, s{i // 2}]" if i > 1 else ""
        lines.append(f"  - {{name: s{i}, run: 'echo {i}'{dep}}}")
    return "\n".join(lines) + "\n"


def test_big_graphs_plan_and_draw():
    p = plan(_chain(2000))
    assert len(p.levels) == 1999
    assert "s1999" in draw.to_mermaid(p) and "digraph" in draw.to_dot(p) and "level 1999" in draw.to_text(p)


def test_cleanup_waits_for_what_it_stops_and_for_everything_depending_on_that():
    p = plan("""
steps:
  - {name: fwd, type: port-forward, ports: "9000"}
  - {name: other, run: x}
  - {name: use, run: "curl {{.fwd.address}}"}
  - {name: later, run: x, depends_on: use}
  - {name: tidy, type: cleanup, stop: fwd}
""")
    by_level = [[p.groups[g].steps[0] for g in lvl] for lvl in p.levels]
    assert by_level == [["fwd", "other"], ["use"], ["later"], ["tidy"]]
    kinds = {(e.src, e.dst): e.kind for e in p.edges}
    assert kinds[("fwd", "use")] == "variable"                      # {{.fwd.address}} is an implicit edge
    assert {s for (s, d), k in kinds.items() if d == "tidy"} == {"fwd", "use", "later"}


def test_cleanup_of_an_unknown_step_and_a_cycle_through_a_cleanup():
    with pytest.raises(PlanError, match="stop: 'nope' is not a step"):
        plan("steps:\n  - {name: t, type: cleanup, stop: nope}\n")
    with pytest.raises(PlanError, match="dependency cycle"):
        plan("steps:\n  - {name: f, type: port-forward, ports: '1', depends_on: t}\n"
             "  - {name: t, type: cleanup, stop: f}\n")

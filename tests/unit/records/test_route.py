"""The route step: priority order, match forms, default drop/pass, order kept, sync = concurrent."""
from __future__ import annotations

import json

import pytest

from clipipe.errors import SpecError
from clipipe.records.testing import load_text, run_text

EVENTS = [{"type": "text", "text": "a", "n": 0}, {"type": "tool_use", "input": {"p": 1}, "n": 1},
          {"type": "error", "msg": "x", "n": 2}, {"type": "system", "n": 3},
          {"type": "tool_result", "ok": False, "n": 4}, {"type": "text", "text": "b", "n": 5},
          {"n": 6}, {"type": True, "n": 7}, {"type": 1, "n": 8}, ["not", "an", "object"]]


def pipeline(route: str, mode: str = "sync") -> str:
    return f"""name: r
type: batch
source: {{type: file, path: in.ndjson, batch_size: 4}}
steps:
  - name: by-type
    route:
      field: type
      mode: {mode}
{route}
output: {{type: stdout}}
"""


@pytest.fixture
def events(tmp_path):
    (tmp_path / "in.ndjson").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return tmp_path


def out(text: str) -> list:
    return [json.loads(x) for x in text.splitlines()]


ROUTES = """      routes:
        - {match: text, priority: 10, steps: [{select: [type, text]}]}
        - {match: "tool_*", name: tools, steps: [{exclude: [input]}]}
        - {match: tool_result, priority: 20, steps: [{transform: "root = this\\nroot.first = true"}]}
        - {match: [error, system], name: loud, steps: [{transform: "root = this\\nroot.alert = true"}]}
        - {match: true, name: boolean}
"""


@pytest.mark.parametrize("mode", ["sync", "concurrent"])
def test_routes_by_priority_and_keeps_source_order(events, mode) -> None:
    m, text, _ = run_text(pipeline(ROUTES + "      default: drop", mode), events / "p.yaml")
    assert out(text) == [
        {"type": "text", "text": "a"},
        {"type": "tool_use", "n": 1},
        {"type": "error", "msg": "x", "n": 2, "alert": True},
        {"type": "system", "n": 3, "alert": True},
        {"type": "tool_result", "ok": False, "n": 4, "first": True},  # priority 20 beats the glob
        {"type": "text", "text": "b"},
        {"type": True, "n": 7},  # true matches true, not 1
    ]
    step = m["steps"][0]
    routes = {r["name"]: r for r in step["routes"]}
    assert {k: v["records_in"] for k, v in routes.items()} == {
        "tool_result": 1, "text": 2, "tools": 1, "loud": 2, "boolean": 1}
    assert step["unmatched"] == 3 and step["dropped"] == 3 and step["records_out"] == 7
    assert routes["text"]["steps"][0]["name"] == "by-type/text/step1"
    assert routes["text"]["steps"][0]["records_in"] == 2


def test_default_pass_keeps_unmatched_records_in_place(events) -> None:
    _, text, _ = run_text(pipeline("      default: pass\n      routes:\n"
                                   "        - {match: text, steps: [{select: [n]}]}"), events / "p.yaml")
    got = out(text)
    assert got[0] == {"n": 0} and got[5] == {"n": 5}
    assert got[1] == EVENTS[1] and got[6:] == EVENTS[6:] and len(got) == len(EVENTS)


def test_nested_route_and_dotted_field(tmp_path) -> None:
    (tmp_path / "in.ndjson").write_text("".join(json.dumps({"m": {"kind": k, "sub": s}}) + "\n"
                                                for k, s in [("a", 1), ("a", 2), ("b", 1)]))
    text = """name: nested
source: {type: file, path: in.ndjson}
steps:
  - name: outer
    route:
      field: m.kind
      routes:
        - match: a
          steps:
            - name: inner
              route:
                field: m.sub
                routes: [{match: 2, steps: [{select: [m.sub]}]}]
output: {type: stdout}
"""
    m, got, _ = run_text(text, tmp_path / "p.yaml")
    assert out(got) == [{"m": {"sub": 2}}]
    inner = m["steps"][0]["routes"][0]["steps"][0]
    assert inner["name"] == "outer/a/inner" and inner["type"] == "route" and inner["routes"][0]["records_in"] == 1


def test_metrics_reset_between_runs(events) -> None:
    pipe = load_text(pipeline(ROUTES), events / "p.yaml")
    import asyncio
    import io

    from clipipe.state.sqlite import SQLiteStore
    store = SQLiteStore(events / "s.db")
    for _ in range(2):
        m = asyncio.run(pipe.run(store=store, op_id="x", stdout=io.StringIO(), stderr=io.StringIO()))
    routes = {r["name"]: r for r in m["steps"][0]["routes"]}
    assert routes["text"]["records_in"] == 2 and routes["text"]["steps"][0]["records_in"] == 2


def test_failures_in_a_route_are_the_route_steps_errors(events) -> None:
    text = pipeline("      default: pass\n      routes:\n"
                    "        - {match: text, steps: [{name: boom, filter: '.text | test(1)', on_error: skip}]}")
    m, got, err = run_text(text, events / "p.yaml")
    step = m["steps"][0]
    assert step["errors"] == 2 and step["dropped"] == 0 and m["errors"] == 2
    assert len(out(got)) == len(EVENTS) - 2 and "by-type/text/boom" in err


@pytest.mark.parametrize("route, message, line", [
    ("      routes: []", "give at least one route", 7),  # the route: mapping
    ("      routes:\n        - {match: a, steps: [{frobnicate: 1}]}", "frobnicate", 10),
    ("      routes:\n        - {match: a, steps: [{filter: '.a ==='}]}", "invalid jq expression", 10),
    ("      routes:\n        - {match: a}\n        - {match: a}", "two routes are named 'a'", 7),
    ("      routes:\n        - {steps: []}", "missing required key 'match'", 10),
    ("      routes: [{match: a}]\n      default: maybe", "expected one of 'drop', 'pass'", 10),
])
def test_mistakes_point_at_the_file(events, route, message, line) -> None:
    with pytest.raises(SpecError) as ei:
        load_text(pipeline(route), events / "p.yaml")
    assert message in str(ei.value)
    assert ei.value.mark is not None and ei.value.mark.line == line, ei.value.mark

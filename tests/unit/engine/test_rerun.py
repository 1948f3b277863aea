"""Which steps a `--rerun-failed` of a one-context run reuses (pure: a plan and an earlier record)."""
from __future__ import annotations

from clipipe.engine.rerun import steps_to_reuse
from clipipe.plan.dag import build_plan
from clipipe.spec.parse import parse_pipeline
from clipipe.spec.yamlmarks import loads

PIPE = """
steps:
  - {name: fwd, type: port-forward, ports: "9000"}
  - {name: gen, run: "seq 3", output: stream}
  - {name: sum, run: "paste -sd+", input: pipe, output: "variable:total"}
  - {name: key, run: "cat key", output: "variable:api_token"}
  - {name: use, run: "curl {{.fwd.address}} {{.total}}"}
  - {name: alone, run: "true"}
"""


def plan():
    return build_plan(parse_pipeline(loads(PIPE, "p.yaml"), "p.yaml"))


def record(status: dict[str, str], variables: dict[str, str]) -> dict:
    return {"id": "r1", "steps": [{"name": n, "status": s} for n, s in status.items()], "variables": variables}


def test_a_failed_stream_step_reruns_its_whole_group_and_its_dependents():
    rec = record({"fwd": "ok", "gen": "ok", "sum": "failed", "key": "ok", "use": "skipped", "alone": "ok"},
                 {"api_token": "***"})
    reuse, variables = steps_to_reuse(rec, plan())
    assert reuse == {"alone"}                 # gen with sum; use; fwd for use; key's secret can't be restored
    assert variables == {}


def test_ok_steps_with_recorded_variables_are_reused_and_a_forward_only_without_users_left():
    rec = record({"fwd": "ok", "gen": "ok", "sum": "ok", "key": "ok", "use": "failed", "alone": "ok"},
                 {"total": "6", "api_token": "t0ken"})
    reuse, variables = steps_to_reuse(rec, plan())
    assert reuse == {"gen", "sum", "key", "alone"}   # use runs again, and so does the forward it needs
    assert variables == {"total": "6", "api_token": "t0ken"}

"""Marked YAML -> typed Pipeline, with every mistake reported once at its file:line:col."""
from __future__ import annotations

import re
from typing import Any, cast

from clipipe.errors import Mark, SpecError, did_you_mean
from clipipe.spec import templates
from clipipe.spec.model import (BRANCH_POLICIES, ON_ERROR, PARAM_TYPES, Branch, Param, Pipeline,
                                Retry, Step)
from clipipe.spec.yamlmarks import MDict, load, loads, mark_of

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}

PIPELINE_KEYS = {"name", "description", "version", "params", "steps", "on_error", "env", "context",
                 "type"}
STEP_KEYS = {"name", "type", "command", "run", "context", "depends_on", "input", "output", "on_error",
             "retry", "timeout", "env", "cwd", "branches", "description", "steps"}
BRANCH_KEYS = {"name", "type", "command", "run", "steps", "output", "algorithm", "on_branch_exit",
               "context", "size", "estimated_size", "input"}
PARAM_KEYS = {"type", "default", "required", "description", "secret", "choices"}
TYPE_KEYS = {"port-forward": {"service", "pod", "ports", "background", "address", "namespace"},
             "cleanup": {"stop"}, "transfer": {"source", "destination", "src", "dst", "verify"}}


def parse_duration(value: Any, mark: Mark | None = None, what: str = "duration") -> float:
    """`5s`, `1m`, `250ms`, `2h` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise SpecError(f"{what} must be a duration like 5s, 1m, 2h", mark=mark)
    if isinstance(value, (int, float)):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise SpecError(f"{what}: {value!r} is not a duration (write e.g. 5s, 1m, 250ms, 2h)", mark=mark)
    return float(m.group(1)) * _UNITS[m.group(2)]


def _check_keys(node: MDict, allowed: set[str], what: str) -> None:
    for key in node:
        if key not in allowed:
            raise SpecError(f"unknown key {key!r} in {what}{did_you_mean(str(key), allowed)}",
                            mark=node.key_marks.get(key, node.mark))


def _type_name(value: Any) -> str:
    for t, n in ((bool, "true/false"), (dict, "a mapping"), (list, "a list"), (str, "a string"),
                 (int, "an integer"), (float, "a number")):
        if isinstance(value, t):
            return n
    return type(value).__name__


def _expect(node: Any, types: type | tuple[type, ...], what: str, parent: Any = None) -> Any:
    if not isinstance(node, types):
        names = {str: "a string", int: "an integer", float: "a number", bool: "true/false",
                 list: "a list", dict: "a mapping"}
        want = " or ".join(names.get(t, t.__name__) for t in (types if isinstance(types, tuple) else (types,)))
        got = "nothing" if node is None else _type_name(node)
        raise SpecError(f"{what} must be {want}, not {got}", mark=mark_of(node, mark_of(parent)))
    return node


def _str(node: MDict, key: str, what: str, default: str | None = None) -> str | None:
    if key not in node or node[key] is None:
        return default
    value = node[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return str(_expect(value, str, f"{what}: {key!r}", node))


def _command(node: MDict, what: str) -> str | None:
    if "command" in node and "run" in node:
        raise SpecError(f"{what} has both 'command' and 'run'; use one", mark=node.key_marks["run"])
    key = "command" if "command" in node else "run"
    cmd = _str(node, key, what)
    if cmd is not None:
        cmd = cmd.strip()
        if not cmd:
            raise SpecError(f"{what}: {key!r} is empty", mark=node.mark_of(key))
        templates.check_syntax(cmd, node.mark_of(key))
    return cmd


def _env(node: MDict, what: str) -> dict[str, str]:
    env = node.get("env")
    if env is None:
        return {}
    _expect(env, dict, f"{what}: 'env'", node)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _on_error(node: MDict, what: str) -> str | None:
    value = _str(node, "on_error", what)
    if value is not None and value not in ON_ERROR:
        raise SpecError(f"{what}: on_error must be one of {', '.join(ON_ERROR)}, not {value!r}",
                        mark=node.mark_of("on_error"))
    return value


def _retry(node: MDict, what: str) -> Retry | None:
    r = node.get("retry")
    if r is None:
        return None
    if isinstance(r, int) and not isinstance(r, bool):
        return Retry(count=int(r))
    _expect(r, dict, f"{what}: 'retry'", node)
    _check_keys(r, {"count", "delay", "backoff"}, f"{what} retry")
    count = r.get("count", 3)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise SpecError(f"{what}: retry count must be a whole number ≥ 1", mark=r.mark_of("count"))
    delay = parse_duration(r.get("delay", 0), r.mark_of("delay"), f"{what}: retry delay")
    backoff = r.get("backoff", 1.0)
    if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or backoff < 1:
        raise SpecError(f"{what}: retry backoff must be a number ≥ 1", mark=r.mark_of("backoff"))
    return Retry(count=int(count), delay=delay, backoff=float(backoff))


def _depends(node: MDict, what: str) -> tuple[list[str], dict[str, Mark]]:
    d = node.get("depends_on")
    if d is None:
        return [], {}
    items = [d] if isinstance(d, str) else _expect(d, list, f"{what}: 'depends_on'", node)
    names: list[str] = []
    marks: dict[str, Mark] = {}
    for item in items:
        _expect(item, str, f"{what}: each depends_on entry", node)
        names.append(str(item))
        marks[str(item)] = mark_of(item, node.mark_of("depends_on"))  # type: ignore[assignment]
    return names, marks


def _output(node: MDict, what: str) -> str | None:
    out = _str(node, "output", what)
    if out is None:
        return None
    if out.startswith("variable:"):
        var = out.split(":", 1)[1]
        if not re.match(r"^[A-Za-z_]\w*$", var):
            raise SpecError(f"{what}: 'output: variable:NAME' needs a name of letters, digits and _",
                            mark=node.mark_of("output"))
    elif out.startswith("file:"):
        if not out[5:].strip():
            raise SpecError(f"{what}: 'output: file:PATH' needs a path", mark=node.mark_of("output"))
    elif out not in ("stream", "stderr", "stdout") and not _NAME.match(out):
        raise SpecError(f"{what}: output must be stream, stderr, a stream NAME, variable:NAME or "
                        f"file:PATH, not {out!r}", mark=node.mark_of("output"))
    return out


def _name(node: MDict, what: str, default: str) -> str:
    name = _str(node, "name", what, default)
    assert name is not None
    if not _NAME.match(name):
        raise SpecError(f"{what}: name {name!r} may hold only letters, digits, '_', '-' and '.'",
                        mark=node.mark_of("name"))
    return name


def parse_step(node: Any, index: int, where: str = "step") -> Step:
    """One step mapping -> Step."""
    what = f"{where} #{index + 1}"
    _expect(node, dict, what)
    name = _name(node, what, f"step-{index + 1}")
    what = f"{where} {name!r}"
    stype = _str(node, "type", what, "command") or "command"
    allowed = STEP_KEYS | TYPE_KEYS.get(stype, set())
    if stype == "tee":
        allowed |= {"on_branch_exit"}
    _check_keys(node, allowed, what)
    command = _command(node, what)
    depends, dmarks = _depends(node, what)
    inp = _str(node, "input", what)
    if inp is not None and inp != "pipe" and not _NAME.match(inp):
        raise SpecError(f"{what}: input must be 'pipe' or a stream name", mark=node.mark_of("input"))
    timeout = node.get("timeout")
    step = Step(name=name, type=stype, command=command, context=_str(node, "context", what),
                depends_on=depends, input=inp, output=_output(node, what), on_error=_on_error(node, what),
                retry=_retry(node, what), env=_env(node, what), cwd=_str(node, "cwd", what),
                timeout=None if timeout is None else parse_duration(timeout, node.mark_of("timeout"),
                                                                     f"{what}: timeout"),
                mark=node.mark, depends_marks=dmarks)
    if step.on_error == "retry" and step.retry is None:
        step.retry = Retry()
    if step.retry is not None and step.on_error is None:
        step.on_error = "retry"
    if stype == "command":
        if "steps" in node:
            raise SpecError(f"{what}: nested 'steps' belong in a tee branch", mark=node.key_marks["steps"])
        if command is None:
            raise SpecError(f"{what} needs a 'command' (or 'run')", mark=node.mark)
        if "branches" in node:
            raise SpecError(f"{what}: 'branches' needs 'type: tee'", mark=node.key_marks["branches"])
    elif stype == "tee":
        if command is not None:
            raise SpecError(f"{what}: a tee step has branches, not a command", mark=node.mark_of("command"))
        branches = _expect(node.get("branches"), list, f"{what}: 'branches'", node)
        if not branches:
            raise SpecError(f"{what}: 'branches' is empty", mark=node.mark_of("branches"))
        default_policy = _str(node, "on_branch_exit", what, "fail")
        step.branches = [parse_branch(b, i, name, default_policy or "fail") for i, b in enumerate(branches)]
        seen: set[str] = set()
        for b in step.branches:
            if b.name in seen:
                raise SpecError(f"{what}: two branches are called {b.name!r}", mark=b.mark)
            seen.add(b.name)
    elif stype in TYPE_KEYS:
        step.options = {k: node[k] for k in TYPE_KEYS[stype] if k in node}
        _check_step_type(stype, step, node, what)
    else:
        raise SpecError(f"{what}: unknown step type {stype!r} (known: command, tee, port-forward, "
                        f"cleanup, transfer){did_you_mean(stype, {'command', 'tee', 'port-forward', 'cleanup', 'transfer'})}",
                        mark=node.mark_of("type"))
    return step


def port_pairs(value: Any) -> list[tuple[int, int]]:
    """`ports:` as (local, remote) pairs: "9000:9000", "9000", "0:5432", 9000, or a list; ValueError if not."""
    items = value if isinstance(value, list) else [value]
    if value is None or not items:
        raise ValueError("a port-forward needs `ports:` (LOCAL:REMOTE, e.g. \"9000:9000\")")
    out = []
    for item in items:
        local, sep, remote = str(item).strip().partition(":")
        try:
            pair = (int(local), int(remote)) if sep else (int(local), int(local))
        except ValueError:
            raise ValueError(f"ports {item!r} is not LOCAL:REMOTE") from None
        if not (0 <= pair[0] < 65536 and 0 < pair[1] < 65536):
            raise ValueError(f"ports {item!r} is out of range")
        out.append(pair)
    return out


def _check_step_type(stype: str, step: Step, node: Any, what: str) -> None:
    """The settings of a port-forward, cleanup or transfer step, each error at its own key."""
    o = step.options
    if stype == "port-forward":
        try:
            port_pairs(o.get("ports"))
        except ValueError as exc:
            raise SpecError(f"{what}: {exc}", mark=node.mark_of("ports") if "ports" in node else node.mark) from None
        if o.get("background", True) is not True:
            raise SpecError(f"{what}: port-forwards run in the background (until a cleanup step stops them "
                            "or the run ends); `background: false` is not supported", mark=node.mark_of("background"))
        if o.get("pod") and o.get("service"):
            raise SpecError(f"{what}: give `pod:` or `service:`, not both", mark=node.mark_of("service"))
    elif stype == "cleanup":
        if not o.get("stop"):
            raise SpecError(f"{what}: a cleanup step needs `stop:` (a port-forward step's name, or a list)",
                            mark=node.mark)
    elif stype == "transfer":
        for key, alt in (("source", "src"), ("destination", "dst")):
            if not (o.get(key) or o.get(alt)):
                raise SpecError(f"{what}: a transfer step needs `{key}:`", mark=node.mark)


def parse_branch(node: Any, index: int, tee: str, default_policy: str) -> Branch:
    """One tee branch mapping -> Branch."""
    what = f"branch #{index + 1} of {tee!r}"
    _expect(node, dict, what)
    name = _name(node, what, f"branch-{index + 1}")
    what = f"branch {name!r} of {tee!r}"
    _check_keys(node, BRANCH_KEYS, what)
    btype = _str(node, "type", what)
    command = _command(node, what)
    policy = _str(node, "on_branch_exit", what, default_policy) or "fail"
    if policy not in BRANCH_POLICIES:
        raise SpecError(f"{what}: on_branch_exit must be fail or drop", mark=node.mark_of("on_branch_exit"))
    branch = Branch(name=name, kind="command", command=command, output=_output(node, what),
                    context=_str(node, "context", what), on_exit=policy, mark=node.mark)
    if btype in ("checksum", "progress"):
        branch.kind = btype
        if command is not None:
            raise SpecError(f"{what}: a built-in {btype} branch takes no command", mark=node.mark_of("command"))
        if btype == "checksum":
            branch.algorithm = (_str(node, "algorithm", what, "sha256") or "sha256").lower()
        size = node.get("size", node.get("estimated_size"))
        if size is not None:
            branch.size = str(size)
    elif btype not in (None, "command"):
        raise SpecError(f"{what}: branch type must be command, checksum or progress, not {btype!r}",
                        mark=node.mark_of("type"))
    elif "steps" in node:
        if command is not None:
            raise SpecError(f"{what}: give 'command' or 'steps', not both", mark=node.key_marks["steps"])
        steps = _expect(node["steps"], list, f"{what}: 'steps'", node)
        if not steps:
            raise SpecError(f"{what}: 'steps' is empty", mark=node.mark_of("steps"))
        branch.kind = "steps"
        branch.steps = [parse_step(s, i, f"step of branch {name!r}") for i, s in enumerate(steps)]
        for s in branch.steps:
            if s.type != "command":
                raise SpecError(f"{what}: nested steps must be commands", mark=s.mark)
    elif command is None:
        raise SpecError(f"{what} needs a 'command', 'steps' or 'type: checksum|progress'", mark=node.mark)
    return branch


def parse_param(name: str, node: Any, mark: Mark | None) -> Param:
    """One entry of `params:` -> Param (a bare value is its default)."""
    if not isinstance(node, dict):
        ptype = ("bool" if isinstance(node, bool) else "int" if isinstance(node, int)
                 else "float" if isinstance(node, float) else "list" if isinstance(node, list) else "string")
        return Param(name=name, type=ptype, default=node, required=node is None, mark=mark)
    node = cast(MDict, node)  # a loaded mapping (its marks are read below)
    _check_keys(node, PARAM_KEYS, f"param {name!r}")
    ptype = _str(node, "type", f"param {name!r}", "string") or "string"
    if ptype not in PARAM_TYPES:
        raise SpecError(f"param {name!r}: type must be one of {', '.join(PARAM_TYPES)}, not {ptype!r}"
                        f"{did_you_mean(ptype, set(PARAM_TYPES))}", mark=node.mark_of("type"))
    required = node.get("required")
    if required is not None and not isinstance(required, bool):
        raise SpecError(f"param {name!r}: required must be true or false", mark=node.mark_of("required"))
    choices = node.get("choices")
    if choices is not None:
        _expect(choices, list, f"param {name!r}: choices", node)
    return Param(name=name, type=ptype, default=node.get("default"),
                 required=bool(required) if required is not None else "default" not in node,
                 description=_str(node, "description", f"param {name!r}", "") or "",
                 secret=bool(node.get("secret", False)), choices=list(choices) if choices else None,
                 mark=node.mark)


def unwrap(doc: Any, path: str) -> MDict:
    """The pipeline mapping, with or without a top-level `pipeline:` wrapper."""
    if doc is None:
        raise SpecError("the pipeline file is empty", mark=Mark(path, 1, 1))
    _expect(doc, dict, "a pipeline file")
    if "pipeline" in doc and len(doc) == 1:
        inner = doc["pipeline"]
        _expect(inner, dict, "'pipeline'", doc)
        return inner
    if "pipeline" in doc and isinstance(doc["pipeline"], dict):
        extra = [k for k in doc if k != "pipeline"]
        raise SpecError(f"keys beside 'pipeline:' are not allowed: {', '.join(map(str, extra))}",
                        mark=doc.key_marks[extra[0]])
    return doc


def parse_pipeline(doc: Any, path: str) -> Pipeline:
    """A whole pipeline document -> Pipeline (structure only; cross-step checks live in plan)."""
    node = unwrap(doc, path)
    _check_keys(node, PIPELINE_KEYS, "the pipeline")
    ptype = _str(node, "type", "the pipeline")
    if ptype not in (None, "commands", "command"):
        raise SpecError(f"pipeline type {ptype!r} is a record pipeline; it needs a 'source:'",
                        mark=node.mark_of("type"))
    name = _str(node, "name", "the pipeline") or path.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    params_node = node.get("params") or {}
    _expect(params_node, dict, "'params'", node)
    params = {str(k): parse_param(str(k), v, params_node.key_marks.get(k) if isinstance(params_node, MDict) else None)
              for k, v in params_node.items()}
    for pname, p in params.items():
        if not re.match(r"^[A-Za-z_][\w-]*$", pname):
            raise SpecError(f"param name {pname!r} must start with a letter and hold letters, digits, _ and -",
                            mark=p.mark)
    steps_node = node.get("steps")
    if steps_node is None:
        raise SpecError("the pipeline has no 'steps'", mark=node.mark)
    _expect(steps_node, list, "'steps'", node)
    if not steps_node:
        raise SpecError("'steps' is empty", mark=node.mark_of("steps"))
    steps = [parse_step(s, i) for i, s in enumerate(steps_node)]
    seen: dict[str, Step] = {}
    for s in steps:
        if s.name in seen:
            first = seen[s.name].mark
            raise SpecError(f"two steps are called {s.name!r} (the first at line {first.line})"
                            if first else f"two steps are called {s.name!r}", mark=s.mark)
        seen[s.name] = s
    return Pipeline(name=name, steps=steps, params=params,
                    description=_str(node, "description", "the pipeline", "") or "",
                    version=_str(node, "version", "the pipeline", "") or "",
                    on_error=_on_error(node, "the pipeline") or "stop", env=_env(node, "the pipeline"),
                    context=_str(node, "context", "the pipeline"), path=path, mark=node.mark)


def load_pipeline(path: str) -> tuple[Any, Pipeline | None]:
    """Load a file: (marked document, Pipeline) — Pipeline is None for record pipelines."""
    doc = load(path)
    if isinstance(doc, dict) and _looks_like_records(doc):
        return doc, None
    return doc, parse_pipeline(doc, path)


def _looks_like_records(doc: Any) -> bool:
    try:
        from clipipe.records import is_record_pipeline  # imported lazily: its drivers are heavy
    except ImportError:
        inner = doc.get("pipeline", doc) if isinstance(doc.get("pipeline"), dict) else doc
        return "source" in inner or inner.get("type") in ("batch", "realtime")
    return bool(is_record_pipeline(doc))


def adhoc_pipeline(command: str) -> Pipeline:
    """`clipipe run "df -h"`: one command as a one-step pipeline."""
    doc = loads(f"name: adhoc\nsteps:\n  - name: command\n    command: x\n", "<command line>")
    pipeline = parse_pipeline(doc, "<command line>")
    pipeline.steps[0].command = command
    return pipeline

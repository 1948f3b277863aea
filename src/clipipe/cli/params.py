"""Pipeline params as command-line options: `--source=/srv --level 3 --verbose`."""
from __future__ import annotations

from typing import Any

from clipipe.errors import ParamError
from clipipe.spec.model import Pipeline


def split_param_args(args: list[str], pipeline: Pipeline) -> dict[str, Any]:
    """Turn leftover `--name=value`/`--name value`/`--flag` arguments into {name: text}."""
    given: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or arg == "--":
            raise ParamError(f"unexpected argument {arg!r} (params are given as --NAME=VALUE)")
        body = arg[2:]
        if "=" in body:
            name, value = body.split("=", 1)
        else:
            name = body
            p = pipeline.params.get(name) or pipeline.params.get(name.replace("-", "_"))
            nxt = args[i + 1] if i + 1 < len(args) else None
            if p is not None and p.type == "bool" and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif name.startswith("no-") and pipeline.params.get(name[3:]) and \
                    pipeline.params[name[3:]].type == "bool":
                name, value = name[3:], "false"
            elif nxt is None:
                raise ParamError(f"--{name} needs a value")
            else:
                value = nxt
                i += 1
        if name not in pipeline.params and name.replace("-", "_") in pipeline.params:
            name = name.replace("-", "_")
        if name in given:
            raise ParamError(f"--{name} is given twice")
        given[name] = value
        i += 1
    return given


def describe_params(pipeline: Pipeline) -> str:
    """The `clipipe run FILE --help` text: the pipeline and its params with types and defaults."""
    from clipipe.spec.params import is_secret

    lines = [f"Usage: clipipe run {pipeline.path} [OPTIONS] [--PARAM=VALUE ...]", ""]
    title = pipeline.name + (f" v{pipeline.version}" if pipeline.version else "")
    lines.append(f"  Pipeline {title}: {len(pipeline.steps)} steps")
    if pipeline.description:
        lines.append(f"  {pipeline.description.strip()}")
    lines.append("")
    if pipeline.params:
        lines.append("Params:")
        width = max(len(n) for n in pipeline.params) + 4 + 8
        for name, p in pipeline.params.items():
            left = f"  --{name} {p.type.upper()}"
            bits = []
            if p.description:
                bits.append(p.description)
            if p.required and p.default is None:
                bits.append("[required]")
            elif p.default is not None:
                shown = "***" if is_secret(p) else p.default
                bits.append(f"[default: {shown}]")
            if p.choices:
                bits.append(f"[one of: {', '.join(map(str, p.choices))}]")
            lines.append(f"{left.ljust(width + 2)} {' '.join(bits)}")
    else:
        lines.append("Params: none")
    lines += ["", "Run options: see `clipipe run --help`."]
    return "\n".join(lines)

"""Param values: from `--name=value` arguments and defaults to typed, resolved values."""
from __future__ import annotations

import datetime as _dt
import os
import re
import socket
from pathlib import Path
from typing import Any, Mapping

from clipipe.errors import ParamError
from clipipe.spec import templates
from clipipe.spec.model import Param, Pipeline

_TRUE = {"1", "true", "yes", "on", "y"}
_FALSE = {"0", "false", "no", "off", "n"}
#: Names that look secret are masked in output and records even without `secret: true`.
_SECRET_NAME = re.compile(r"pass(word)?|secret|token|api[_-]?key|credential|private", re.I)


def is_secret(param: Param) -> bool:
    """True if a param's value must never be shown."""
    return param.secret or bool(_SECRET_NAME.search(param.name))


def coerce(param: Param, value: Any) -> Any:
    """Convert `value` (CLI text or YAML default) to the param's type, or raise ParamError."""
    if value is None:
        return None
    t = param.type
    text = value if isinstance(value, str) else None
    try:
        if t == "int":
            if isinstance(value, bool) or (text is None and not isinstance(value, int)):
                raise ValueError
            return int(text.strip(), 0) if text is not None else int(value)
        if t == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if t == "bool":
            if isinstance(value, bool):
                return value
            if text is not None and text.strip().lower() in _TRUE | _FALSE:
                return text.strip().lower() in _TRUE
            raise ValueError
        if t == "duration":
            from clipipe.spec.parse import parse_duration

            parse_duration(value, param.mark, f"param {param.name!r}")
            return str(value)
        if t == "list":
            if isinstance(value, list):
                return [str(v) for v in value]
            return [v.strip() for v in str(value).split(",") if v.strip()]
        if t == "path":
            s = str(value)
            return s if templates.has_template(s) else str(Path(s).expanduser()) if s.startswith("~") else s
        return str(value)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ParamError(f"param {param.name!r} must be {_article(t)} {t}, not {value!r}",
                         mark=param.mark) from exc


def _article(t: str) -> str:
    return "an" if t[0] in "aeiou" else "a"


def builtins(pipeline_name: str, op_id: str, now: _dt.datetime | None = None) -> dict[str, Any]:
    """Values every pipeline can use: name, date, time, datetime, timestamp, op_id, hostname, user."""
    now = now or _dt.datetime.now()
    return {
        "name": pipeline_name,
        "date": now.strftime("%Y-%m-%d"),
        "time": now.strftime("%H%M%S"),
        "datetime": now.strftime("%Y%m%d-%H%M%S"),
        "timestamp": int(now.timestamp()),
        "op_id": op_id,
        "hostname": socket.gethostname(),
        "user": os.environ.get("USER") or os.environ.get("LOGNAME") or "",
    }


def resolve(pipeline: Pipeline, given: Mapping[str, Any], base: Mapping[str, Any]) -> dict[str, Any]:
    """Typed values of every param: given ones, then defaults (which may refer to others), built-ins."""
    unknown = [k for k in given if k not in pipeline.params]
    if unknown:
        known = ", ".join(f"--{p}" for p in pipeline.params) or "none"
        raise ParamError(f"unknown param --{unknown[0]} for pipeline {pipeline.name!r} (its params: {known})")
    raw: dict[str, Any] = {}
    for name, p in pipeline.params.items():
        if name in given:
            raw[name] = coerce(p, given[name])
        elif p.default is not None:
            raw[name] = p.default if isinstance(p.default, str) else coerce(p, p.default)
        elif p.required:
            raise ParamError(f"param {name!r} is required: give --{name}=VALUE"
                             + (f" ({p.description})" if p.description else ""), mark=p.mark)
        else:
            raw[name] = ""
    base = {k: v for k, v in base.items() if k not in pipeline.params}  # a param overrides a built-in
    values = templates.resolve_all(raw, base, marks=lambda n: pipeline.params[n].mark if n in pipeline.params else None)
    for name, p in pipeline.params.items():
        if isinstance(values.get(name), str) and name not in given:
            values[name] = coerce(p, values[name])
        if p.choices and values.get(name) not in p.choices:
            raise ParamError(f"param {name!r} must be one of {', '.join(map(str, p.choices))}, "
                             f"not {values.get(name)!r}", mark=p.mark)
    return values


def masked(pipeline: Pipeline, values: Mapping[str, Any]) -> dict[str, Any]:
    """The param values safe to show: secrets replaced by '***'."""
    out: dict[str, Any] = {}
    for name, p in pipeline.params.items():
        if name in values:
            out[name] = "***" if is_secret(p) and values[name] not in (None, "") else values[name]
    return out


def secret_values(pipeline: Pipeline, values: Mapping[str, Any]) -> list[str]:
    """The secret strings to scrub from anything logged or recorded."""
    return [str(values[n]) for n, p in pipeline.params.items()
            if is_secret(p) and values.get(n) not in (None, "") and len(str(values[n])) >= 3]

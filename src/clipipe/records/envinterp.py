"""`${VAR}` / `${VAR:-default}` and `{{.param}}` in every string of a record pipeline.

One pass over each string, so a substituted value is never substituted again. `$${` writes a literal
`${`. A missing variable without a default is a SpecError at the string's mark. Names in `deferred`
(e.g. `LAST_SYNC_TIME`, filled from the state store when the run starts) are left in place for the
component that owns them. Strings at `shell_paths` (a shell command, e.g. the command source's
`command`) get their `{{.param}}` values quoted for the spot they land in, as in shell steps, so a
param can't inject shell code (`{{.x | raw}}` opts out); `${VAR}` is the user's own environment
and goes in as is.
"""
from __future__ import annotations

import os
import re
from typing import Any, Iterable, Mapping

from clipipe.errors import Mark, SpecError
from clipipe.spec import templates
from clipipe.spec.yamlmarks import MDict, MList, MStr, mark_of

#: `$${` (escape), `${NAME}`, `${NAME:-default}` (default may be empty, no `}` inside), or `{{ ... }}`.
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\{\{.*?\}\}")


def interpolate(text: str, env: Mapping[str, str], params: Mapping[str, Any],
                deferred: Iterable[str] = (), mark: Mark | None = None, shell: bool = False) -> str:
    """Substitute environment variables and template params in one string (`shell`: quoted)."""
    if "$" not in text and "{{" not in text:
        return text
    deferred = set(deferred)

    def sub(m: re.Match[str]) -> str:
        tok = m.group(0)
        if tok == "$${":
            return "${"
        if tok.startswith("{{"):
            value = templates.render(tok, params, shell=False, mark=mark)
            if shell and "raw" not in [f.strip() for f in tok[2:-2].split("|")[1:]]:
                value = templates.shell_escape(value, templates._quote_state(text, m.start()))
            return value
        name, default = m.group(1), m.group(2)
        if name in deferred:
            return tok
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise SpecError(f"environment variable {name} is not set (write ${{{name}:-default}} "
                        "to give a default)", mark=mark)
    return _TOKEN.sub(sub, text)


def interpolate_doc(doc: Any, *, env: Mapping[str, str] | None = None,
                    params: Mapping[str, Any] | None = None, deferred: Iterable[str] = (),
                    skip_keys: Iterable[str] = (), shell_paths: Iterable[tuple[str, ...]] = ()) -> Any:
    """A copy of a marked YAML document with every string interpolated (marks kept)."""
    env = os.environ if env is None else env
    params = params or {}
    deferred = tuple(deferred)
    skip = set(skip_keys)
    shells = set(shell_paths)

    def walk(value: Any, top: bool, path: tuple[str, ...] = ()) -> Any:
        if isinstance(value, dict):
            out = MDict()
            out.mark = mark_of(value, Mark("<string>"))
            out.key_marks = dict(getattr(value, "key_marks", {}))
            for k, v in value.items():
                out[k] = v if (top and k in skip) else walk(v, False, path + (str(k),))
            return out
        if isinstance(value, list):
            lst = MList(walk(v, False) for v in value)
            lst.mark = mark_of(value, Mark("<string>"))
            return lst
        if isinstance(value, str):
            new = interpolate(value, env, params, deferred, mark_of(value), shell=path in shells)
            if new is value or new == value:
                return value
            s = MStr(new)
            s.mark = mark_of(value, Mark("<string>"))
            return s
        return value
    return walk(doc, True)

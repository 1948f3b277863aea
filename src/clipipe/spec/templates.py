"""`{{.name}}` templates: parsing, nested resolution, and shell quoting that knows where it stands.

A value substituted into a shell command is quoted for the spot it lands in: outside quotes it becomes
one shell word (`shlex.quote`), inside double quotes `"`, `$`, backtick and backslash are escaped,
inside single quotes `'` is closed, escaped and reopened. So no value can inject shell code.
`{{.x | raw}}` inserts the value as is (the user takes responsibility).
"""
from __future__ import annotations

import re
import shlex
from typing import Any, Callable, Mapping

from clipipe.errors import Mark, TemplateError

#: `{{ .name }}`, `{{.a.b}}` (dotted lookups into dict values), optional `| filter` chain.
_PLACEHOLDER = re.compile(r"\{\{\s*\.([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*((?:\|\s*[A-Za-z_]+\s*)*)\}\}")
_FILTERS = {"raw", "quote", "upper", "lower", "basename", "dirname"}


def references(text: str) -> list[str]:
    """The top-level names a template refers to, in order, without duplicates."""
    seen: list[str] = []
    for m in _PLACEHOLDER.finditer(text):
        name = m.group(1).split(".")[0]
        if name not in seen:
            seen.append(name)
    return seen


def has_template(text: str) -> bool:
    """True if `text` contains at least one `{{.name}}` placeholder."""
    return bool(_PLACEHOLDER.search(text))


def _lookup(values: Mapping[str, Any], dotted: str, mark: Mark | None) -> Any:
    parts = dotted.split(".")
    if parts[0] not in values:
        known = ", ".join(sorted(values)) or "none"
        raise TemplateError(f"unknown template value {{{{.{parts[0]}}}}} (known: {known})", mark=mark)
    value = values[parts[0]]
    for p in parts[1:]:
        if isinstance(value, Mapping) and p in value:
            value = value[p]
        else:
            raise TemplateError(f"{{{{.{dotted}}}}}: no field {p!r}", mark=mark)
    return value


def to_text(value: Any) -> str:
    """How a value reads when substituted: bools lower-case, lists space-joined, None empty."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return " ".join(to_text(v) for v in value)
    return str(value)


def _quote_state(text: str, end: int) -> str:
    """The shell quoting state at offset `end` of `text`: 'none', 'single' or 'double'."""
    state = "none"
    i = 0
    while i < end:
        c = text[i]
        if state == "none":
            if c == "\\":
                i += 1
            elif c == "'":
                state = "single"
            elif c == '"':
                state = "double"
        elif state == "single":
            if c == "'":
                state = "none"
        else:  # double
            if c == "\\":
                i += 1
            elif c == '"':
                state = "none"
        i += 1
    return state


def shell_escape(value: str, state: str) -> str:
    """Escape `value` for a spot in a shell command in quoting state `state`."""
    if state == "single":
        return value.replace("'", "'\\''")
    if state == "double":
        return re.sub(r'(["$`\\])', r"\\\1", value)
    return shlex.quote(value)


def _apply_filters(text: str, filters: list[str], mark: Mark | None) -> tuple[str, bool]:
    raw = False
    for f in filters:
        if f not in _FILTERS:
            raise TemplateError(f"unknown template filter {f!r} (known: {', '.join(sorted(_FILTERS))})",
                                mark=mark)
        if f == "raw":
            raw = True
        elif f == "upper":
            text = text.upper()
        elif f == "lower":
            text = text.lower()
        elif f == "basename":
            text = text.rstrip("/").rsplit("/", 1)[-1]
        elif f == "dirname":
            text = text.rstrip("/").rsplit("/", 1)[0] if "/" in text.rstrip("/") else "."
    return text, raw


def render(text: str, values: Mapping[str, Any], *, shell: bool, mark: Mark | None = None) -> str:
    """Substitute every placeholder; with `shell=True` values are quoted for their spot."""
    out: list[str] = []
    pos = 0
    for m in _PLACEHOLDER.finditer(text):
        out.append(text[pos:m.start()])
        value = to_text(_lookup(values, m.group(1), mark))
        filters = [f.strip() for f in m.group(2).split("|") if f.strip()]
        value, raw = _apply_filters(value, filters, mark)
        if shell and not raw:
            value = shell_escape(value, _quote_state(text, m.start()))
        out.append(value)
        pos = m.end()
    out.append(text[pos:])
    result = "".join(out)
    if "{{" in result and "{{" in text and not shell:
        leftover = result.find("{{")
        if _PLACEHOLDER.search(result) is None and "}}" in result[leftover:]:
            raise TemplateError(f"malformed template near {result[leftover:leftover + 30]!r} "
                                "(write {{.name}})", mark=mark)
    return result


def check_syntax(text: str, mark: Mark | None = None) -> None:
    """Raise TemplateError for `{{ ... }}` that is not a valid placeholder."""
    for m in re.finditer(r"\{\{(.*?)\}\}", text):
        full = _PLACEHOLDER.fullmatch(m.group(0))
        if not full:
            raise TemplateError(f"malformed template {m.group(0)!r} (write {{{{.name}}}} or "
                                "{{.name | raw}})", mark=mark)
        filters = [f.strip() for f in (full.group(2) or "").split("|") if f.strip()]
        _apply_filters("", filters, mark)


def resolve_all(raw: Mapping[str, Any], base: Mapping[str, Any],
                marks: Callable[[str], Mark | None] = lambda _n: None) -> dict[str, Any]:
    """Resolve values that refer to each other (`{{.name}}` inside defaults), detecting loops.

    `raw` maps names to values (strings may hold templates); `base` holds values already final
    (built-ins). Substitution here is raw text: quoting happens when a command is rendered.
    """
    resolved: dict[str, Any] = dict(base)
    visiting: list[str] = []

    def resolve(name: str) -> Any:
        if name in resolved:
            return resolved[name]
        if name in visiting:
            chain = " -> ".join(visiting[visiting.index(name):] + [name])
            raise TemplateError(f"params refer to each other in a loop: {chain}", mark=marks(name))
        visiting.append(name)
        value = raw[name]
        if isinstance(value, str) and has_template(value):
            for ref in references(value):
                if ref in raw:
                    resolve(ref)
            value = render(value, resolved, shell=False, mark=marks(name))
        visiting.pop()
        resolved[name] = value
        return value

    for n in raw:
        resolve(n)
    return resolved

"""contexts.yaml: named places where steps run (local, ssh, kubernetes), plus groups of them.

Lookup order (first found wins): the `--contexts` path, `$CLIPIPE_CONTEXTS`, `./contexts.yaml`,
`./config/contexts.yaml`, `$XDG_CONFIG_HOME/clipipe/contexts.yaml` (else
`~/.config/clipipe/contexts.yaml`); with none of them, an embedded default holding one `local` context.
A path given explicitly (option or variable) must exist.

    contexts:
      local:         {type: local, default: true}
      backup-server: {type: ssh, host: backup.internal, user: backup, port: 2222}
      k8s-prod:      {type: kubernetes, context: production, namespace: default}
    groups:
      web: [web1, web2]

Each context's keys other than `type` and `default` are the fields of its type's settings dataclass
(see `clipipe.targets.base.REGISTRY`); unknown keys and wrong types are ContextErrors pointing at the
file:line:col they came from.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipipe.errors import ContextError, Mark, SpecError, did_you_mean
from clipipe.spec import yamlmarks
from clipipe.targets.base import REGISTRY, Target

EMBEDDED_SOURCE = "embedded default"

EMBEDDED_DEFAULT = """\
contexts:
  local:
    type: local
    default: true
"""

#: Keys of a context entry that are not settings of its type.
RESERVED_KEYS = ("type", "default", "description")

#: Top-level keys of contexts.yaml.
TOP_LEVEL_KEYS = ("contexts", "groups", "version")

#: Setting names whose values `masked_settings` hides.
SECRET_WORDS = ("password", "token", "secret", "passphrase")


#: The context every contexts.yaml has, declared or not: this machine.
IMPLICIT_LOCAL = "local"


@dataclass
class ContextDef:
    """One validated context: its name, type, typed settings and where it was defined."""

    name: str
    type: str
    settings: Any
    mark: Mark | None = None
    is_default: bool = False
    description: str = ""

    def masked_settings(self) -> dict[str, Any]:
        """The settings as a dict with secret-looking values replaced by '***'."""
        out: dict[str, Any] = {}
        if dataclasses.is_dataclass(self.settings):
            for f in dataclasses.fields(self.settings):
                value = getattr(self.settings, f.name)
                if f.metadata.get("secret") or any(w in f.name.lower() for w in SECRET_WORDS):
                    if value and not f.name.endswith("_env"):
                        value = "***"
                out[f.name] = value
        return out


@dataclass
class _NoSettings:
    """Settings of a target type that has none (used when its module is not installed yet)."""


def candidate_paths(explicit: str | None = None) -> list[tuple[Path, bool]]:
    """The paths to try in order, each with whether it must exist (explicitly requested)."""
    out: list[tuple[Path, bool]] = []
    if explicit:
        out.append((Path(explicit).expanduser(), True))
    env = os.environ.get("CLIPIPE_CONTEXTS")
    if env:
        out.append((Path(env).expanduser(), True))
    out.append((Path("contexts.yaml"), False))
    out.append((Path("config") / "contexts.yaml", False))
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg else Path.home() / ".config"
    out.append((base / "clipipe" / "contexts.yaml", False))
    return out


def find_contexts_file(explicit: str | None = None) -> Path | None:
    """The contexts.yaml to use, or None for the embedded default; a missing explicit path errors."""
    for path, required in candidate_paths(explicit):
        if path.is_file():
            return path
        if required:
            how = "--contexts" if explicit and path == Path(explicit).expanduser() else "$CLIPIPE_CONTEXTS"
            raise ContextError(f"contexts file not found: {path} (from {how})")
    return None


def load_contexts(path: str | None = None) -> Contexts:
    """Find, read and validate contexts.yaml (see the module docstring for the lookup order)."""
    found = find_contexts_file(path)
    if found is None:
        return parse_contexts(EMBEDDED_DEFAULT, EMBEDDED_SOURCE)
    try:
        text = found.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ContextError(f"can't read {found}: {exc}") from exc
    return parse_contexts(text, str(found))


def parse_contexts(text: str, source: str = "<string>") -> Contexts:
    """Validate contexts.yaml text; errors are ContextErrors with the file:line:col."""
    try:
        doc = yamlmarks.loads(text, source)
    except SpecError as exc:
        raise ContextError(exc.message, mark=exc.mark, hint=exc.hint) from exc
    file_mark = Mark(source)
    if doc is None:
        raise ContextError("contexts file is empty: it needs a `contexts:` mapping", mark=file_mark)
    if not isinstance(doc, yamlmarks.MDict):
        raise ContextError("contexts file must be a mapping with a `contexts:` key",
                           mark=yamlmarks.mark_of(doc, file_mark))
    for key in doc:
        if key not in TOP_LEVEL_KEYS:
            raise ContextError(f"unknown top-level key {key!r}" + did_you_mean(key, TOP_LEVEL_KEYS),
                               mark=doc.key_marks.get(key, file_mark))
    entries = doc.get("contexts")
    if not isinstance(entries, yamlmarks.MDict) or not entries:
        raise ContextError("`contexts:` must be a non-empty mapping of name -> settings",
                           mark=doc.mark_of("contexts") if "contexts" in doc else doc.mark)
    defs: dict[str, ContextDef] = {}
    for name, body in entries.items():
        defs[str(name)] = _parse_entry(str(name), body, entries.key_marks.get(name, entries.mark))
    defaults = [d.name for d in defs.values() if d.is_default]
    if len(defaults) > 1:
        raise ContextError(f"more than one context says `default: true`: {', '.join(defaults)}",
                           mark=defs[defaults[1]].mark)
    if defaults:
        default_name = defaults[0]
    else:  # `local` always exists (implicitly when not declared): never run on a remote host unasked
        default_name = "local"
    groups = _parse_groups(doc.get("groups"), defs, doc.mark_of("groups") if "groups" in doc else None)
    return Contexts(defs, default_name, groups, source)


def _parse_entry(name: str, body: Any, name_mark: Mark) -> ContextDef:
    """One `name: {type: ..., ...}` entry -> ContextDef."""
    if not isinstance(body, yamlmarks.MDict):
        raise ContextError(f"context {name!r} must be a mapping with at least `type:`",
                           mark=yamlmarks.mark_of(body, name_mark))
    kind = body.get("type")
    if kind is None:
        raise ContextError(f"context {name!r} has no `type:` (one of: {', '.join(known_types())})",
                           mark=body.mark)
    settings_cls = settings_class(str(kind))
    if settings_cls is None:
        raise ContextError(f"context {name!r}: unknown type {kind!r}" + did_you_mean(str(kind), known_types()),
                           mark=body.mark_of("type"))
    default = body.get("default", False)
    if not isinstance(default, bool):
        raise ContextError(f"context {name!r}: `default` must be true or false", mark=body.mark_of("default"))
    description = body.get("description", "")
    values = {k: v for k, v in body.items() if k not in RESERVED_KEYS}
    settings = build_settings(settings_cls, values, f"context {name!r}", body)
    return ContextDef(name, str(kind), settings, body.mark, default, str(description or ""))


def _parse_groups(raw: Any, defs: dict[str, ContextDef], mark: Mark | None) -> dict[str, list[str]]:
    """`groups: {name: [context, ...]}`; members are contexts, other groups or glob patterns."""
    if raw is None:
        return {}
    if not isinstance(raw, yamlmarks.MDict):
        raise ContextError("`groups:` must be a mapping of group name -> list of context names", mark=mark)
    groups: dict[str, list[str]] = {}
    for gname, members in raw.items():
        if str(gname) in defs:
            raise ContextError(f"group {gname!r} has the same name as a context",
                               mark=raw.key_marks.get(gname, raw.mark))
        if isinstance(members, str):
            members = [members]
        if not isinstance(members, list):
            raise ContextError(f"group {gname!r} must be a list of context names",
                               mark=raw.mark_of(gname))
        groups[str(gname)] = [str(m) for m in members]
    for gname, members in groups.items():
        for i, m in enumerate(members):
            if m in defs or m in groups or any(c in m for c in "*?["):
                continue
            member_mark = yamlmarks.mark_of(raw[gname][i] if isinstance(raw[gname], list) else raw[gname],
                                            raw.mark_of(gname))
            raise ContextError(f"group {gname!r}: unknown context {m!r}" + did_you_mean(m, list(defs)),
                               mark=member_mark)
    return groups


def known_types() -> list[str]:
    """Every `type:` name a context can have."""
    for kind in ("local", "ssh", "kubernetes"):
        settings_class(kind)
    return sorted(set(REGISTRY) | {"local"})


def settings_class(kind: str) -> type | None:
    """The settings dataclass of target type `kind`, importing its module on first use."""
    # `<kind>settings` first: a type may keep its settings apart from its (heavier) target module
    for module in (f"clipipe.targets.{kind}settings", f"clipipe.targets.{kind}"):
        if kind in REGISTRY or not kind.isidentifier():
            break
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    if kind in REGISTRY:
        return REGISTRY[kind][0]
    if kind == "local":
        return _NoSettings           # until clipipe.targets.local lands
    return None


def build_settings(cls: type, values: dict[str, Any], what: str, owner: Any = None) -> Any:
    """Instantiate settings dataclass `cls` from `values`, checking names and types."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        mark = _value_mark(owner, key)
        if key not in fields:
            allowed = [n for n in fields] + list(RESERVED_KEYS)
            raise ContextError(f"{what}: unknown setting {key!r}" + did_you_mean(str(key), allowed)
                               + (f" (allowed: {', '.join(allowed)})" if allowed else ""),
                               mark=_key_mark(owner, key))
        kwargs[key] = _coerce(value, hints[key], f"{what}: `{key}`", mark)
    missing = [f.name for f in fields.values()
               if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
               and f.name not in kwargs]
    if missing:
        raise ContextError(f"{what}: missing required setting(s): {', '.join(missing)}",
                           mark=yamlmarks.mark_of(owner))
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ContextError(f"{what}: {exc}", mark=yamlmarks.mark_of(owner)) from exc


def _coerce(value: Any, hint: Any, what: str, mark: Mark | None) -> Any:
    """Check `value` against a type hint; plain Python values come back (marks dropped)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, what, mark)
            except ContextError as exc:
                errors.append(exc)
        raise errors[0] if errors else ContextError(f"{what} has the wrong type", mark=mark)
    if origin is typing.Literal:
        if value in args:
            return type(value)(value) if not isinstance(value, bool) else value
        raise ContextError(f"{what} must be one of: {', '.join(map(str, args))} (got {value!r})", mark=mark)
    if origin in (list, tuple):
        items = value if isinstance(value, list) else [value] if isinstance(value, str) else None
        if items is None:
            raise ContextError(f"{what} must be a list", mark=mark)
        inner = args[0] if args else Any
        return [_coerce(v, inner, what, yamlmarks.mark_of(v, mark)) for v in items]
    if origin is dict:
        if not isinstance(value, dict):
            raise ContextError(f"{what} must be a mapping", mark=mark)
        return {str(k): _plain(v) for k, v in value.items()}
    if hint is Any:
        return _plain(value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ContextError(f"{what} must be true or false (got {value!r})", mark=mark)
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return int(value)
        raise ContextError(f"{what} must be an integer (got {value!r})", mark=mark)
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ContextError(f"{what} must be a number (got {value!r})", mark=mark)
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ContextError(f"{what} must be a string (got {value!r})", mark=mark)
    return _plain(value)


def _plain(value: Any) -> Any:
    """Strip mark subclasses so settings hold ordinary Python values."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    for t in (str, int, float):
        if isinstance(value, t):
            return t(value)
    return value


def _value_mark(owner: Any, key: str) -> Mark | None:
    return owner.mark_of(key) if isinstance(owner, yamlmarks.MDict) else None


def _key_mark(owner: Any, key: str) -> Mark | None:
    if isinstance(owner, yamlmarks.MDict):
        return owner.key_marks.get(key, owner.mark)
    return None


@dataclass
class Contexts:
    """The loaded contexts.yaml: definitions, groups, the default, and one target per name per run."""

    defs: dict[str, ContextDef]
    default_name: str
    groups: dict[str, list[str]] = field(default_factory=dict)
    source: str = EMBEDDED_SOURCE
    _targets: dict[str, Target] = field(default_factory=dict, repr=False)

    def names(self) -> list[str]:
        """Context names in file order."""
        return list(self.defs)

    def get(self, name: str) -> ContextDef:
        """The definition of context `name`; an unknown name is a ContextError with a suggestion."""
        try:
            return self.defs[name]
        except KeyError:
            local_cls = settings_class("local")
            if name == IMPLICIT_LOCAL and local_cls is not None:
                return ContextDef(IMPLICIT_LOCAL, "local", local_cls(), description="this machine (implicit)")
            raise ContextError(f"unknown context {name!r}" + did_you_mean(name, self.defs),
                               hint=f"contexts from {self.source}: {', '.join(self.defs)}") from None

    def variant(self, name: str, suffix: str, **overrides: Any) -> str:
        """A derived context `name:suffix` whose settings differ by `overrides` (e.g. another pod)."""
        derived = f"{name}:{suffix}"
        if derived not in self.defs:
            d = self.get(name)
            try:
                settings = dataclasses.replace(d.settings, **overrides)
            except TypeError as exc:
                raise ContextError(f"context {name!r} ({d.type}) has no setting for {suffix!r}",
                                   mark=d.mark) from exc
            self.defs[derived] = ContextDef(derived, d.type, settings, d.mark, False, d.description)
        return derived

    def make_target(self, name: str) -> Target:
        """The (cached) target of context `name`: one instance per name for the whole run."""
        if name in self._targets:
            return self._targets[name]
        d = self.get(name)
        settings_class(d.type)
        if d.type not in REGISTRY:
            raise ContextError(f"context {name!r}: target type {d.type!r} is not available yet",
                               mark=d.mark)
        target = REGISTRY[d.type][1](name, d.settings)
        bind = getattr(target, "bind_contexts", None)
        if callable(bind):
            bind(self)
        self._targets[name] = target
        return target

    def opened_targets(self) -> dict[str, Target]:
        """The targets made so far in this run."""
        return dict(self._targets)

    async def close_all(self) -> None:
        """Close every target made by this object (ignoring errors: this runs at the end)."""
        targets, self._targets = list(self._targets.values()), {}
        for t in targets:
            try:
                await t.close()
            except Exception:  # noqa: BLE001 - closing must reach every target
                pass

"""Components (sources, steps, outputs) registered by name, each describing its own config.

A component is one class per file: `summary`, a `Config` dataclass whose fields carry
`description`/`examples` in their metadata (see `option`), YAML `examples`, and lifecycle methods.
`parse_config` validates a marked YAML mapping against a `Config` (unknown keys, wrong types, missing
required fields) and raises SpecError pointing at the user's file:line:col. `explain` and the
every-example-validates test are driven by the same spec.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Callable, Literal, Protocol, TypeVar, Union, overload

from clipipe.errors import Mark, SpecError
from clipipe.spec.yamlmarks import mark_of

KINDS = ("source", "step", "output")


class ComponentClass(Protocol):
    """A registered component class: its `Config` dataclass, what `register` and the base class set."""

    Config: type[Any]
    type_name: str
    kind: str
    summary: str
    examples: list[str]

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


class StepClass(ComponentClass, Protocol):
    """A registered step class: also turns its short form into the Config mapping."""

    def shorthand(self, value: Any) -> Any: ...


_REGISTRY: dict[str, dict[str, ComponentClass]] = {k: {} for k in KINDS}
#: a Config field type: a list of record steps kept as written (marks and all), for components that
#: build steps of their own with the pipeline's step builder (the `route` step's handlers)
StepList = typing.NewType("StepList", list)
T = TypeVar("T")
REQUIRED: Any = dataclasses.MISSING


def option(description: str, default: Any = REQUIRED, *, examples: list[Any] | None = None,
           factory: Callable[[], Any] | None = None) -> Any:
    """A Config field that documents itself; no default (and no factory) means required."""
    meta = {"description": description, "examples": examples or []}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    if default is REQUIRED:
        return dataclasses.field(metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def register(kind: str, name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: make a component available as `type: name` for `kind`."""
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}")

    def deco(cls: type[T]) -> type[T]:
        cls.type_name = name  # type: ignore[attr-defined]
        cls.kind = kind  # type: ignore[attr-defined]
        _REGISTRY[kind][name] = typing.cast(ComponentClass, cls)
        return cls
    return deco


def _load_builtins() -> None:
    """Import the built-in component modules so their decorators run."""
    from clipipe.records import outputs, sources, steps  # noqa: F401


@overload
def lookup(kind: Literal["step"], name: Any, mark: Mark | None) -> StepClass: ...
@overload
def lookup(kind: str, name: Any, mark: Mark | None) -> ComponentClass: ...
def lookup(kind: str, name: Any, mark: Mark | None) -> ComponentClass:
    """The component class registered as `name`, or a SpecError listing the known ones."""
    _load_builtins()
    table = _REGISTRY[kind]
    if not isinstance(name, str) or name not in table:
        known = ", ".join(sorted(table))
        raise SpecError(f"unknown {kind} type {name!r} (known: {known})", mark=mark)
    return table[name]


@overload
def components(kind: Literal["step"]) -> dict[str, StepClass]: ...
@overload
def components(kind: str) -> dict[str, ComponentClass]: ...
def components(kind: str) -> dict[str, Any]:  # the overloads above give the precise types
    """All registered components of `kind`, by name."""
    _load_builtins()
    return dict(_REGISTRY[kind])


# -- config validation -----------------------------------------------------------------------------

def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is StepList:
        return "a list of steps"
    if tp is Any:
        return "any value"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(tp, str(tp))


def _plain(value: Any) -> Any:
    """Strip the marked YAML types down to plain dict/list/str/int/float."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return value


def convert(tp: Any, value: Any, mark: Mark | None, where: str) -> Any:
    """Check `value` against the annotation `tp` and return it as plain Python values."""
    m = mark_of(value, mark)
    origin = typing.get_origin(tp)
    if tp is StepList:
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected a list of steps, got {_describe(value)}", mark=m)
        return value
    if tp is Any:
        return _plain(value)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return convert(a, value, mark, where)
            except SpecError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        raise SpecError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}", mark=m)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
            raise SpecError(f"{where}: expected one of {', '.join(map(repr, choices))}, got {value!r}",
                            mark=m)
        return _plain(value)
    if origin is list:
        if not isinstance(value, list):
            raise SpecError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}", mark=m)
        (item,) = typing.get_args(tp)
        return [convert(item, v, m, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise SpecError(f"{where}: expected a mapping, got {_describe(value)}", mark=m)
        _, vt = typing.get_args(tp)
        return {str(k): convert(vt, v, m, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return parse_config(typing.cast("type[Any]", tp), value, m, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise SpecError(f"{where}: expected true or false, got {_describe(value)}", mark=m)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(f"{where}: expected an integer, got {_describe(value)}", mark=m)
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(f"{where}: expected a number, got {_describe(value)}", mark=m)
        return float(value)
    if tp is str:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise SpecError(f"{where}: expected a string, got {_describe(value)}", mark=m)
        return str(value)
    raise TypeError(f"unsupported config type {tp!r}")


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"{str(value).lower()}"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(_plain(value))


def fields_of(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The dataclass fields of a Config with their resolved type annotations."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def parse_config(cls: type[T], doc: Any, mark: Mark | None, where: str,
                 ignore: tuple[str, ...] = ()) -> T:
    """Build `cls` (a Config dataclass) from a marked mapping, raising SpecError on any mistake."""
    m = mark_of(doc, mark)
    if not isinstance(doc, dict):
        raise SpecError(f"{where}: expected a mapping, got {_describe(doc)}", mark=m)
    flds = fields_of(cls)
    known = {f.name for f, _ in flds}
    for key in doc:
        if key in ignore:
            continue
        if key not in known:
            km = getattr(doc, "key_marks", {}).get(key, m)
            raise SpecError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})",
                            mark=km)
    kwargs: dict[str, Any] = {}
    for f, tp in flds:
        if f.name in doc:
            vm = doc.mark_of(f.name) if hasattr(doc, "mark_of") else m
            kwargs[f.name] = convert(tp, doc[f.name], vm, f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            raise SpecError(f"{where}: missing required key {f.name!r} ({f.metadata.get('description', '')})",
                            mark=m)
    return cls(**kwargs)


def explain(kind: str, name: str) -> str:
    """A plain-text description of a component: summary, fields, examples."""
    cls = lookup(kind, name, None)
    lines = [f"{kind} {name}: {cls.summary}", "", "fields:"]
    _explain_fields(cls.Config, lines, "  ")
    for ex in getattr(cls, "examples", []):
        lines += ["", "example:", ex.rstrip()]
    return "\n".join(lines)


def _explain_fields(config: type, lines: list[str], indent: str) -> None:
    """One entry per field; a nested Config (a mapping of its own fields) is listed under its field."""
    for f, tp in fields_of(config):
        default = "" if f.default is dataclasses.MISSING else f" (default: {f.default!r})"
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            default = " (required)"
        lines.append(f"{indent}{f.name}: {_type_name(tp)}{default}")
        lines.append(f"{indent}    {f.metadata.get('description', '')}")
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        if typing.get_origin(tp) is list:
            inner = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        for sub in inner:
            _explain_fields(typing.cast("type[Any]", sub), lines, indent + "    ")

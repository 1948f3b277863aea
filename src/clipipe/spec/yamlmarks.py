"""YAML loading that remembers where every mapping, key and value came from.

`load(path)` returns plain-looking `MDict`/`MList`/`MStr`... values that carry a `Mark` (file, line,
column), so validation anywhere downstream can point at the user's file:line:col. Duplicate keys are
an error (PyYAML silently keeps the last one).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, overload

import yaml

from clipipe.errors import Mark, SpecError


class MDict(dict):
    """A mapping with the mark of the mapping and of each key."""

    mark: Mark
    key_marks: dict[Any, Mark]

    def mark_of(self, key: Any) -> Mark:
        """The mark of `key`'s value if it has one, else of the key, else of the mapping."""
        value = self.get(key)
        vm = getattr(value, "mark", None)
        if isinstance(vm, Mark):
            return vm
        return self.key_marks.get(key, self.mark)


class MList(list):
    """A sequence with its mark."""

    mark: Mark


class MStr(str):
    """A string with its mark."""

    mark: Mark


class MInt(int):
    """An int with its mark."""

    mark: Mark


class MFloat(float):
    """A float with its mark."""

    mark: Mark


@overload
def mark_of(value: Any, default: Mark) -> Mark: ...
@overload
def mark_of(value: Any, default: Mark | None = None) -> Mark | None: ...
def mark_of(value: Any, default: Mark | None = None) -> Mark | None:
    """The mark carried by a loaded value, or `default`."""
    m = getattr(value, "mark", None)
    return m if isinstance(m, Mark) else default


def _mark(node: yaml.Node, file: str) -> Mark:
    return Mark(file, node.start_mark.line + 1, node.start_mark.column + 1)


#: libyaml's parser when PyYAML was built with it (5x faster on big files), else the pure-Python one.
_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _MarkedLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """SafeLoader that wraps results in marked types."""

    filename = "<string>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> MDict:  # type: ignore[override]
        self.flatten_mapping(node)
        result = MDict()
        result.mark = _mark(node, self.filename)
        result.key_marks = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise SpecError("a mapping key must be a scalar", mark=_mark(key_node, self.filename)) from exc
            if key in result:
                first = result.key_marks[key]
                raise SpecError(f"duplicate key {key!r} (first defined at line {first.line})",
                                mark=_mark(key_node, self.filename))
            result[key] = self.construct_object(value_node, deep=True)
            result.key_marks[key] = _mark(key_node, self.filename)
        return result

    def construct_sequence(self, node: yaml.SequenceNode, deep: bool = False) -> MList:  # type: ignore[override]
        result = MList(self.construct_object(child, deep=True) for child in node.value)
        result.mark = _mark(node, self.filename)
        return result

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        value = super().construct_object(node, deep=True)
        mark = _mark(node, self.filename)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, str) and not isinstance(value, MStr):
            value = MStr(value)
        elif isinstance(value, int) and not isinstance(value, MInt):
            value = MInt(value)
        elif isinstance(value, float) and not isinstance(value, MFloat):
            value = MFloat(value)
        else:
            return value
        value.mark = mark
        return value


_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _MarkedLoader.construct_mapping)
_MarkedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _MarkedLoader.construct_sequence)


def loads(text: str, filename: str = "<string>") -> Any:
    """Parse YAML text into marked values; syntax errors become SpecError with the position."""
    loader = _MarkedLoader(text)
    loader.filename = filename
    try:
        return loader.get_single_data()
    except SpecError:
        raise
    except yaml.MarkedYAMLError as exc:
        pm = exc.problem_mark or exc.context_mark
        mark = Mark(filename, pm.line + 1, pm.column + 1) if pm else Mark(filename)
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"invalid YAML: {problem}", mark=mark) from exc
    except yaml.YAMLError as exc:
        raise SpecError(f"invalid YAML: {exc}", mark=Mark(filename)) from exc
    finally:
        loader.dispose()


def load(path: str | Path) -> Any:
    """Read and parse a YAML file into marked values; a missing file is a SpecError."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SpecError(f"no such file: {p}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"can't read {p}: {exc}") from exc
    return loads(text, str(p))

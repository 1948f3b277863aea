"""`-c` expressions: which contexts a run targets.

    web1                one context
    web                 a group (groups hold contexts, other groups and globs; cycles are refused)
    'web-*'             a glob over context names (fnmatch: `*`, `?`, `[...]`)
    web1,db,'cache-?'   a comma list: the union, in the order written
    all                 every context (a group the user names `all` takes precedence)
    'web-*,!web-3'      `!TERM` excludes what TERM selects (applied after every include, like Ansible);
                        an expression of exclusions only starts from `all`
    --limit EXPR        the same grammar; the result is intersected with it

The result is an ordered list of context names without duplicates: terms in the order written,
a group's members in the group's order, a glob's matches in definition order. Unknown names are
ContextErrors listing the close matches.
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence

from clipipe.errors import ContextError

#: The name that selects every context.
ALL = "all"

#: Characters that make a term a glob.
GLOB_CHARS = "*?["


def is_glob(term: str) -> bool:
    """True when `term` is a glob pattern rather than a name."""
    return any(c in term for c in GLOB_CHARS)


class Selector:
    """Resolves `-c` expressions against context names and groups."""

    def __init__(self, names: Sequence[str], groups: Mapping[str, Sequence[str]],
                 everything: Sequence[str] | None = None, source: str = "") -> None:
        self.names = list(names)
        self.known = set(self.names)
        self.groups = {g: list(m) for g, m in groups.items()}
        self.everything = list(everything) if everything is not None else self.names
        self.source = source

    def select(self, expr: str, limit: str | None = None) -> list[str]:
        """The contexts `expr` selects, intersected with `limit` when given; never empty."""
        chosen = self._expression(expr, "-c")
        if limit is not None and limit.strip():
            allowed = set(self._expression(limit, "--limit"))
            chosen = [n for n in chosen if n in allowed]
            if not chosen:
                raise ContextError(f"--limit {limit!r} leaves none of the contexts {expr!r} selects")
        return chosen

    def _expression(self, expr: str, what: str) -> list[str]:
        terms = [t.strip() for t in expr.split(",")]
        if not any(terms):
            raise ContextError(f"{what}: empty selection", hint="name a context, a group, a glob or `all`")
        include: list[str] = []
        exclude: set[str] = set()
        includes_seen = False
        for term in terms:
            if not term:
                continue
            if term.startswith("!"):
                exclude.update(self._term(term[1:].strip(), what))
            else:
                includes_seen = True
                include.extend(self._term(term, what))
        if not includes_seen:
            include = list(self.everything)
        out = [n for n in dict.fromkeys(include) if n not in exclude]
        if not out:
            raise ContextError(f"{what} {expr!r} selects no context")
        return out

    def _term(self, term: str, what: str) -> list[str]:
        if not term:
            raise ContextError(f"{what}: `!` must be followed by a name, a group or a glob")
        if term in self.groups:
            return self.expand_group(term)
        if term in self.known:
            return [term]
        if term == ALL:
            return list(self.everything)
        if is_glob(term):
            found = self._glob(term)
            if not found:
                raise ContextError(f"{what}: {term!r} matches no context",
                                   hint=self._listing())
            return found
        raise ContextError(f"{what}: unknown context or group {term!r}" + self._close(term),
                           hint=self._listing())

    def _glob(self, pattern: str) -> list[str]:
        return [n for n in self.names if fnmatch.fnmatchcase(n, pattern)]

    def expand_group(self, group: str) -> list[str]:
        """A group's contexts, nested groups and globs expanded; a cycle is a ContextError."""
        return list(dict.fromkeys(self._expand(group, [])))

    def _expand(self, group: str, path: list[str]) -> Iterable[str]:
        if group in path:
            cycle = " -> ".join(path[path.index(group):] + [group])
            raise ContextError(f"groups form a cycle: {cycle}")
        for member in self.groups[group]:
            if member in self.groups:
                yield from self._expand(member, path + [group])
            elif member in self.known:
                yield member
            elif member == ALL:
                yield from self.everything
            elif is_glob(member):
                yield from self._glob(member)
            else:
                raise ContextError(f"group {group!r}: unknown context {member!r}" + self._close(member))

    def _close(self, word: str) -> str:
        close = difflib.get_close_matches(word, self.names + list(self.groups), n=3, cutoff=0.5)
        return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""

    def _listing(self) -> str:
        names = ", ".join(self.names[:12]) + (", ..." if len(self.names) > 12 else "")
        groups = ", ".join(list(self.groups)[:12]) + (", ..." if len(self.groups) > 12 else "")
        where = f" from {self.source}" if self.source else ""
        return f"contexts{where}: {names}" + (f"; groups: {groups}" if groups else "")


def select(contexts: object, expr: str, limit: str | None = None) -> list[str]:
    """Resolve `expr` (and `--limit`) against a loaded Contexts (or anything with names() and groups)."""
    names = contexts.names()  # type: ignore[attr-defined]
    everything = getattr(contexts, "all_names", None)
    return Selector(names, getattr(contexts, "groups", {}) or {},
                    everything() if callable(everything) else None,
                    getattr(contexts, "source", "")).select(expr, limit)

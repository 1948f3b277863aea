"""`-c` selection: names, groups (nested, cycles), globs, comma lists, `all`, exclusions, --limit."""
from __future__ import annotations

import pytest

from clipipe.errors import ContextError
from clipipe.targets.contexts import parse_contexts
from clipipe.targets.selection import Selector, select

NAMES = ["local", "web-1", "web-2", "web-3", "db-1", "db-2", "cache"]
GROUPS = {
    "web": ["web-1", "web-2", "web-3"],
    "db": ["db-*"],
    "backend": ["db", "cache"],
    "prod": ["web", "backend", "web-1"],
}


@pytest.fixture
def sel() -> Selector:
    return Selector(NAMES, GROUPS)


@pytest.mark.parametrize("expr, expected", [
    ("web-2", ["web-2"]),
    ("web", ["web-1", "web-2", "web-3"]),
    ("web-*", ["web-1", "web-2", "web-3"]),
    ("web-[12]", ["web-1", "web-2"]),
    ("db-?", ["db-1", "db-2"]),
    ("cache,web-2,cache", ["cache", "web-2"]),
    ("backend", ["db-1", "db-2", "cache"]),
    ("prod", ["web-1", "web-2", "web-3", "db-1", "db-2", "cache"]),
    ("all", NAMES),
    ("web-*,!web-3", ["web-1", "web-2"]),
    ("!web-3,web-*", ["web-1", "web-2"]),             # exclusions apply after every include
    ("prod,!backend", ["web-1", "web-2", "web-3"]),
    ("!web,!local", ["db-1", "db-2", "cache"]),        # only exclusions: start from all
    (" web-1 , db-1 ", ["web-1", "db-1"]),
])
def test_expressions(sel: Selector, expr: str, expected: list[str]) -> None:
    assert sel.select(expr) == expected


def test_limit_intersects_in_selection_order(sel: Selector) -> None:
    assert sel.select("prod", limit="cache,web-2") == ["web-2", "cache"]
    assert sel.select("all", limit="db") == ["db-1", "db-2"]
    with pytest.raises(ContextError, match="leaves none"):
        sel.select("web", limit="db")


def test_unknown_name_lists_close_matches(sel: Selector) -> None:
    with pytest.raises(ContextError) as e:
        sel.select("web-4")
    assert "unknown context or group 'web-4'" in str(e.value)
    assert "'web-1'" in str(e.value) and "did you mean" in str(e.value)
    assert "groups: web" in (e.value.hint or "")
    with pytest.raises(ContextError, match="unknown"):
        sel.select("web,!wbe-3")                    # a typo in an exclusion is an error, not a no-op


def test_glob_matching_nothing_and_empty_results(sel: Selector) -> None:
    with pytest.raises(ContextError, match="matches no context"):
        sel.select("api-*")
    with pytest.raises(ContextError, match="selects no context"):
        sel.select("web,!web")
    with pytest.raises(ContextError, match="empty"):
        sel.select(" , ")
    with pytest.raises(ContextError, match="followed by"):
        sel.select("web,!")


def test_group_cycles_are_refused() -> None:
    s = Selector(["a", "b"], {"g1": ["a", "g2"], "g2": ["b", "g3"], "g3": ["g1"]})
    with pytest.raises(ContextError, match="cycle: g1 -> g2 -> g3 -> g1"):
        s.select("g1")
    with pytest.raises(ContextError, match="cycle"):
        Selector(["a"], {"self": ["self"]}).select("self")


def test_a_group_named_all_wins_over_the_keyword() -> None:
    s = Selector(["a", "b", "c"], {"all": ["b"]})
    assert s.select("all") == ["b"]


def test_everything_can_differ_from_names() -> None:
    s = Selector(["local", "h1", "h2"], {}, everything=["h1", "h2"])
    assert s.select("all") == ["h1", "h2"]
    assert s.select("!h1") == ["h2"]
    assert s.select("local") == ["local"]


def test_select_on_contexts_yaml_groups() -> None:
    c = parse_contexts("""\
contexts:
  local: {type: local, default: true}
  web-1: {type: ssh, host: a}
  web-2: {type: ssh, host: b}
  db-1: {type: ssh, host: c}
groups:
  web: ['web-*']
  everything: [web, db-1]
""", "contexts.yaml")
    assert select(c, "everything,!web-2") == ["web-1", "db-1"]
    assert select(c, "web", limit="web-2,db-1") == ["web-2"]
    assert select(c, "all") == ["local", "web-1", "web-2", "db-1"]

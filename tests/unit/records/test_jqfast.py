"""The Python fast path of simple jq filters agrees with real jq (libjq through the jq binding)."""
from __future__ import annotations

import jq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipipe.records.sources.sql import mysql_params, qmark_to_format
from clipipe.records.steps.jqfast import JqError, compile_fast

EXPRESSIONS = [
    '.status == "active"', ".data.status == \"active\"", ".n > 3", ".n <= 2.5", ".n != null",
    ".a and .b", ".a or .n", "(.a | not)", ".n == 1", '.s < "m"', ".a == .b", ".data.n >= .n",
    'select(.n > 1)', '.["s"] == "x"', ".items[0] == 1", ".a == false", ".n == true",
    '.n > 1 and (.s == "x" or .a)', ".data", ".missing.deeper == null", ". == null",
]

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(-5, 5, allow_nan=False),
                    st.sampled_from(["active", "x", "m", "zz", ""]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.sampled_from(["a", "n", "s"]), inner, max_size=3)),
                      max_leaves=6)
records = st.fixed_dictionaries({}, optional={
    "status": values, "n": values, "a": values, "b": values, "s": values, "items": values,
    "data": st.one_of(values, st.fixed_dictionaries({}, optional={"status": values, "n": values})),
})


def jq_truth(expr: str, rec: object) -> object:
    try:
        out = jq.compile(f"[limit(1; {expr})] | (length > 0 and (.[0] | . != null and . != false))").input_value(rec).first()
    except ValueError:
        return "error"
    return out


def fast_truth(f, rec: object) -> object:
    try:
        return f(rec)
    except JqError:
        return "error"


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_fast_path_exists(expr: str) -> None:
    assert compile_fast(expr) is not None


@pytest.mark.parametrize("expr", ["map(.x)", ".a | length", ".a + 1 > 2", "has(\"a\")", ".a[]", "$__loc__"])
def test_outside_subset_uses_real_jq(expr: str) -> None:
    assert compile_fast(expr) is None


@settings(max_examples=300, deadline=None)
@given(rec=records, expr=st.sampled_from(EXPRESSIONS))
def test_fast_path_agrees_with_jq(rec: dict, expr: str) -> None:
    assert fast_truth(compile_fast(expr), rec) == jq_truth(expr, rec)


@pytest.mark.parametrize("query, expected", [
    ("SELECT * FROM t WHERE a > ? AND b = ?", "SELECT * FROM t WHERE a > %s AND b = %s"),
    ("SELECT '?', \"?\" , x LIKE 'a%' FROM t WHERE a = ?", "SELECT '?', \"?\" , x LIKE 'a%%' FROM t WHERE a = %s"),
    ("SELECT 5 % 2, ? -- what?\n", "SELECT 5 %% 2, %s -- what?\n"),
])
def test_qmark_to_format(query: str, expected: str) -> None:
    assert qmark_to_format(query) == expected


@pytest.mark.parametrize("dsn, expected", [
    ("user:pass@tcp(db.example:3307)/shop", {"user": "user", "password": "pass", "host": "db.example", "port": 3307,
                                              "database": "shop"}),
    ("root:@tcp(127.0.0.1:3306)/test?charset=utf8", {"user": "root", "password": "", "host": "127.0.0.1",
                                                      "port": 3306, "database": "test", "charset": "utf8"}),
    ("u@unix(/run/mysqld.sock)/d", {"user": "u", "unix_socket": "/run/mysqld.sock", "database": "d"}),
    ("mysql://u:p%40ss@h:3310/d", {"user": "u", "password": "p@ss", "host": "h", "port": 3310, "database": "d"}),
])
def test_mysql_dsn(dsn: str, expected: dict) -> None:
    got = mysql_params(dsn)
    for k, v in expected.items():
        assert got[k] == v

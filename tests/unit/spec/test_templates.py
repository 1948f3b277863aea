"""Template substitution: nesting, loops, and shell quoting that no value can escape."""
from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipipe.errors import TemplateError
from clipipe.spec import templates

#: Values that would run code if substituted naively.
INJECTIONS = ["$(touch {canary})", "`touch {canary}`", "; touch {canary}", "| touch {canary}",
              "\ntouch {canary}", "' ; touch {canary}; '", '" ; touch {canary}; "', "&& touch {canary}",
              "$((1+1))${{HOME}}", "\\'; touch {canary} #", "a\\", "*", "~", "-n"]


def sh(command: str) -> str:
    """Run a command with /bin/sh and return its stdout."""
    return subprocess.run(["sh", "-c", command], capture_output=True, check=True).stdout.decode()


@pytest.mark.parametrize("template", ["printf '%s' {{.v}}", "printf '%s' \"{{.v}}\"",
                                      "printf '%s' '{{.v}}'", "printf '%s' x{{.v}}y"])
@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_corpus_runs_nothing(tmp_path, template, payload):
    canary = tmp_path / "pwned"
    value = payload.format(canary=canary)
    out = sh(templates.render(template, {"v": value}, shell=True))
    assert not canary.exists()
    expected = ("x" + value + "y") if "x{{" in template else value
    assert out == expected


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40))
def test_any_value_round_trips_through_the_shell(value):
    for template in ("printf '%s' {{.v}}", "printf '%s' \"{{.v}}\"", "printf '%s' '{{.v}}'"):
        assert sh(templates.render(template, {"v": value}, shell=True)) == value


def test_raw_opts_out_of_quoting():
    assert templates.render("echo {{.v | raw}}", {"v": "a b"}, shell=True) == "echo a b"


def test_filters_and_dotted_lookup():
    values = {"p": "/srv/data/", "m": {"k": "v"}}
    assert templates.render("{{.p|basename}} {{ .m.k | upper }}", values, shell=False) == "data V"


def test_unknown_name_lists_known_ones():
    with pytest.raises(TemplateError, match=r"unknown template value \{\{\.nope\}\} \(known: a\)"):
        templates.render("{{.nope}}", {"a": 1}, shell=False)


def test_malformed_placeholder_is_reported():
    with pytest.raises(TemplateError, match="malformed"):
        templates.check_syntax("echo {{name}}")
    with pytest.raises(TemplateError, match="unknown template filter"):
        templates.check_syntax("echo {{.x | shout}}")


def test_nested_resolution_and_loop_detection():
    values = templates.resolve_all({"b": "/backups/{{.name}}-{{.date}}", "f": "{{.b}}.tar.gz"},
                                   {"name": "p", "date": "2026-11-23"})
    assert values["f"] == "/backups/p-2026-11-23.tar.gz"
    with pytest.raises(TemplateError, match="a -> b -> c -> a"):
        templates.resolve_all({"a": "{{.b}}", "b": "{{.c}}", "c": "{{.a}}"}, {})

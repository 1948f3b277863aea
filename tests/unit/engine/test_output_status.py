"""The Console's live status line: erased before every write, redrawn after, gone after clear_status."""
from __future__ import annotations

import io

from clipipe.engine.output import Console


def test_status_line_is_erased_before_each_line_and_redrawn_after() -> None:
    out, err = io.StringIO(), io.StringIO()
    c = Console(out=out, err=err)
    n = iter(range(100))
    c.status = lambda: f"status {next(n)}"
    c.redraw()
    c.line("to stdout")
    c.line("to stderr", err=True)
    c.block(["b1", "b2"], err=True)
    c.clear_status()
    c.line("after")
    assert out.getvalue() == "to stdout\nafter\n"
    assert err.getvalue() == ("status 0" "\r\033[K" "status 1" "\r\033[K" "to stderr\n" "status 2"
                              "\r\033[K" "b1\nb2\n" "status 3" "\r\033[K")


def test_without_a_status_nothing_extra_is_written() -> None:
    out, err = io.StringIO(), io.StringIO()
    c = Console(out=out, err=err)
    c.redraw()
    c.line("x", err=True)
    c.clear_status()
    assert err.getvalue() == "x\n" and out.getvalue() == ""

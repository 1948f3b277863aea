"""Progress display: pv-style formatting, plain lines for logs, rich lines on a terminal, quiet."""
from __future__ import annotations

import io
import os
import time

import pytest

from clipipe import fastpipe
from clipipe.fastpipe import Snapshot
from clipipe.progress import (
    ProgressDisplay, format_bar, format_bytes, format_eta, format_line, format_rate,
)

MiB = 1 << 20


@pytest.mark.parametrize("n, text", [
    (0, "0B"), (512, "512B"), (1023, "1023B"), (1024, "1.0KiB"), (1536, "1.5KiB"),
    (452 * MiB, "452MiB"), (1 << 30, "1.0GiB"), (99.94 * MiB, "99.9MiB"), (5 << 40, "5.0TiB"),
])
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


def test_format_rate_and_eta() -> None:
    assert format_rate(23.1 * MiB) == "23.1MiB/s"
    assert format_eta(21) == "0:00:21"
    assert format_eta(3723.4) == "1:02:03"
    assert format_eta(None) == "-:--:--"
    assert format_eta(float("inf")) == "-:--:--"


def test_format_bar() -> None:
    assert format_bar(0.0, 10) == "[>         ]"
    assert format_bar(45.2, 10) == "[====>     ]"
    assert format_bar(100.0, 10) == "[==========]"
    unknown = format_bar(None, 10, tick=3)
    assert len(unknown) == 12 and "<=>" in unknown


def _snap(**kw) -> Snapshot:
    base = dict(bytes=452 * MiB, total=1 << 30, elapsed=20.0, rate=23.1 * MiB, avg_rate=22.6 * MiB,
                peak_rate=30 * MiB, eta=21.0, percent=44.14, done=False)
    base.update(kw)
    return Snapshot(**base)


def test_format_line_like_pv() -> None:
    line = format_line("backup", _snap(), bar_width=10)
    assert line == "backup [====>     ]  44.1% 452MiB/1.0GiB 23.1MiB/s ETA 0:00:21"
    assert format_line("backup", _snap()) == "backup  44.1% 452MiB/1.0GiB 23.1MiB/s ETA 0:00:21"


def test_format_line_unknown_total_and_done() -> None:
    assert format_line("s", _snap(total=None, percent=None, eta=None)) == "s 452MiB 23.1MiB/s 0:00:20"
    done = _snap(bytes=1 << 30, percent=100.0, eta=0.0, done=True)
    assert format_line("s", done) == "s 100.0% 1.0GiB/1.0GiB 22.6MiB/s in 0:00:20 done"


def _counter(n: int, total: int | None = None, done: bool = False):
    c = fastpipe.Counter(total)
    c.start()
    c.add(n)
    if done:
        c.finish()
    return c


def test_plain_mode_prints_lines_and_final_once() -> None:
    out = io.StringIO()
    d = ProgressDisplay(stream=out, mode="auto", interval=0.05)  # StringIO is no TTY: plain
    assert d.mode == "plain"
    live = _counter(10 * MiB, 100 * MiB)
    d.add("a", live)
    d.add("b", _counter(MiB, done=True))
    with d:
        time.sleep(0.3)
    text = out.getvalue()
    assert "a  10.0% 10.0MiB/100MiB" in text
    assert text.count("b 1.0MiB") == 1 and "done" in text
    assert text.count("\n") >= 3


def test_remove_and_quiet() -> None:
    out = io.StringIO()
    d = ProgressDisplay(stream=out, mode="plain", interval=10)
    d.add("gone", _counter(1))
    d.remove("gone")
    d.remove("never-added")
    d.start()
    d.stop()
    assert out.getvalue() == ""
    q = ProgressDisplay(stream=out, mode="quiet", interval=0.01)
    q.add("x", _counter(5))
    with q:
        time.sleep(0.05)
    assert out.getvalue() == ""


def test_tty_mode_draws_pv_style_lines() -> None:
    out = io.StringIO()
    d = ProgressDisplay(stream=out, mode="tty", interval=0.05)
    d.add("tar", _counter(512 * MiB, 1 << 30))
    d.add("gzip", _counter(3 * MiB))
    with d:
        time.sleep(0.2)
    text = out.getvalue()
    assert "tar [==========>         ]  50.0% 512MiB/1.0GiB" in text
    assert "gzip [" in text and "<=>" in text
    assert "\x1b[" in text  # cursor control: redrawn in place


def test_tracks_a_running_pump() -> None:
    """The display samples a counter that a pump is filling."""
    r, w = os.pipe()
    data = os.urandom(MiB) * 8
    c = fastpipe.Counter(len(data))
    out = io.StringIO()
    with ProgressDisplay(stream=out, mode="plain", interval=0.01) as d:
        d.add("copy", c)
        import threading

        t = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
        t.start()
        fastpipe.pump(r, [], counter=c)
        t.join()
    os.close(r)
    assert out.getvalue().rstrip().endswith("done")
    assert "copy 100.0% 8.0MiB/8.0MiB" in out.getvalue()


def test_bad_mode() -> None:
    with pytest.raises(ValueError):
        ProgressDisplay(mode="loud")  # type: ignore[arg-type]

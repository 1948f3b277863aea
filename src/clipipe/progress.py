"""Live progress for several named streams: pv-style lines on a TTY (rich), plain lines otherwise.

A background thread samples each stream's ``Counter`` (from ``clipipe.fastpipe``) and redraws; the
pumps never wait for it. ``format_*`` helpers are shared by the plain mode and by run summaries.
"""
from __future__ import annotations

import sys
import threading
from typing import IO, Any, Literal

from clipipe.fastpipe import Snapshot

Mode = Literal["auto", "tty", "plain", "quiet"]

#: Redraw period on a terminal: 5 Hz looks live without costing measurable CPU.
TTY_INTERVAL = 0.2
#: Seconds between plain lines (logs, CI): often enough to see a stall, rare enough to read.
PLAIN_INTERVAL = 5.0
#: Bar width in characters between the brackets, as pv's default on an 80-column terminal.
BAR_WIDTH = 20

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(n: float) -> str:
    """Bytes in binary units, 3 significant digits like pv: 512B, 1.0KiB, 23.1MiB, 452MiB."""
    n = float(n)
    if n < 1024:
        return f"{int(n)}B"
    for unit in _UNITS[1:]:
        n /= 1024
        if n < 1024 or unit == _UNITS[-1]:
            break
    return f"{n:.1f}{unit}" if n < 100 else f"{n:.0f}{unit}"


def format_rate(bps: float) -> str:
    """A rate in binary units per second: 23.1MiB/s."""
    return format_bytes(bps) + "/s"


def format_eta(seconds: float | None) -> str:
    """Seconds as H:MM:SS (unknown: -:--:--)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "-:--:--"
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_bar(percent: float | None, width: int = BAR_WIDTH, tick: int = 0) -> str:
    """pv's bar: [=====>    ] for a known size, a moving <=> when the size is unknown."""
    if percent is None:
        pos = tick % (2 * (width - 3)) if width > 3 else 0
        pos = pos if pos <= width - 3 else 2 * (width - 3) - pos
        return "[" + " " * pos + "<=>" + " " * (width - 3 - pos) + "]"
    filled = int(width * min(max(percent, 0.0), 100.0) / 100)
    if filled >= width:
        return "[" + "=" * width + "]"
    return "[" + "=" * filled + ">" + " " * (width - filled - 1) + "]"


def format_line(name: str, snap: Snapshot, *, bar_width: int = 0, tick: int = 0) -> str:
    """One stream as text: `name [==>  ] 45.2% 452MiB/1.0GiB 23.1MiB/s ETA 0:00:21` (bar optional)."""
    parts = [name]
    if bar_width:
        parts.append(format_bar(snap.percent, bar_width, tick))
    if snap.percent is not None:
        parts.append(f"{snap.percent:5.1f}%")
    size = format_bytes(snap.bytes)
    parts.append(f"{size}/{format_bytes(snap.total)}" if snap.total is not None else size)
    if snap.done:
        parts.append(f"{format_rate(snap.avg_rate)} in {format_eta(snap.elapsed)} done")
    else:
        parts.append(format_rate(snap.rate))
        if snap.total is not None:
            parts.append(f"ETA {format_eta(snap.eta)}")
        else:
            parts.append(format_eta(snap.elapsed))
    return " ".join(parts)


class ProgressDisplay:
    """Shows the counters added to it until stop(); mode auto = tty on a terminal, else plain."""

    def __init__(self, *, stream: IO[str] | None = None, mode: Mode = "auto",
                 interval: float | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "tty" if isatty is not None and isatty() else "plain"
        if mode not in ("tty", "plain", "quiet"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.mode: Mode = mode
        self.interval = interval if interval is not None else (
            TTY_INTERVAL if mode == "tty" else PLAIN_INTERVAL)
        self._counters: dict[str, Any] = {}
        self._finished: set[str] = set()  # plain mode: streams whose final line was printed
        self._lock = threading.Lock()  # guards the dict against add/remove from other threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live: Any = None
        self._tick = 0

    def add(self, name: str, counter: Any) -> None:
        """Show a stream (a later add with the same name replaces it)."""
        with self._lock:
            self._counters[name] = counter
            self._finished.discard(name)

    def remove(self, name: str) -> None:
        """Stop showing a stream (unknown names are ignored)."""
        with self._lock:
            self._counters.pop(name, None)
            self._finished.discard(name)

    def start(self) -> None:
        """Start the sampling thread (quiet mode: nothing to do)."""
        if self.mode == "quiet" or self._thread is not None:
            return
        if self.mode == "tty":
            from rich.console import Console
            from rich.live import Live

            console = Console(file=self.stream, force_terminal=True, highlight=False)
            self._live = Live(console=console, auto_refresh=False, transient=False)
            self._live.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="clipipe-progress", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Draw the final state and stop the thread."""
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        self.refresh()
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> ProgressDisplay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def lines(self) -> list[str]:
        """The current line of every stream, in the order they were added."""
        with self._lock:
            items = list(self._counters.items())
        self._tick += 1
        width = BAR_WIDTH if self.mode == "tty" else 0
        return [format_line(name, c.snapshot(), bar_width=width, tick=self._tick) for name, c in items]

    def refresh(self) -> None:
        """Sample the counters and draw once."""
        if self.mode == "tty" and self._live is not None:
            from rich.text import Text

            self._live.update(Text("\n".join(self.lines())), refresh=True)
        elif self.mode == "plain":
            self._print_plain()

    def _print_plain(self) -> None:
        with self._lock:
            items = list(self._counters.items())
        out = []
        for name, counter in items:
            snap = counter.snapshot()
            if snap.done:
                if name in self._finished:
                    continue  # its final line is already out
                self._finished.add(name)
            out.append(format_line(name, snap))
        if out:
            self.stream.write("\n".join(out) + "\n")
            self.stream.flush()

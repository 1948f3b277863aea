"""Live output of steps: read their pipes and show lines, prefixed with the step when several run."""
from __future__ import annotations

import asyncio
import collections
import os
import sys
import threading
from typing import IO, Callable

#: Lines of stderr kept per step for error messages and the operation record.
STDERR_TAIL_LINES = 20
#: Largest `output: variable:NAME` capture; more is an error (variables are for short values).
MAX_VARIABLE_BYTES = 16 * 1024 * 1024
#: Read size of the display readers.
READ_SIZE = 64 * 1024


class Console:
    """Serializes writes of many steps to the user's stdout/stderr, one whole line at a time."""

    def __init__(self, out: IO[str] | None = None, err: IO[str] | None = None,
                 scrub: Callable[[str], str] = lambda s: s) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.scrub = scrub
        self._lock = threading.Lock()
        self.prefix_width = 0
        self.host_width = 0          #: width of host names in a fleet run's `host | line` output
        #: A live last line on a terminal stderr (fleet progress): erased before every write, redrawn after.
        self.status: Callable[[], str] | None = None
        self._status_shown = False

    def _write(self, stream: IO[str], text: str) -> None:
        with self._lock:
            if self._status_shown:
                self.err.write("\r\033[K")
                self._status_shown = False
            stream.write(text)
            stream.flush()
            self._draw_status()

    def _draw_status(self) -> None:
        if self.status is not None:
            self.err.write(self.status())
            self.err.flush()
            self._status_shown = True

    def redraw(self) -> None:
        """Redraw the status line (a no-op without one)."""
        if self.status is None:
            return
        with self._lock:
            self.err.write("\r\033[K" if self._status_shown else "")
            self._draw_status()

    def clear_status(self) -> None:
        """Remove the status line for good (before the end-of-run summary)."""
        with self._lock:
            if self._status_shown:
                self.err.write("\r\033[K")
                self.err.flush()
            self.status = None
            self._status_shown = False

    def line(self, text: str, *, prefix: str | None = None, err: bool = False) -> None:
        """Write one line (newline added), with `[prefix] ` when given."""
        stream = self.err if err else self.out
        text = self.scrub(text)
        if prefix:
            text = f"{('[' + prefix + ']').ljust(self.prefix_width + 2)} {text}"
        self._write(stream, text + "\n")

    def note(self, text: str) -> None:
        """A status line of clipipe itself (stderr)."""
        self.line(text, err=True)

    def host_line(self, host: str, text: str, *, err: bool = False) -> None:
        """A fleet run's live line: `host | text`, the host padded to `host_width`."""
        self.line(f"{host.ljust(self.host_width)} | {text}", err=err)

    def block(self, lines: list[str], *, err: bool = False) -> None:
        """Several lines written together (no other host's line lands in between)."""
        stream = self.err if err else self.out
        self._write(stream, "".join(self.scrub(x) + "\n" for x in lines))


async def _read_chunks(fd: int) -> "asyncio.StreamReader":
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2 ** 20, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    await loop.connect_read_pipe(lambda: protocol, os.fdopen(fd, "rb", buffering=0))
    return reader


class LineRelay:
    """Reads a pipe and shows it line by line; keeps the last lines (for stderr tails)."""

    def __init__(self, fd: int, console: Console, *, prefix: str | None, err: bool,
                 keep: int = STDERR_TAIL_LINES) -> None:
        self.fd = fd
        self.console = console
        self.prefix = prefix
        self.err = err
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self.bytes = 0

    async def run(self) -> None:
        """Relay until EOF."""
        reader = await _read_chunks(self.fd)
        pending = b""
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                break
            self.bytes += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                self._emit(raw)
            if len(pending) > READ_SIZE:  # a huge line without newline: show it in pieces
                self._emit(pending)
                pending = b""
        if pending:
            self._emit(pending)

    def _emit(self, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        self.tail.append(text)
        self.console.line(text, prefix=self.prefix, err=self.err)


class Capture:
    """Reads a pipe into memory for `output: variable:NAME` (bounded)."""

    def __init__(self, fd: int, name: str) -> None:
        self.fd = fd
        self.name = name
        self.data = bytearray()
        self.overflow = False

    async def run(self) -> None:
        """Collect until EOF; past MAX_VARIABLE_BYTES keep draining but mark overflow."""
        reader = await _read_chunks(self.fd)
        while True:
            chunk = await reader.read(READ_SIZE)
            if not chunk:
                break
            if len(self.data) + len(chunk) > MAX_VARIABLE_BYTES:
                self.overflow = True
                continue
            self.data += chunk

    @property
    def value(self) -> str:
        """The captured text, trimmed."""
        return self.data.decode("utf-8", errors="replace").strip()


class Sink:
    """Reads a pipe into a file, atomically: a temp file renamed into place only on success."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path
        self.tmp = f"{path}.clipipe-partial-{os.getpid()}"
        self.bytes = 0

    async def run(self) -> None:
        """Write everything to the temp file."""
        reader = await _read_chunks(self.fd)
        with open(self.tmp, "wb") as f:
            while True:
                chunk = await reader.read(READ_SIZE)
                if not chunk:
                    break
                self.bytes += len(chunk)
                f.write(chunk)

    def commit(self) -> None:
        """Rename the temp file into place."""
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        """Remove the temp file (the run failed: no partial output that looks complete)."""
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass

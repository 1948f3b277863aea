"""An incremental parser for JSON message streams: NDJSON, pretty-printed values, values back to back.

Fed bytes chunks as they come out of a pipe, `StreamParser` hands back the complete JSON values seen so
far and keeps the rest. Everything rests on one fact: a JSON string never holds a raw newline, so a
line boundary is never inside a string.

- Only complete lines are decoded (UTF-8 split across chunks is never decoded early).
- Fast path: all complete lines of a chunk go through orjson in one list comprehension; an NDJSON
  stream never leaves it, and the lines' texts are kept, so unchanged records are not re-serialised.
- A line that isn't one value: orjson's error says what it is. "Content after document" is several
  values on a line (split at orjson's position); "unexpected end of data" on a line starting with `{`
  or `[` is the first line of a multi-line value. Its end is looked for at the next line that starts
  with `}` or `]` (where pretty-printers close a top-level value) and orjson confirms it; where that
  guess fails (`indent=0`, odd layouts) a scanner that skips strings and counts brackets decides.
- Errors are counted and returned as `ParseError(offset, line, reason, snippet)`, never raised.
  A garbage line is skipped to its end. A value that can't be finished (a line starting a new
  message while it is open, a string that doesn't end on its line, the end of the stream, or more
  than `max_message_bytes`) is reported at its start, and the lines it swallowed are scanned again
  (each byte at most once), so complete messages after a truncated one are not lost. After a
  skipped value, lines are dropped until one starts (at column 0) with `{` or `[`.

Memory: one chunk, the incomplete last line and an open value, each bounded by `max_message_bytes`.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field
from typing import Any

import orjson

#: the seed's `maxLineSize`: an 8 MiB message is far beyond any event, and bounds the parser's memory
DEFAULT_MAX_MESSAGE_BYTES = 8 << 20
#: characters of a bad line kept in its ParseError (enough to recognise it, never the whole line)
SNIPPET = 60
#: candidate ends a multi-line value may fail as "incomplete" (indent=0 output) before the bracket
#: scanner takes over: bounds the re-parsing to a few passes over the value
MAX_CANDIDATES = 8

#: a whole string (no raw newline inside), a quote that opens a string not closed on its line, a bracket
_TOKEN = re.compile(r'"[^"\\\n]*(?:\\[^\n][^"\\\n]*)*"|"|[{}\[\]]')
#: a line starting (at column 0) with a bracket: where a pretty-printed top-level value opens or closes
_COL0 = re.compile(r"^[{}\[\]]", re.M)
_OPENER = re.compile(r"^[{\[]", re.M)
_PIECE = re.compile(r"\n(?=[{\[])")  # between a line and the next one opening a value at column 0
_SPACE = re.compile(r"\s*")
_INCOMPLETE = "unexpected end of data"            # orjson: a valid prefix of a JSON text
_AFTER = "unexpected content after document"     # orjson: a complete value, then more
_VALUE_START = set('{["-0123456789tfn')
_utf8 = codecs.utf_8_decode


@dataclass
class ParseError:
    """Input the parser skipped: where (byte offset, 1-based line), why, and what it looked like."""

    offset: int
    line: int
    reason: str
    snippet: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The error for the metrics and the operation record."""
        return {"offset": self.offset, "line": self.line, "reason": self.reason, "snippet": self.snippet}

    def __str__(self) -> str:
        where = f"line {self.line} (byte {self.offset})"
        return f"{where}: {self.reason}" + (f": {self.snippet!r}" if self.snippet else "")


@dataclass
class Parsed:
    """What one `feed` produced: values, their JSON texts (None if any was multi-line), errors."""

    values: list[Any] = field(default_factory=list)
    texts: list[str] | None = field(default_factory=list)
    errors: list[ParseError] = field(default_factory=list)
    nbytes: int = 0      #: input bytes of these values (the buffer's byte bound uses it)


def _nbytes(s: str) -> int:
    return len(s) if s.isascii() else len(s.encode("utf-8", "surrogateescape"))


class _Where:
    """Stream offset and line number of positions in one text (a cursor: positions mostly grow)."""

    __slots__ = ("text", "off0", "line0", "pos", "off", "line")

    def __init__(self, text: str, off: int, line: int) -> None:
        self.text, self.off0, self.line0 = text, off, line
        self.pos, self.off, self.line = 0, off, line

    def at(self, p: int) -> tuple[int, int]:
        if p < self.pos:
            self.pos, self.off, self.line = 0, self.off0, self.line0
        seg = self.text[self.pos:p]
        self.off += _nbytes(seg)
        self.line += seg.count("\n")
        self.pos = p
        return self.off, self.line


class StreamParser:
    """Turns a byte stream of JSON values into values: `feed` chunks, then `finish` at the end."""

    def __init__(self, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        if max_message_bytes < 1:
            raise ValueError("max_message_bytes must be positive")
        self.max = max_message_bytes
        self._tail = bytearray()   # input after the last newline
        self._off = 0              # stream offset of _tail[0]
        self._line = 1             # line number of the line _tail starts
        self._skip_line = False    # dropping the rest of an over-long line
        self._discarding = False   # after a skipped value: drop lines until one starts with { or [
        self._pend = ""            # an open value: its complete lines so far, from its first character
        self._pend_off = 0
        self._pend_line = 0
        self._tokens = False       # finding its end with the bracket scanner (else by column-0 closers)
        self._resume = 0           # where in _pend that search goes on
        self._depth = 0            # the scanner's bracket depth at _resume
        self._tries = 0
        self._rescanned_to = 0     # input before this offset was already scanned a second time
        self.messages = 0
        self.bytes = 0
        self.errors = 0

    # -- input ------------------------------------------------------------------------------------

    def feed(self, data: bytes) -> Parsed:
        """Parse a chunk; returns the values it completed (and errors)."""
        out = Parsed()
        self.bytes += len(data)
        if self._skip_line:
            nl = data.find(b"\n")
            if nl < 0:
                self._off += len(data)
                return out
            self._off += nl + 1
            self._line += 1
            self._skip_line = False
            data = data[nl + 1:]
        tail = self._tail
        buf: bytes | bytearray
        if tail:
            tail += data
            buf = tail
        else:
            buf = data
        cut = buf.rfind(b"\n")
        if cut < 0:
            if buf is data:
                self._tail = bytearray(data)
            self._check_tail(out)
            self.messages += len(out.values)
            return out
        with memoryview(buf) as mv:
            text = _utf8(mv[:cut], "surrogateescape", True)[0]
        off, line = self._off, self._line
        self._tail = bytearray(buf[cut + 1:])
        self._off = off + cut + 1
        self._line = line + text.count("\n") + 1
        if self._pend:
            self._resume_open(text, out, off + cut)
        else:
            self._lines(text, off, line, out, off + cut)
        self._check_tail(out)
        self.messages += len(out.values)
        return out

    def finish(self) -> Parsed:
        """The end of the stream: parse what is left; a value still open is an error."""
        out = Parsed()
        if self._tail and not self._skip_line:
            with memoryview(self._tail) as mv:
                text = _utf8(mv, "surrogateescape", True)[0]
            end = self._off + len(self._tail)
            if self._pend:
                self._block(self._pend + "\n" + text, self._pend_off, self._pend_line, out, end, True)
            else:
                self._block(text, self._off, self._line, out, end)
            self._off = end
        self._tail = bytearray()
        while self._pend:
            text = self._pend
            self._give_up(text, 0, _Where(text, self._pend_off, self._pend_line), out,
                          "stream ended inside a message", self._off)
        self._skip_line = self._discarding = False
        self.messages += len(out.values)
        return out

    def _lines(self, text: str, off: int, line: int, out: Parsed, end_off: int) -> None:
        """Complete lines at a line start: the fast paths if the text has their shape, else the scanner."""
        if (self._discarding or end_off - off > self.max or not self._fast(text, end_off - off, out)
                and not self._fast_pretty(text, off, line, out, end_off)):
            self._block(text, off, line, out, end_off)

    def _resume_open(self, text: str, out: Parsed, end_off: int) -> None:
        """New lines while a value is open: finish it, then the rest as usual."""
        whole = self._pend + "\n" + text
        w = _Where(whole, self._pend_off, self._pend_line)
        pos = self._continue(whole, 0, w, out, end_off)
        if pos < 0 or pos >= len(whole):
            return
        if whole[pos] == "\n" and not self._discarding:  # it ended a line: the rest starts one
            o, ln = w.at(pos + 1)
            self._lines(whole[pos + 1:], o, ln, out, end_off)
        else:
            o, ln = w.at(pos)
            self._block(whole[pos:], o, ln, out, end_off)

    def _fast(self, text: str, nbytes: int, out: Parsed) -> bool:
        """Every line one JSON value (NDJSON): all of them at once; False if any isn't."""
        lines = text.split("\n")
        loads = orjson.loads
        try:
            values = [loads(x) for x in lines]
        except orjson.JSONDecodeError:
            return False
        out.values += values
        if out.texts is not None:
            if "\r" in text:
                lines = [x.rstrip("\r") for x in lines]
            out.texts += lines
        out.nbytes += nbytes
        return True

    def _fast_pretty(self, text: str, off: int, line: int, out: Parsed, end_off: int) -> bool:
        """Pretty-printed values (each opening at column 0): cut before every column-0 `{`/`[`
        and parse the pieces at once; the last may go on in the next chunk. False: not that shape."""
        if not text or text[0] not in "{[":
            return False
        pieces = _PIECE.split(text)
        loads = orjson.loads
        try:
            values = [loads(x) for x in pieces[:-1]]
        except orjson.JSONDecodeError:
            return False
        last = pieces[-1]
        out.values += values
        out.nbytes += len(text) - len(last)
        if out.texts is not None:
            if any("\n" in x for x in pieces[:-1]):
                out.texts = None
            else:
                out.texts += pieces[:-1]
        start = len(text) - len(last)
        o, ln = _Where(text, off, line).at(start)
        self._block(last, o, ln, out, end_off)
        return True

    def _check_tail(self, out: Parsed) -> None:
        """An unfinished line (or value) already past the limit is dropped now, not when it ends."""
        n = len(self._tail)
        pend = self._off - self._pend_off if self._pend else 0
        if n + pend <= self.max:
            return
        if self._pend:
            text = self._pend
            self._give_up(text, 0, _Where(text, self._pend_off, self._pend_line), out,
                          f"message larger than max_message_bytes ({self.max})", self._off - 1)
        elif not self._discarding:
            with memoryview(self._tail) as mv:
                head = _utf8(mv[:SNIPPET * 4], "replace", False)[0]
            self._error(out, self._off, self._line, f"message larger than max_message_bytes ({self.max})",
                        head)
        self._off += n
        self._tail = bytearray()
        self._skip_line = True

    # -- complete lines ---------------------------------------------------------------------------

    def _block(self, text: str, off: int, line: int, out: Parsed, end_off: int,
               open_value: bool = False) -> None:
        """Complete lines `text` (no final newline) from stream offset `off`, `line`; `end_off`
        is the offset of their end. With `open_value`, text starts with the open value."""
        w = _Where(text, off, line)
        n = len(text)
        pos = 0
        if open_value:
            pos = self._continue(text, 0, w, out, end_off)
            if pos < 0:
                return
        loads = orjson.loads
        while pos < n:
            if self._discarding:
                m = _OPENER.search(text, pos)
                if m is None:
                    return
                pos = m.start()
                self._discarding = False
            pos = _SPACE.match(text, pos).end()  # type: ignore[union-attr]  # \s* always matches
            if pos >= n:
                return
            eol = text.find("\n", pos)
            if eol < 0:
                eol = n
            seg = text[pos:eol]
            size = _nbytes(seg) if len(seg) * 4 > self.max else len(seg)
            if size > self.max:
                o, ln = w.at(pos)
                self._error(out, o, ln, f"message larger than max_message_bytes ({self.max})", seg)
                self._discarding = True
                pos = eol
                continue
            try:
                value = loads(seg)
            except orjson.JSONDecodeError as exc:
                pos = self._not_one(text, pos, eol, exc, w, out, end_off)
                if pos < 0:
                    return
                continue
            self._emit(out, value, seg.rstrip(), size)
            pos = eol

    def _not_one(self, text: str, pos: int, eol: int, exc: orjson.JSONDecodeError, w: _Where,
                 out: Parsed, end_off: int) -> int:
        """The line from `pos` isn't one value; returns where to go on (-1: a value is open)."""
        c = text[pos]
        if exc.msg == _AFTER:
            end = pos + exc.pos
            part = text[pos:end]
            try:
                value = orjson.loads(part)
            except orjson.JSONDecodeError:  # not expected: orjson said the prefix is a document
                pass
            else:
                part = part.rstrip()
                self._emit(out, value, part, _nbytes(part))
                return end
        elif exc.msg == _INCOMPLETE and c in "{[":
            o, ln = w.at(pos)
            for m in _TOKEN.finditer(text, pos, eol):
                if m.group() == '"':
                    self._error(out, o, ln, "unterminated string", text[pos:eol])
                    self._discarding = True
                    return eol
            self._pend_off, self._pend_line = o, ln
            self._tokens, self._resume, self._depth, self._tries = False, eol, 0, 0
            return self._continue(text, pos, w, out, end_off)
        o, ln = w.at(pos)
        reason = f"invalid JSON: {exc.msg}" if c in _VALUE_START else "not JSON"
        self._error(out, o, ln, reason, text[pos:eol])
        return eol

    # -- values over several lines ----------------------------------------------------------------

    def _continue(self, text: str, start: int, w: _Where, out: Parsed, end_off: int) -> int:
        """Look for the end of the value open at `start`; returns where to go on (-1: still open)."""
        n = len(text)
        loads = orjson.loads
        while not self._tokens:
            m = _COL0.search(text, self._resume)
            if m is None:  # it may have ended inside a line: only the scanner can tell
                self._tokens, self._resume, self._depth = True, start, 0
                break
            q = m.start()
            eol = text.find("\n", q)
            if eol < 0:
                eol = n
            if text[q] in "}]":
                end = q + 1
                try:
                    value = loads(text[start:end])
                except orjson.JSONDecodeError as exc:
                    if exc.msg == _INCOMPLETE and self._tries < MAX_CANDIDATES:
                        self._tries += 1  # an inner closer (indent=0): try the next one
                        self._resume = eol
                    else:
                        self._tokens, self._resume, self._depth = True, start, 0
                    continue
                self._whole(out, value, text, start, end)
                self._pend = ""
                return end
            # a line opening a value inside the open one: nested (indent=0) or the next message?
            self._resume = eol
            try:
                loads(text[q:eol])
            except orjson.JSONDecodeError:
                continue  # not a whole value by itself: part of the open one
            try:
                value = loads(text[start:eol])
            except orjson.JSONDecodeError as exc:
                if exc.msg == _INCOMPLETE:  # a valid continuation (an element of a list)
                    continue
                if exc.msg == _AFTER:  # the open value ended before, inside a line
                    self._tokens, self._resume, self._depth = True, start, 0
                    continue
                # a whole message that can't continue the open value: that one was cut short
                return self._cut(text, start, q, w, out, "message cut short")
            self._whole(out, value, text, start, eol)
            self._pend = ""
            return eol
        depth = self._depth
        for m in _TOKEN.finditer(text, self._resume):
            tok = m.group()
            c = tok[0]
            if c == '"':
                if len(tok) == 1:  # a string that doesn't end on its line: drop that line too
                    q = text.rfind("\n", 0, m.start()) + 1
                    qend = text.find("\n", q)
                    self._cut(text, start, q, w, out, "unterminated string")
                    self._discarding = True
                    return n if qend < 0 else qend
                continue
            if c in "{[":
                q = m.start()
                if depth and (q == 0 or text[q - 1] == "\n") and self._cuts(text, start, q):
                    return self._cut(text, start, q, w, out, "message cut short")
                depth += 1
                continue
            depth -= 1
            if not depth:
                end = m.end()
                self._pend = ""
                try:
                    value = loads(text[start:end])
                except orjson.JSONDecodeError as exc:
                    self._error(out, self._pend_off, self._pend_line, f"invalid JSON: {exc.msg}",
                                _first_line(text, start))
                    eol = text.find("\n", end)
                    return n if eol < 0 else eol
                self._whole(out, value, text, start, end)
                return end
        self._depth, self._resume = depth, n
        if end_off - self._pend_off > self.max:
            return self._give_up(text, start, w, out, f"message larger than max_message_bytes ({self.max})",
                                 end_off)
        self._pend = text[start:] if start else text
        self._resume -= start
        return -1

    def _cuts(self, text: str, start: int, q: int) -> bool:
        """Does the line at `q` (column 0, inside the open value) hold a whole message that can't
        continue the open value? (Then that value was cut short and this is the next message.)"""
        eol = text.find("\n", q)
        if eol < 0:
            eol = len(text)
        try:
            orjson.loads(text[q:eol])
        except orjson.JSONDecodeError:
            return False
        try:
            orjson.loads(text[start:eol])
        except orjson.JSONDecodeError as exc:
            return exc.msg != _INCOMPLETE
        return False

    def _cut(self, text: str, start: int, q: int, w: _Where, out: Parsed, reason: str) -> int:
        """The value open at `start` can't go on at the line starting at `q`: report it, and scan
        the lines it swallowed before that line again (once per byte); returns `q`."""
        first = text.find("\n", start)
        self._pend = ""
        self._error(out, self._pend_off, self._pend_line, reason, _first_line(text, start))
        if self._pend_off >= self._rescanned_to and 0 <= first < q - 1:
            o, ln = w.at(first + 1)
            self._rescanned_to, _ = w.at(q)
            self._discarding = True
            self._block(text[first + 1:q - 1], o, ln, out, self._rescanned_to - 1)
            if self._pend:  # a value opened there ran into line q as well
                self._pend = ""
                self._error(out, self._pend_off, self._pend_line, reason, "")
        self._discarding = False
        return q

    def _give_up(self, text: str, start: int, w: _Where, out: Parsed, reason: str, end_off: int) -> int:
        """Abandon the value open at `start`: report it, then scan the lines after its first line
        again (once per byte); returns -1 if that left a value open, else the end of `text`."""
        first = text.find("\n", start)
        self._pend = ""
        self._error(out, self._pend_off, self._pend_line, reason, _first_line(text, start))
        self._discarding = True
        if self._pend_off >= self._rescanned_to and first >= 0:
            self._rescanned_to = end_off
            o, ln = w.at(first + 1)
            self._block(text[first + 1:], o, ln, out, end_off)
        return -1 if self._pend else len(text)

    # -- results ----------------------------------------------------------------------------------

    def _whole(self, out: Parsed, value: Any, text: str, start: int, end: int) -> None:
        """A multi-line value is complete: hand it on, unless it is over the limit."""
        n = _nbytes(text[start:end])
        if n > self.max:
            self._error(out, self._pend_off, self._pend_line,
                        f"message larger than max_message_bytes ({self.max})", _first_line(text, start))
        else:
            self._emit(out, value, None, n)

    def _emit(self, out: Parsed, value: Any, text: str | None, n: int) -> None:
        out.values.append(value)
        out.nbytes += n
        if out.texts is not None:
            if text is None:
                out.texts = None
            else:
                out.texts.append(text)

    def _error(self, out: Parsed, off: int, line: int, reason: str, snippet: str) -> None:
        self.errors += 1
        snip = snippet.strip()
        if not snip.isascii():  # undecodable bytes show as U+FFFD, not as surrogate escapes
            snip = snip.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        if len(snip) > SNIPPET:
            snip = snip[:SNIPPET] + "..."
        out.errors.append(ParseError(off, line, reason, snip))


def _first_line(text: str, start: int) -> str:
    end = text.find("\n", start)
    return text[start:end] if end >= 0 else text[start:]


def parse_all(data: bytes, chunk: int = 1 << 16, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
              ) -> tuple[list[Any], list[ParseError]]:
    """All values and errors of a whole byte string, fed in chunks (tests, tools)."""
    p = StreamParser(max_message_bytes)
    values: list[Any] = []
    errors: list[ParseError] = []
    for i in range(0, len(data), chunk):
        r = p.feed(data[i:i + chunk])
        values += r.values
        errors += r.errors
    r = p.finish()
    return values + r.values, errors + r.errors

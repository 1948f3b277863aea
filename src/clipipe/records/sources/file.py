"""The `file` source: JSON arrays, NDJSON, CSV and plain lines from one path or globs, streamed."""
from __future__ import annotations

import csv
import glob
import io
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Literal

from clipipe.errors import RecordError, SpecError
from clipipe.records.core import Batch, Source, loads
from clipipe.records.registry import option, register

#: 1 MiB reads: big enough that syscalls don't matter, small enough to keep memory flat.
CHUNK = 1 << 20


@dataclass
class FileConfig:
    path: str | None = option("One file to read.", None, examples=["/data/users.json"])
    paths: list[str] | None = option("Several files or globs, read in order (each glob sorted).", None,
                                     examples=[["/data/*.ndjson"]])
    format: Literal["json", "ndjson", "csv", "lines"] = option(
        "json: an array of records (loaded whole) or a stream of JSON values; ndjson: one JSON value "
        "per line; csv: rows as records; lines: each line as {field: text}.", "ndjson")
    csv_header: bool = option("CSV: the first row names the columns.", True)
    delimiter: str = option("CSV: the field separator.", ",")
    columns: list[str] | None = option("CSV without header: column names (default col1, col2, ...).",
                                       None)
    field: str = option("lines: the field that holds the line's text.", "line")
    encoding: str = option("Text encoding of the files.", "utf-8")
    batch_size: int = option("Records per batch handed to the steps.", 1000)
    skip_empty: bool = option("lines: skip empty lines.", True)


@register("source", "file")
class FileSource(Source):
    """Streams records out of files; memory stays at one chunk plus one batch (JSON arrays aside)."""

    summary = "Read records from files: JSON (array), NDJSON, CSV or plain lines; paths may be globs."
    Config = FileConfig
    examples = [
        """source:
  type: file
  path: /data/users.json
  format: json
""",
        """source:
  type: file
  paths: ["/data/events-*.ndjson"]
  format: ndjson
""",
        """source:
  type: file
  path: /data/users.csv
  format: csv
  csv_header: true
  delimiter: ";"
""",
    ]

    def __init__(self, config: FileConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        if (config.path is None) == (config.paths is None):
            raise SpecError("file source: give exactly one of path or paths", mark=mark)
        if config.batch_size < 1:
            raise SpecError("file source: batch_size must be at least 1", mark=mark)
        if len(config.delimiter) != 1:
            raise SpecError("file source: delimiter must be one character", mark=mark)
        self.files_read: list[str] = []
        self.bytes = 0
        self.records = 0
        self.bad = 0

    def resolve(self) -> list[str]:
        """The files to read, in order; a glob that matches nothing and a missing path are errors."""
        base = os.path.dirname(os.path.abspath(self.ctx.path)) if self.ctx.path else os.getcwd()
        patterns = [self.config.path] if self.config.path is not None else list(self.config.paths or [])
        files: list[str] = []
        for p in patterns:
            p = os.path.expanduser(p)
            if not os.path.isabs(p):
                p = os.path.join(base, p)
            if glob.has_magic(p):
                hits = sorted(glob.glob(p))
                if not hits:
                    raise RecordError(f"file source: no file matches {p}")
                files.extend(hits)
            elif not os.path.exists(p):
                raise RecordError(f"file source: no such file: {p}")
            else:
                files.append(p)
        return files

    async def batches(self) -> AsyncGenerator[Batch, None]:
        fmt = self.config.format
        for path in self.resolve():
            self.files_read.append(path)
            reader = {"ndjson": self._ndjson, "json": self._json, "csv": self._csv,
                      "lines": self._lines}[fmt]
            try:
                for batch in reader(path):
                    yield batch
            except OSError as exc:
                raise RecordError(f"file source: can't read {path}: {exc}") from exc

    def _emit(self, path: str, records: list[Any] | None, lines: list[str] | None) -> Batch:
        n = len(records if records is not None else lines or ())
        b = Batch(records, lines, index=range(self.records, self.records + n),
                  meta={"path": path}, born=time.monotonic())
        self.records += n
        return b

    def _raw_lines(self, path: str) -> Any:
        """Yield lists of complete text lines (without newlines), ~1 MiB at a time."""
        enc = self.config.encoding
        with open(path, "rb") as f:
            rest = b""
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                self.bytes += len(chunk)
                chunk = rest + chunk
                cut = chunk.rfind(b"\n")
                if cut < 0:
                    rest = chunk
                    continue
                rest = chunk[cut + 1:]
                yield chunk[:cut].decode(enc).split("\n")
            if rest:
                yield [rest.decode(enc)]

    def _ndjson(self, path: str) -> Any:
        size = self.config.batch_size
        for lines in self._raw_lines(path):
            good = [x for x in lines if x and not x.isspace()] if _has_blank(lines) else lines
            for i in range(0, len(good), size):
                part = good[i:i + size]
                if part and part[-1].endswith("\r"):  # CRLF files: keep the texts clean
                    part = [x.rstrip("\r") for x in part]
                yield self._emit(path, None, part)

    def _json(self, path: str) -> Any:
        with open(path, encoding=self.config.encoding) as f:
            head = f.read(4096)
            first = head.lstrip()[:1]
        if first != "[":
            yield from self._ndjson_values(path)
            return
        with open(path, "rb") as f:
            data = f.read()
        self.bytes += len(data)
        try:
            items = loads(data)
        except ValueError as exc:
            raise RecordError(f"file source: {path}: invalid JSON: {exc}") from exc
        del data
        size = self.config.batch_size
        for i in range(0, len(items), size):
            yield self._emit(path, items[i:i + size], None)

    def _ndjson_values(self, path: str) -> Any:
        """A file of concatenated (possibly pretty-printed) JSON values."""
        import json
        dec = json.JSONDecoder()
        buf = ""
        out: list[Any] = []
        with open(path, encoding=self.config.encoding) as f:
            while True:
                chunk = f.read(CHUNK)
                self.bytes += len(chunk.encode(self.config.encoding)) if chunk else 0
                buf += chunk
                pos = 0
                while True:
                    while pos < len(buf) and buf[pos].isspace():
                        pos += 1
                    if pos >= len(buf):
                        break
                    try:
                        value, end = dec.raw_decode(buf, pos)
                    except ValueError as exc:
                        if not chunk:
                            raise RecordError(f"file source: {path}: invalid JSON: {exc}") from exc
                        break
                    out.append(value)
                    pos = end
                    if len(out) >= self.config.batch_size:
                        yield self._emit(path, out, None)
                        out = []
                buf = buf[pos:]
                if not chunk:
                    break
        if out:
            yield self._emit(path, out, None)

    def _csv(self, path: str) -> Any:
        cfg = self.config
        with open(path, newline="", encoding=cfg.encoding) as f:
            rows = csv.reader(_counting(f, self), delimiter=cfg.delimiter)
            header = None
            if cfg.csv_header:
                header = next(rows, None)
                if header is None:
                    return
            out: list[Any] = []
            for row in rows:
                if not row:
                    continue
                cols = header or cfg.columns or [f"col{i + 1}" for i in range(len(row))]
                if len(cols) < len(row):
                    cols = list(cols) + [f"col{i + 1}" for i in range(len(cols), len(row))]
                out.append(dict(zip(cols, row)))
                if len(out) >= cfg.batch_size:
                    yield self._emit(path, out, None)
                    out = []
            if out:
                yield self._emit(path, out, None)

    def _lines(self, path: str) -> Any:
        field, size = self.config.field, self.config.batch_size
        for lines in self._raw_lines(path):
            if self.config.skip_empty:
                lines = [x for x in lines if x.strip()]
            recs = [{field: x.rstrip("\r")} for x in lines]
            for i in range(0, len(recs), size):
                yield self._emit(path, recs[i:i + size], None)

    def stats(self) -> dict[str, Any]:
        return {"type": "file", "files": len(self.files_read), "bytes": self.bytes,
                "records": self.records}


def _has_blank(lines: list[str]) -> bool:
    return any(not x or x.isspace() for x in lines)


class _counting(io.TextIOBase):
    """Iterate lines of a text file while counting bytes read (for the source stats)."""

    def __init__(self, f: Any, src: FileSource) -> None:
        self.f = f
        self.src = src

    def __iter__(self) -> Any:
        for line in self.f:
            self.src.bytes += len(line)
            yield line

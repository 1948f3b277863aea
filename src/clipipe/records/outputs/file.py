"""The `file` output: NDJSON, a JSON array or CSV, written to a temp file and renamed at the end."""
from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from typing import Any, Literal

from clipipe.errors import RecordError
from clipipe.records.core import Batch, Output, dumps
from clipipe.records.registry import option, register


@dataclass
class FileOutputConfig:
    path: str = option("Where the result goes (relative paths: next to the pipeline file).",
                       examples=["out/users.ndjson"])
    format: Literal["ndjson", "json", "csv"] = option("ndjson: a record per line; json: one array; "
                                                      "csv: a header and a row per record.", "ndjson")
    columns: list[str] | None = option("csv: the columns, in order (default: the first record's keys).",
                                       None)
    delimiter: str = option("csv: the field separator.", ",")
    mkdirs: bool = option("Create the directory if missing.", True)


@register("output", "file")
class FileOutput(Output):
    """Writes to `path`.tmp-XXXX and renames over `path` only when the run succeeded."""

    summary = "Write records to a file (ndjson, json, csv), atomically: temp file + rename."
    Config = FileOutputConfig
    examples = [
        """output:
  type: file
  path: out/users.ndjson
""",
        """output:
  type: file
  path: out/users.csv
  format: csv
  columns: [id, name, email]
""",
    ]

    def __init__(self, config: FileOutputConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        p = os.path.expanduser(config.path)
        if not os.path.isabs(p) and ctx.path:
            p = os.path.join(os.path.dirname(os.path.abspath(ctx.path)), p)
        self.path = p
        self.tmp: str | None = None
        self.f: Any = None
        self.writer: Any = None
        self.columns = list(config.columns) if config.columns else None
        self.bytes = 0

    async def open(self) -> None:
        d = os.path.dirname(self.path) or "."
        try:
            if self.config.mkdirs:
                os.makedirs(d, exist_ok=True)
            fd, self.tmp = tempfile.mkstemp(prefix=os.path.basename(self.path) + ".tmp-", dir=d)
        except OSError as exc:
            raise RecordError(f"file output: can't write in {d}: {exc}") from exc
        self.f = os.fdopen(fd, "w", encoding="utf-8", newline="")
        if self.config.format == "json":
            self.f.write("[")

    async def write(self, batch: Batch) -> None:
        if not len(batch):
            return
        fmt = self.config.format
        try:
            if fmt == "ndjson":
                text = "\n".join(batch.lines()) + "\n"
                self.f.write(text)
            elif fmt == "json":
                text = ("\n" if self.records == 0 else ",\n") + ",\n".join(batch.lines())
                self.f.write(text)
            else:
                self._csv(batch.records())
        except OSError as exc:
            raise RecordError(f"file output: writing {self.tmp} failed: {exc}") from exc
        self.records += len(batch)

    def _csv(self, recs: list[Any]) -> None:
        if self.writer is None:
            if self.columns is None:
                first = recs[0]
                self.columns = list(first) if isinstance(first, dict) else ["value"]
            self.writer = csv.writer(self.f, delimiter=self.config.delimiter, lineterminator="\n")
            self.writer.writerow(self.columns)
        cols = self.columns
        assert cols is not None  # set with the writer
        rows = []
        for r in recs:
            if not isinstance(r, dict):
                r = {"value": r}
            rows.append([_cell(r.get(c)) for c in cols])
        self.writer.writerows(rows)

    async def close(self) -> None:
        if self.f is None:
            return
        try:
            if self.config.format == "json":
                self.f.write("\n]\n" if self.records else "]\n")
            if self.config.format == "csv" and self.writer is None and self.columns:
                csv.writer(self.f, delimiter=self.config.delimiter, lineterminator="\n").writerow(self.columns)
            self.f.flush()
            os.fsync(self.f.fileno())
            self.f.close()
            self.bytes = os.path.getsize(self.tmp or "")
            os.replace(self.tmp or "", self.path)
        except OSError as exc:
            raise RecordError(f"file output: finishing {self.path} failed: {exc}") from exc
        finally:
            self.f = None

    async def abort(self) -> None:
        if self.f is not None:
            try:
                self.f.close()
            except OSError:
                pass
            self.f = None
        if self.tmp and os.path.exists(self.tmp):
            os.unlink(self.tmp)

    def stats(self) -> dict[str, Any]:
        return {"type": "file", "path": self.path, "records": self.records, "bytes": self.bytes}


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        return dumps(v)
    return str(v)



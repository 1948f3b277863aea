"""The `sql` source: a query on SQLite, PostgreSQL or MySQL/MariaDB, streamed, optionally incremental.

The drivers are synchronous: they run in a worker thread that hands batches to the event loop
through a bounded queue (so a slow output throttles the fetching and memory stays flat). Rows are
fetched with server-side cursors (psycopg named cursor, pymysql SSCursor, sqlite3 iteration).

Incremental reads: with `incremental: {column, state_key}` the largest value of `column` seen is
kept in the state store under `state_key` — saved only after the output has taken every record —
and bound on the next run wherever a param mentions `${LAST_SYNC_TIME}` (the name is
`incremental.variable`). The first run binds `incremental.initial`.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Literal

from clipipe.errors import RecordError, SpecError
from clipipe.records.convert import state_text, to_json_value
from clipipe.records.core import Batch, Source
from clipipe.records.registry import option, register

_END = object()
#: batches waiting between the fetching thread and the steps; bounds memory to ~4 x fetch_size rows
QUEUE_BATCHES = 4
_PLAIN = (str, int, float, bool, type(None))


@dataclass
class IncrementalConfig:
    column: str = option("Column whose largest value marks how far the last run got.",
                         examples=["updated_at"])
    state_key: str = option("Key under which that value is kept in the state store.",
                            examples=["users_last_sync"])
    initial: str = option("Value bound on the first run (nothing stored yet).", "1970-01-01 00:00:00")
    variable: str = option("Name of the `${...}` variable that holds the value in `params`.",
                           "LAST_SYNC_TIME")


@dataclass
class SQLConfig:
    dsn: str = option("Connection: sqlite file path; postgres conninfo or URL; mysql URL "
                      "(mysql://user:pass@host:3306/db) or Go-style user:pass@tcp(host:3306)/db.",
                      examples=["postgresql://postgres@127.0.0.1:5432/test"])
    query: str = option("The query. Write `?` for parameters on every driver.",
                        examples=["SELECT * FROM users WHERE updated_at > ?"])
    driver: Literal["sqlite", "postgres", "postgresql", "mysql", "mariadb"] = option(
        "Database driver.", "sqlite")
    params: list[Any] = option("Values bound to the `?` placeholders, in order.", factory=list,
                               examples=[["${LAST_SYNC_TIME}"]])
    incremental: IncrementalConfig | None = option("Read only rows newer than the last run's.", None)
    fetch_size: int = option("Rows fetched (and handed on) at a time.", 1000)
    connect_timeout: float = option("Seconds to wait for the connection.", 10.0)


@register("source", "sql")
class SQLSource(Source):
    """Runs one query and streams its rows as records."""

    summary = "Read rows of a SQL query (SQLite, PostgreSQL, MySQL/MariaDB), optionally incrementally."
    Config = SQLConfig
    examples = [
        """source:
  type: sql
  driver: postgres
  dsn: "host=127.0.0.1 user=postgres dbname=test"
  query: "SELECT * FROM users WHERE updated_at > ?"
  params: ["${LAST_SYNC_TIME}"]
  incremental:
    column: updated_at
    state_key: users_last_sync
""",
        """source:
  type: sql
  driver: mysql
  dsn: "root:@tcp(127.0.0.1:3306)/test"
  query: "SELECT id, name FROM users"
""",
        """source:
  type: sql
  driver: sqlite
  dsn: ./users.db
  query: "SELECT * FROM users WHERE active = ?"
  params: [1]
""",
    ]

    @staticmethod
    def deferred(raw: Any) -> tuple[str, ...]:
        """The `${...}` names this source fills in itself (left alone by env interpolation)."""
        inc = raw.get("incremental") if isinstance(raw, dict) else None
        if isinstance(inc, dict):
            return (str(inc.get("variable", "LAST_SYNC_TIME")),)
        return ("LAST_SYNC_TIME",)

    def __init__(self, config: SQLConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        self.driver = {"postgresql": "postgres", "mariadb": "mysql"}.get(config.driver, config.driver)
        var = config.incremental.variable if config.incremental else "LAST_SYNC_TIME"
        if "${" + var + "}" in config.query:
            raise SpecError(f"sql source: don't put ${{{var}}} into the query text; write ? and "
                            f"params: [\"${{{var}}}\"]", mark=mark)
        if config.fetch_size < 1:
            raise SpecError("sql source: fetch_size must be at least 1", mark=mark)
        if self.driver == "mysql":
            mysql_params(config.dsn, mark)  # fail early on a malformed DSN
        self.rows = 0
        self.last_value: Any = None
        self.bound_last: str | None = None
        self.seconds_to_first_row: float | None = None

    # -- parameters --------------------------------------------------------------------------------
    def bind_params(self) -> list[Any]:
        """The params with the incremental variable filled in from the state store."""
        inc = self.config.incremental
        var = inc.variable if inc else "LAST_SYNC_TIME"
        value: str | None = None
        if inc is not None:
            stored = self.ctx.store.get(inc.state_key) if self.ctx.store is not None else None
            value = stored if stored is not None else inc.initial
            self.bound_last = value
        out = []
        token = "${" + var + "}"
        for p in self.config.params:
            if isinstance(p, str) and token in p:
                if value is None:
                    raise RecordError(f"sql source: params use {token} but there is no incremental: "
                                      "section to fill it")
                p = value if p == token else p.replace(token, value)
            out.append(p)
        return out

    def query_for_driver(self, params: list[Any]) -> str:
        """The query with `?` placeholders translated for drivers that use `%s`."""
        if self.driver == "sqlite" or not params:
            return self.config.query
        return qmark_to_format(self.config.query)

    # -- fetching ----------------------------------------------------------------------------------
    def connect(self) -> Any:
        """A DB-API connection for the configured driver (in the worker thread)."""
        cfg = self.config
        try:
            if self.driver == "sqlite":
                import sqlite3
                path = cfg.dsn
                if not path.startswith("file:") and path != ":memory:" and not os.path.isabs(path) and self.ctx.path:
                    path = os.path.join(os.path.dirname(os.path.abspath(self.ctx.path)), path)
                if path != ":memory:" and not path.startswith("file:") and not os.path.exists(path):
                    raise RecordError(f"sql source: no such SQLite database: {path}")
                return sqlite3.connect(path, uri=path.startswith("file:"), check_same_thread=False)
            if self.driver == "postgres":
                import psycopg
                return psycopg.connect(cfg.dsn, connect_timeout=max(1, int(cfg.connect_timeout)))
            import pymysql
            return pymysql.connect(**mysql_params(cfg.dsn, self.mark),
                                   connect_timeout=cfg.connect_timeout)
        except RecordError:
            raise
        except Exception as exc:
            raise RecordError(f"sql source: can't connect ({self.driver}): {exc}") from exc

    def cursor(self, conn: Any) -> Any:
        if self.driver == "postgres":
            cur = conn.cursor(name=f"clipipe_{os.getpid()}_{id(self)}")
            cur.itersize = self.config.fetch_size
            return cur
        if self.driver == "mysql":
            import pymysql.cursors
            return conn.cursor(pymysql.cursors.SSCursor)
        return conn.cursor()

    def _fetch(self, put: Any, stop: threading.Event) -> None:
        """Worker thread: run the query and put lists of row dicts (or an exception, or _END)."""
        params = self.bind_params()
        query = self.query_for_driver(params)
        started = time.monotonic()
        conn = self.connect()
        try:
            cur = self.cursor(conn)
            cur.execute(query, params or None) if self.driver != "sqlite" else cur.execute(query, params)
            if cur.description is None:
                raise RecordError("sql source: the query returned no rows (not a SELECT?)")
            cols = [d[0] for d in cur.description]
            inc = self.config.incremental
            inc_pos = None
            if inc is not None:
                if inc.column not in cols:
                    raise RecordError(f"sql source: incremental column {inc.column!r} is not among "
                                      f"the query's columns ({', '.join(cols)})")
                inc_pos = cols.index(inc.column)
            best = None
            n = self.config.fetch_size
            while not stop.is_set():
                rows = cur.fetchmany(n)
                if not rows:
                    break
                if self.seconds_to_first_row is None:
                    self.seconds_to_first_row = time.monotonic() - started
                if inc_pos is not None:
                    for r in rows:
                        v = r[inc_pos]
                        if v is not None and (best is None or v > best):
                            best = v
                put([{c: (v if type(v) in _PLAIN else to_json_value(v)) for c, v in zip(cols, r)}
                     for r in rows])
            self.last_value = best
            cur.close()
        finally:
            try:
                conn.rollback()
            except Exception:
                pass
            conn.close()

    async def batches(self) -> AsyncGenerator[Batch, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=QUEUE_BATCHES)
        stop = threading.Event()

        def put(item: Any) -> None:
            fut = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
            while True:
                try:
                    fut.result(timeout=0.2)
                    return
                except concurrent.futures.TimeoutError:
                    if stop.is_set():
                        fut.cancel()
                        raise _Stopped() from None

        def work() -> None:
            try:
                self._fetch(put, stop)
                put(_END)
            except _Stopped:
                pass
            except BaseException as exc:  # handed to the event loop, raised there
                try:
                    put(exc)
                except _Stopped:
                    pass

        thread = threading.Thread(target=work, name="clipipe-sql", daemon=True)
        thread.start()
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    break
                if isinstance(item, RecordError):
                    raise item
                if isinstance(item, BaseException):
                    raise RecordError(f"sql source ({self.driver}): {item}") from item
                b = Batch(item, None, index=range(self.rows, self.rows + len(item)),
                          meta={"driver": self.driver}, born=time.monotonic())
                self.rows += len(item)
                yield b
        finally:
            stop.set()
            while not queue.empty():
                queue.get_nowait()
            await asyncio.to_thread(thread.join, 10)

    async def commit(self) -> None:
        inc = self.config.incremental
        if inc is None or self.last_value is None or self.ctx.store is None:
            return
        self.ctx.store.set(inc.state_key, state_text(self.last_value))

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "sql", "driver": self.driver, "rows": self.rows}
        if self.seconds_to_first_row is not None:
            out["seconds_to_first_row"] = round(self.seconds_to_first_row, 6)
        if self.config.incremental is not None:
            out["incremental"] = {"state_key": self.config.incremental.state_key,
                                  "from": self.bound_last,
                                  "to": state_text(self.last_value) if self.last_value is not None else None}
        return out


class _Stopped(Exception):
    """The consumer went away; the worker thread ends quietly."""


def qmark_to_format(query: str) -> str:
    """`?` -> `%s` and `%` -> `%%` outside quotes and comments (for psycopg and pymysql)."""
    out = []
    i, n = 0, len(query)
    while i < n:
        c = query[i]
        if c in ("'", '"', "`"):
            j = i + 1
            while j < n and query[j] != c:
                j += 2 if query[j] == "\\" and c != '"' else 1
            out.append(query[i:j + 1].replace("%", "%%"))
            i = j + 1
            continue
        if c == "-" and query.startswith("--", i):
            j = query.find("\n", i)
            j = n if j < 0 else j
            out.append(query[i:j].replace("%", "%%"))
            i = j
            continue
        out.append("%s" if c == "?" else ("%%" if c == "%" else c))
        i += 1
    return "".join(out)


_GO_DSN = re.compile(r"^(?:(?P<user>[^:@]*)(?::(?P<password>[^@]*))?@)?"
                     r"(?:(?P<net>tcp|unix)\((?P<addr>[^)]*)\))?/(?P<db>[^?]*)(?:\?(?P<query>.*))?$")


def mysql_params(dsn: str, mark: Any = None) -> dict[str, Any]:
    """pymysql.connect keyword arguments from a mysql:// URL or a Go-style DSN."""
    if dsn.startswith(("mysql://", "mariadb://")):
        u = urllib.parse.urlsplit(dsn)
        kw: dict[str, Any] = {"host": u.hostname or "127.0.0.1", "port": u.port or 3306,
                              "user": urllib.parse.unquote(u.username or "root"),
                              "password": urllib.parse.unquote(u.password or ""),
                              "database": u.path.lstrip("/") or None}
        query = u.query
    else:
        m = _GO_DSN.match(dsn)
        if not m:
            raise SpecError(f"sql source: can't read the mysql dsn {dsn!r} (write "
                            "mysql://user:pass@host:3306/db or user:pass@tcp(host:3306)/db)", mark=mark)
        kw = {"user": m.group("user") or "root", "password": m.group("password") or "",
              "database": m.group("db") or None}
        addr = m.group("addr") or "127.0.0.1:3306"
        if m.group("net") == "unix":
            kw["unix_socket"] = addr
        else:
            host, _, port = addr.rpartition(":") if ":" in addr else (addr, "", "3306")
            kw["host"], kw["port"] = host or "127.0.0.1", int(port or 3306)
        query = m.group("query") or ""
    for k, v in urllib.parse.parse_qsl(query):
        if k == "charset":
            kw["charset"] = v
    kw.setdefault("charset", "utf8mb4")
    return kw

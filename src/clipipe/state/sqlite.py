"""The default state store: one SQLite file, safe for several clipipe processes at once (WAL)."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from clipipe.errors import UserError
from clipipe.state.store import state_dir

#: ids per `IN (...)` query: well under SQLite's 32766 host-parameter limit
_CHUNK = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    id TEXT PRIMARY KEY, started REAL, pipeline TEXT, status TEXT, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS ops_started ON ops(started);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL);
CREATE TABLE IF NOT EXISTS ttl (ns TEXT, item TEXT, expires REAL, PRIMARY KEY (ns, item));
"""


class SQLiteStore:
    """Operation records, key/value state and TTL sets in one SQLite database."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else state_dir() / "state.db"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 30 s: several processes (a consumer group) may write at once; WAL keeps waits short.
            self._db = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False,
                                       isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"can't open the state store {self.path}: {exc}",
                            hint="set CLIPIPE_HOME to a writable directory") from exc
        self._lock = threading.Lock()

    # -- key/value -------------------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        """The value stored under `key`, or `default`."""
        with self._lock:
            row = self._db.execute("SELECT value FROM kv WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: str) -> None:
        """Store `value` under `key`."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO kv(key, value, updated) VALUES (?,?,?)",
                             (key, value, time.time()))

    def delete(self, key: str) -> None:
        """Forget `key`."""
        with self._lock:
            self._db.execute("DELETE FROM kv WHERE key=?", (key,))

    # -- TTL sets --------------------------------------------------------------------------------
    def contains(self, namespace: str, item: str) -> bool:
        """True if `item` is in `namespace` and not expired."""
        with self._lock:
            row = self._db.execute("SELECT expires FROM ttl WHERE ns=? AND item=?",
                                   (namespace, item)).fetchone()
        return bool(row) and row[0] > time.time()

    def add(self, namespace: str, item: str, ttl: float) -> None:
        """Remember `item` for `ttl` seconds; expired rows are purged now and then."""
        now = time.time()
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO ttl(ns, item, expires) VALUES (?,?,?)",
                             (namespace, item, now + ttl))
            if int(now) % 64 == 0:  # cheap, occasional purge instead of a background job
                self._db.execute("DELETE FROM ttl WHERE expires < ?", (now,))

    # -- bulk forms (realtime dedup and entities: one transaction per batch) ---------------------
    def contains_many(self, namespace: str, items: Sequence[str]) -> list[bool]:
        """For each item: is it in `namespace` and not expired?"""
        now = time.time()
        found: set[str] = set()
        with self._lock:
            for i in range(0, len(items), _CHUNK):
                part = list(items[i:i + _CHUNK])
                rows = self._db.execute(
                    f"SELECT item FROM ttl WHERE ns=? AND expires>? AND item IN ({','.join('?' * len(part))})",
                    (namespace, now, *part)).fetchall()
                found.update(r[0] for r in rows)
        return [x in found for x in items]

    def add_many(self, namespace: str, items: Iterable[str], ttl: float) -> None:
        """Remember every item for `ttl` seconds, in one transaction (one fsync, not one per id)."""
        now = time.time()
        rows = [(namespace, x, now + ttl) for x in items]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("INSERT OR REPLACE INTO ttl(ns, item, expires) VALUES (?,?,?)", rows)
                if int(now) % 64 == 0:  # the same occasional purge as add()
                    self._db.execute("DELETE FROM ttl WHERE expires < ?", (now,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of `keys` in order (None where missing)."""
        found: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(keys), _CHUNK):
                part = list(keys[i:i + _CHUNK])
                rows = self._db.execute(f"SELECT key, value FROM kv WHERE key IN ({','.join('?' * len(part))})",
                                        part).fetchall()
                found.update((r[0], r[1]) for r in rows)
        return [found.get(k) for k in keys]

    def set_many(self, items: dict[str, str]) -> None:
        """Store every pair in one transaction."""
        self._write_many("INSERT OR REPLACE INTO kv(key, value, updated) VALUES (?,?,?)",
                         [(k, v, time.time()) for k, v in items.items()])

    def delete_many(self, keys: Iterable[str]) -> None:
        """Forget every key, in one transaction."""
        self._write_many("DELETE FROM kv WHERE key=?", [(k,) for k in keys])

    def _write_many(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(sql, rows)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def describe(self) -> str:
        """What this store is, for messages and metrics."""
        return f"sqlite {self.path}"

    # -- operation records -----------------------------------------------------------------------
    def save_op(self, record: dict[str, Any]) -> None:
        """Insert or replace an operation record."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO ops(id, started, pipeline, status, record) VALUES (?,?,?,?,?)",
                (record["id"], record.get("started_ts", time.time()), record.get("pipeline"),
                 record.get("status"), json.dumps(record, default=str)))

    def get_op(self, op_id: str) -> dict[str, Any] | None:
        """The record with this id or unique id prefix."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM ops WHERE id LIKE ? ORDER BY started DESC LIMIT 2",
                                    (op_id.replace("%", "") + "%",)).fetchall()
        if len(rows) != 1:
            exact = [r for r in rows if json.loads(r[0])["id"] == op_id]
            rows = exact
        return json.loads(rows[0][0]) if len(rows) == 1 else None

    def list_ops(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest operation records first."""
        with self._lock:
            rows = self._db.execute("SELECT record FROM ops ORDER BY started DESC LIMIT ?",
                                    (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]

    def close(self) -> None:
        """Close the database."""
        self._db.close()

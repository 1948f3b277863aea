"""Redis as a state store, so several clipipe processes (one Kafka consumer group) share dedup ids
and known entities.

Layout (every key starts with `prefix`, default `clipipe:`):

    {prefix}ttl:{namespace}:{item}   "1", with a PX expiry   -- TTLSet (dedup ids)
    {prefix}kv:{key}                 the value, no expiry     -- KeyValueStore (known entities, ...)

One key per id with `SET ... PX ttl` rather than one sorted set per namespace: Redis expires the
keys itself (no purge job, no ZSET that grows when nobody purges), an id's lifetime is exact, and
MGET answers a whole batch in one round trip. The cost is Redis's per-key overhead (~60-90 bytes).
A batch is checked with MGET (a read) and its ids are written by one Lua call doing SET PX per key
(the keys of one call must share a slot in a Redis Cluster, so use a standalone Redis) only after
the output acknowledged the batch: a crash in between re-delivers (a duplicate), never loses a record.
"""
from __future__ import annotations

import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from clipipe.errors import RecordError

#: keys per MGET / MSET / script call: large batches are split so no command grows unbounded
CHUNK = 1000

#: SET key "1" PX ARGV[1] for every key of the call. A pipeline of 500 SETs costs ~4-5 ms of
#: redis-py packing and reply parsing; this one command ~0.8 ms (measured on loopback).
_SET_PX = """
for _, k in ipairs(KEYS) do redis.call('SET', k, '1', 'PX', ARGV[1]) end
return #KEYS
"""


def safe_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***, for messages and records."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:
        return "<invalid redis url>"
    if p.password is None:
        return url
    user = p.username or ""
    host = p.hostname or ""
    port = f":{p.port}" if p.port else ""
    return urllib.parse.urlunsplit((p.scheme, f"{user}:***@{host}{port}", p.path, p.query, p.fragment))


class RedisStore:
    """KeyValueStore + TTLSet (and their bulk forms) in Redis, via redis-py."""

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "clipipe:",
                 timeout: float = 10.0) -> None:
        import redis  # imported here: only realtime pipelines with dedup_storage: redis need it

        self.url = url
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError,)
        with self._mapped("connecting to"):
            self._r = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
            self._r.ping()
        # register_script: EVALSHA, reloading the script if the server lost it (restart, FLUSH)
        self._set_px = self._r.register_script(_SET_PX)

    def describe(self) -> str:
        """What this store is, for messages and metrics (no password)."""
        return f"redis {safe_url(self.url)} prefix {self.prefix!r}"

    @contextmanager
    def _mapped(self, what: str) -> Iterator[None]:
        """Turn redis-py's exceptions into one RecordError naming the server (without secrets)."""
        try:
            yield
        except self._errors as exc:
            raise RecordError(f"redis state store: {what} {safe_url(self.url)} failed: {exc}",
                              hint="is Redis running, and is redis_url right?") from exc

    def _kv(self, key: str) -> str:
        return f"{self.prefix}kv:{key}"

    def _ttl(self, namespace: str, item: str) -> str:
        return f"{self.prefix}ttl:{namespace}:{item}"

    # -- key/value -------------------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        """The value stored under `key`, or `default`."""
        (v,) = self.get_many([key])
        return default if v is None else v

    def set(self, key: str, value: str) -> None:
        """Store `value` under `key`."""
        self.set_many({key: value})

    def delete(self, key: str) -> None:
        """Forget `key`."""
        self.delete_many([key])

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of `keys` (None where missing), in order; one MGET per CHUNK keys."""
        out: list[str | None] = []
        with self._mapped("reading from"):
            for i in range(0, len(keys), CHUNK):
                vals: list[Any] = self._r.mget([self._kv(k) for k in keys[i:i + CHUNK]])
                out.extend(None if v is None else v.decode() for v in vals)
        return out

    def set_many(self, items: dict[str, str]) -> None:
        """Store every key/value pair (MSET per CHUNK pairs)."""
        pairs = list(items.items())
        with self._mapped("writing to"):
            for i in range(0, len(pairs), CHUNK):
                self._r.mset({self._kv(k): v for k, v in pairs[i:i + CHUNK]})

    def delete_many(self, keys: Iterable[str]) -> None:
        """Forget every key."""
        names = [self._kv(k) for k in keys]
        with self._mapped("deleting from"):
            for i in range(0, len(names), CHUNK):
                self._r.delete(*names[i:i + CHUNK])

    # -- TTL sets --------------------------------------------------------------------------------
    def contains(self, namespace: str, item: str) -> bool:
        """True if `item` is in `namespace` and not expired."""
        return self.contains_many(namespace, [item])[0]

    def add(self, namespace: str, item: str, ttl: float) -> None:
        """Remember `item` in `namespace` for `ttl` seconds."""
        self.add_many(namespace, [item], ttl)

    def contains_many(self, namespace: str, items: Sequence[str]) -> list[bool]:
        """For each item: is it in `namespace` and not expired? One MGET per CHUNK items."""
        out: list[bool] = []
        with self._mapped("reading from"):
            for i in range(0, len(items), CHUNK):
                vals = self._r.mget([self._ttl(namespace, x) for x in items[i:i + CHUNK]])
                out.extend(v is not None for v in vals)
        return out

    def add_many(self, namespace: str, items: Iterable[str], ttl: float) -> None:
        """Remember every item for `ttl` seconds: one script call (SET PX per key) per CHUNK items."""
        px = max(1, int(ttl * 1000))  # PX: milliseconds, so sub-second TTLs work (tests)
        names = [self._ttl(namespace, x) for x in items]
        with self._mapped("writing to"):
            for i in range(0, len(names), CHUNK):
                self._set_px(keys=names[i:i + CHUNK], args=[px])

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self._r.close()
        except self._errors:
            pass

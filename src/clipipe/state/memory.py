"""An in-process state store: key/value and TTL sets in dicts, gone when the process ends.

For `dedup_storage: memory`: the fastest choice, but a restart forgets every id (the next run
re-processes what the source re-delivers) and processes don't share it. Memory grows with the ids
seen within one TTL; expired ids are purged as new ones arrive.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

#: adds between two purges of expired ids (a purge pops expired ids from the oldest end)
PURGE_EVERY = 1024


class MemoryStore:
    """KeyValueStore + TTLSet (and their bulk forms) kept in this process's memory."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock  #: a test seam: tests move time forward instead of sleeping
        self._kv: dict[str, str] = {}
        self._ttl: dict[str, dict[str, float]] = {}
        self._adds = 0

    def describe(self) -> str:
        """What this store is, for messages and metrics."""
        return "memory"

    # -- key/value -------------------------------------------------------------------------------
    def get(self, key: str, default: str | None = None) -> str | None:
        """The value stored under `key`, or `default`."""
        return self._kv.get(key, default)

    def set(self, key: str, value: str) -> None:
        """Store `value` under `key`."""
        self._kv[key] = value

    def delete(self, key: str) -> None:
        """Forget `key`."""
        self._kv.pop(key, None)

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of `keys` (None where missing), in order."""
        kv = self._kv
        return [kv.get(k) for k in keys]

    def set_many(self, items: dict[str, str]) -> None:
        """Store every key/value pair."""
        self._kv.update(items)

    def delete_many(self, keys: Iterable[str]) -> None:
        """Forget every key."""
        for k in keys:
            self._kv.pop(k, None)

    # -- TTL sets --------------------------------------------------------------------------------
    def contains(self, namespace: str, item: str) -> bool:
        """True if `item` is in `namespace` and not expired."""
        exp = self._ttl.get(namespace, {}).get(item)
        return exp is not None and exp > self._clock()

    def add(self, namespace: str, item: str, ttl: float) -> None:
        """Remember `item` for `ttl` seconds."""
        self.add_many(namespace, (item,), ttl)

    def contains_many(self, namespace: str, items: Sequence[str]) -> list[bool]:
        """For each item: is it in `namespace` and not expired?"""
        ns = self._ttl.get(namespace)
        if not ns:
            return [False] * len(items)
        now = self._clock()
        return [(exp := ns.get(i)) is not None and exp > now for i in items]

    def add_many(self, namespace: str, items: Iterable[str], ttl: float) -> None:
        """Remember every item for `ttl` seconds (re-adding moves it to the young end)."""
        ns = self._ttl.setdefault(namespace, {})
        expires = self._clock() + ttl
        for i in items:
            ns.pop(i, None)
            ns[i] = expires
            self._adds += 1
        if self._adds >= PURGE_EVERY:
            self._adds = 0
            self.purge()

    def purge(self) -> int:
        """Drop expired ids from the old end of each namespace; returns how many went."""
        now = self._clock()
        gone = 0
        for ns in self._ttl.values():
            while ns:
                item, exp = next(iter(ns.items()))
                if exp > now:
                    break
                del ns[item]
                gone += 1
        return gone

    def size(self, namespace: str) -> int:
        """Ids held for `namespace` (expired ones not yet purged included)."""
        return len(self._ttl.get(namespace, {}))

    def close(self) -> None:
        """Nothing to release."""

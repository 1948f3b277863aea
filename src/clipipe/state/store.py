"""The state store contract and where clipipe keeps its state by default.

One embedded SQLite file (`state.db` under the state directory) holds operation records, key/value
state (incremental SQL positions, ...) and TTL'd ids (dedup). `$CLIPIPE_HOME` overrides the directory;
otherwise `$XDG_STATE_HOME/clipipe` or `~/.local/state/clipipe`.
"""
from __future__ import annotations

import os
from pathlib import Path
from collections.abc import Iterable, Sequence
from typing import Any, Protocol


def state_dir() -> Path:
    """The directory of clipipe's state (created on first use)."""
    home = os.environ.get("CLIPIPE_HOME")
    if home:
        return Path(home).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "state"
    return base / "clipipe"


class KeyValueStore(Protocol):
    """Durable small state: incremental positions, known entities."""

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value stored under `key`, or `default`."""

    def set(self, key: str, value: str) -> None:
        """Store `value` under `key`, durably."""

    def delete(self, key: str) -> None:
        """Forget `key`."""


class TTLSet(Protocol):
    """Ids remembered for a while (dedup): `add` only after the output acknowledged the record."""

    def contains(self, namespace: str, item: str) -> bool:
        """True if `item` was added to `namespace` and has not expired."""

    def add(self, namespace: str, item: str, ttl: float) -> None:
        """Remember `item` in `namespace` for `ttl` seconds."""


class BulkTTLSet(TTLSet, Protocol):
    """A TTLSet that answers and records a whole batch per call (realtime dedup: one round trip)."""

    def contains_many(self, namespace: str, items: Sequence[str]) -> list[bool]:
        """For each item, in order: was it added to `namespace` and not expired?"""

    def add_many(self, namespace: str, items: Iterable[str], ttl: float) -> None:
        """Remember every item in `namespace` for `ttl` seconds."""


class BulkKeyValueStore(KeyValueStore, Protocol):
    """A KeyValueStore that reads and writes many keys per call (realtime known entities)."""

    def get_many(self, keys: Sequence[str]) -> list[str | None]:
        """The values of `keys` in order (None where missing)."""

    def set_many(self, items: dict[str, str]) -> None:
        """Store every key/value pair."""

    def delete_many(self, keys: Iterable[str]) -> None:
        """Forget every key."""


class OpStore(Protocol):
    """Operation records."""

    def save_op(self, record: dict[str, Any]) -> None:
        """Insert or replace the record with id record['id']."""

    def get_op(self, op_id: str) -> dict[str, Any] | None:
        """The record with this id (a unique prefix is enough), or None."""

    def list_ops(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest records first."""

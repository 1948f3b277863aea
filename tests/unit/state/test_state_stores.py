"""The state stores behind realtime dedup: memory, SQLite and Redis (the real server on 6379).

Each store is checked against the same contract: TTL'd ids (single and bulk), key/value entities
(single and bulk). TTL expiry is checked with a moved clock for the memory store and with real
(sub-second) expiry for SQLite and Redis.
"""
from __future__ import annotations

import os
import time
import uuid

import pytest

from clipipe.errors import RecordError
from clipipe.state.memory import MemoryStore
from clipipe.state.redis import RedisStore, safe_url
from clipipe.state.sqlite import SQLiteStore

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_or_skip():
    redis = pytest.importorskip("redis")
    try:
        r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
        r.ping()
        return r
    except redis.RedisError as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"Redis is required in CI: {exc}")
        pytest.skip(f"Redis on 127.0.0.1:6379 is not reachable: {exc}")


@pytest.fixture
def redis_store():
    r = _redis_or_skip()
    prefix = f"clipipe-test-{uuid.uuid4().hex[:12]}:"
    store = RedisStore(REDIS_URL, prefix)
    yield store
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)
    store.close()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "memory":
        yield MemoryStore()
    elif request.param == "sqlite":
        s = SQLiteStore(tmp_path / "state.db")
        yield s
        s.close()
    else:
        yield request.getfixturevalue("redis_store")


def test_ttl_set_contract(store) -> None:
    assert not store.contains("ns", "a")
    store.add("ns", "a", 60)
    assert store.contains("ns", "a") and not store.contains("other", "a")
    store.add_many("ns", ["b", "c"], 60)
    assert store.contains_many("ns", ["a", "x", "c", "b"]) == [True, False, True, True]
    assert store.contains_many("ns", []) == []


def test_key_value_contract(store) -> None:
    assert store.get("k") is None and store.get("k", "d") == "d"
    store.set("k", "v")
    store.set_many({"k2": "v2", "k3": "v3"})
    assert store.get_many(["k", "missing", "k3", "k2"]) == ["v", None, "v3", "v2"]
    store.delete_many(["k", "k2"])
    store.delete("k3")
    assert store.get_many(["k", "k2", "k3"]) == [None, None, None]


def test_bulk_forms_split_large_batches(store) -> None:
    items = [f"id-{i}" for i in range(2500)]  # more than one chunk in SQLite (500) and Redis (1000)
    store.add_many("big", items, 60)
    got = store.contains_many("big", items + ["nope"])
    assert got == [True] * 2500 + [False]


def test_memory_ttl_expires_with_the_clock() -> None:
    now = [1000.0]
    s = MemoryStore(clock=lambda: now[0])
    s.add_many("ns", ["a", "b"], 10)
    now[0] += 5
    s.add("ns", "c", 10)
    assert s.contains_many("ns", ["a", "b", "c"]) == [True, True, True]
    now[0] += 6  # a and b are 11 s old, c 6 s
    assert s.contains_many("ns", ["a", "b", "c"]) == [False, False, True]
    assert s.purge() == 2 and s.size("ns") == 1


def test_memory_re_add_refreshes() -> None:
    now = [0.0]
    s = MemoryStore(clock=lambda: now[0])
    s.add("ns", "a", 10)
    now[0] = 8
    s.add("ns", "a", 10)
    now[0] = 15
    assert s.contains("ns", "a")


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_real_expiry(kind, tmp_path, request) -> None:
    s = SQLiteStore(tmp_path / "s.db") if kind == "sqlite" else request.getfixturevalue("redis_store")
    s.add_many("ns", ["short"], 0.2)
    s.add_many("ns", ["long"], 60)
    assert s.contains_many("ns", ["short", "long"]) == [True, True]
    deadline = time.monotonic() + 10
    while s.contains("ns", "short"):  # waits for the expiry to happen, asserts no duration
        assert time.monotonic() < deadline, "a 0.2 s id did not expire within 10 s"
        time.sleep(0.05)
    assert s.contains("ns", "long")


def test_redis_layout_and_prefix(redis_store) -> None:
    r = _redis_or_skip()
    redis_store.add_many("dedup:p", ["e1"], 30)
    redis_store.set("entity:p:u1", "e1")
    p = redis_store.prefix
    assert r.get(f"{p}ttl:dedup:p:e1") == b"1" and 0 < r.pttl(f"{p}ttl:dedup:p:e1") <= 30_000
    assert r.get(f"{p}kv:entity:p:u1") == b"e1" and r.ttl(f"{p}kv:entity:p:u1") == -1


def test_redis_unreachable_is_one_error_without_password() -> None:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(RecordError) as ei:
        RedisStore(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=2)
    assert "redis state store" in str(ei.value) and "hunter2" not in str(ei.value)
    assert ei.value.hint


def test_safe_url() -> None:
    assert safe_url("redis://:pw@h:6379/1") == "redis://:***@h:6379/1"
    assert safe_url("redis://user:pw@h/0") == "redis://user:***@h/0"
    assert safe_url("redis://h:6379/0") == "redis://h:6379/0"

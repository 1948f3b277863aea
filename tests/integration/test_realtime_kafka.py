"""Realtime pipelines against a real Kafka-compatible broker (tansu) and the real Redis.

Everything runs through the CLI (`python -m clipipe run`), as a user would: end to end through a
consumer group, dedup within and after the TTL, upsert, at-least-once across kill -9 (before the
output acknowledged, and between dedup and the offset commit), an output that fails, two processes
splitting the partitions with shared Redis state, per-entity order, bad messages, signals.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from peers.kafka import (
    OFFSET_COMMIT,
    Broker,
    FreezeProxy,
    committed,
    create_topic,
    free_port,
    produce,
    start_broker,
    tansu_binary,
)

REDIS_URL = "redis://127.0.0.1:6379/0"
#: group settings that keep joins and failovers short on a test broker (seconds, not tens)
FAST_GROUP = "  session_timeout: 3s\n  heartbeat_interval: 1s\n  rebalance_timeout: 1s\n"


def _need(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory):
    path, why = tansu_binary()
    if path is None:
        _need(why)
    b = start_broker(str(tmp_path_factory.mktemp("tansu")))
    yield b
    b.stop()


@pytest.fixture
def redis_prefix():
    """A key prefix of the test's own in the real Redis; its keys are deleted afterwards."""
    redis = pytest.importorskip("redis")
    r = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        r.ping()
    except redis.RedisError as exc:
        _need(f"Redis on 127.0.0.1:6379 is not reachable: {exc}")
    prefix = f"clipipe-test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    keys = list(r.scan_iter(match=prefix + "*"))
    if keys:
        r.delete(*keys)


def redis_keys(prefix: str, kind: str = "ttl") -> list[str]:
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    return [k.decode() for k in r.scan_iter(match=f"{prefix}{kind}:*")]


def new_topic(broker: Broker, partitions: int) -> str:
    name = f"t-{uuid.uuid4().hex[:10]}"
    create_topic(broker.url, name, partitions)
    return name


def event(i: int, t: str, entity: str, seq: int = 0, **data: Any) -> dict[str, Any]:
    return {"event_id": f"e{i}", "event_type": t, "entity_id": entity, "seq": seq,
            "data": {"first": "F", "last": str(i), "status": "active", **data}}


def pipeline_file(tmp_path: Path, brokers: str, topic: str, group: str, *, realtime: str = "",
                  source: str = "", steps: str = "", output: str = "{type: stub, log_format: json}",
                  name: str = "user-events", on_error: str = "stop", idle: str | None = "2s") -> Path:
    idle_line = f"  idle_timeout: {idle}\n" if idle else ""
    realtime = realtime or "  dedup_storage: memory\n"
    text = (f"name: {name}\ntype: realtime\non_error: {on_error}\nsource:\n  type: kafka\n"
            f"  brokers: [\"{brokers}\"]\n  topics: [{topic}]\n  group_id: '{group}'\n{idle_line}"
            f"{FAST_GROUP}{source}"
            f"realtime:\n  id_field: event_id\n  event_type_field: event_type\n  entity_field: entity_id\n"
            f"{realtime}"
            f"steps: [{steps}]\noutput: {output}\n")
    p = tmp_path / f"{name}-{uuid.uuid4().hex[:6]}.yaml"
    p.write_text(text)
    return p


def stub_records(out: str) -> list[dict[str, Any]]:
    return [json.loads(x)["record"] for x in out.splitlines() if '"msg":"record"' in x]


def run_json(clipipe, path: Path, timeout: float = 90) -> tuple[Any, dict[str, Any]]:
    """`clipipe run --json`; returns the result and its operation record (stub logs on stderr)."""
    res = clipipe("run", "--json", str(path), timeout=timeout)
    rec = json.loads(res.out) if res.out.strip().startswith("{") else {}
    return res, rec


class Running:
    """A clipipe process in the background whose output lines are collected as they come."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "clipipe", *args], cwd=cwd, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [threading.Thread(target=self._pump, args=(s, dst), daemon=True)
                         for s, dst in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self._threads:
            t.start()

    def _pump(self, stream: Any, dst: list[str]) -> None:
        for line in stream:
            dst.append(line)

    def wait_for(self, pred: Any, timeout: float = 60, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            if self.proc.poll() is not None and not pred():
                time.sleep(0.2)  # let the pumps drain
                if pred():
                    return
                raise AssertionError(f"clipipe exited {self.proc.returncode} before {what}:\n"
                                     f"{''.join(self.err)[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{''.join(self.err)[-3000:]}")
            time.sleep(0.05)

    def assigned(self) -> list[str] | None:
        """Partitions of the latest assignment this process logged."""
        lines = [x for x in self.err if "kafka: group" in x and "assigned" in x]
        if not lines:
            return None
        tail = lines[-1].split("assigned ", 1)[1].strip()
        return [] if tail == "no partitions" else tail.split(", ")

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        rc = self.proc.wait(timeout)
        for t in self._threads:
            t.join(5)
        return rc, "".join(self.out), "".join(self.err)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.finish()


# -- a callback endpoint the stub output posts to: the test decides when it acknowledges -----------

class Callback:
    """An HTTP endpoint that records POSTed batches; `on_post` can crash clipipe or fail."""

    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.on_post: Any = None      #: called with the batch before answering; returns a status
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                status = outer.on_post(body) if outer.on_post else 200
                if status is None:  # the process under test is gone: answer nothing
                    return
                if status < 300:
                    outer.batches.append(body)
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def records(self) -> list[dict[str, Any]]:
        return [r for b in self.batches for r in b]

    def output(self, batch_size: int = 100) -> str:
        return (f"{{type: stub, log_level: warn, callback: {{enabled: true, url: '{self.url}', "
                f"retries: 0, batch_size: {batch_size}}}}}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def callback():
    cb = Callback()
    yield cb
    cb.close()


# -- the tests -------------------------------------------------------------------------------------

def test_consume_through_the_cli(broker, clipipe, tmp_path) -> None:
    """kafka -> dedup -> upsert -> transform -> filter -> stub; offsets committed; metrics recorded."""
    topic = new_topic(broker, 3)
    events = []
    for i in range(30):
        ent = f"u{i % 6}"
        kind = "CREATE" if i < 6 and i % 2 == 0 else "UPDATE"  # u1, u3, u5 start with an UPDATE
        events.append((ent, event(i, kind, ent, seq=i, status="inactive" if i % 10 == 9 else "active")))
    events.append(("u2", events[2][1]))  # a re-sent event: a duplicate id
    produce(broker.url, topic, events)
    steps = ('{name: parse, transform: "root = this\\nroot.full_name = this.data.first + \\" \\" + '
             'this.data.last"}, {name: active_only, filter: \'.data.status == "active"\'}')
    p = pipeline_file(tmp_path, broker.url, topic, "g-e2e", steps=steps)
    res, rec = run_json(clipipe, p)
    assert res.code == 0, res
    recs = stub_records(res.err)
    assert sorted(r["event_id"] for r in recs) == sorted(f"e{i}" for i in range(30) if i % 10 != 9)
    assert all(r["full_name"] == f"F {r['event_id'][1:]}" for r in recs)
    first = {}
    for r in recs:
        first.setdefault(r["entity_id"], r)
    assert {e: r["event_type"] for e, r in first.items()} == {f"u{k}": "CREATE" for k in range(6)}
    for ent in first:  # one entity's events come out in the order they were produced
        seqs = [r["seq"] for r in recs if r["entity_id"] == ent]
        assert seqs == sorted(seqs)
    m = rec["metrics"]
    assert rec["status"] == "ok" and m["mode"] == "realtime"
    assert m["realtime"]["duplicates_skipped"] == 1 and m["realtime"]["upserts_converted"] == 3
    assert m["realtime"]["types"] == {"CREATE": 6, "UPDATE": 24, "DELETE": 0}
    assert m["realtime"]["lag"] == 0 and m["realtime"]["commits"] >= 1
    assert m["source"]["messages"] == 31 and sorted(m["source"]["assigned"]) == [f"{topic}/{i}" for i in range(3)]
    offsets = committed(broker.url, "g-e2e", topic, 3)
    assert sum(v or 0 for v in offsets.values()) == 31 and offsets == {
        int(k.rsplit("/", 1)[1]): v for k, v in m["source"]["positions"].items()}
    # a second run of the same group finds nothing new
    res2, rec2 = run_json(clipipe, p)
    assert res2.code == 0 and stub_records(res2.err) == [] and rec2["metrics"]["source"]["messages"] == 0


@pytest.mark.parametrize("storage", ["redis", "sqlite"])
def test_duplicates_skipped_within_ttl_not_after(broker, clipipe, tmp_path, storage, request) -> None:
    topic = new_topic(broker, 2)
    produce(broker.url, topic, [(f"u{i}", event(i, "CREATE", f"u{i}")) for i in range(8)])
    if storage == "redis":
        prefix = request.getfixturevalue("redis_prefix")
        rt = f"  dedup_storage: redis\n  dedup_ttl: 6s\n  redis_url: {REDIS_URL}\n  redis_prefix: '{prefix}'\n"
    else:
        rt = "  dedup_storage: sqlite\n  dedup_ttl: 6s\n"
    ns = f"ns-{uuid.uuid4().hex[:6]}"
    rt += f"  dedup_namespace: {ns}\n"
    # ttl 6s: long enough for run 2 to start and read everything (~2 s), short enough to wait out
    res1, rec1 = run_json(clipipe, pipeline_file(tmp_path, broker.url, topic, f"{ns}-1", realtime=rt, idle="1s"))
    assert res1.code == 0, res1
    assert len(stub_records(res1.err)) == 8
    recorded = time.monotonic()
    # another group re-reads the topic from the start: every id is a duplicate within the TTL
    res2, rec2 = run_json(clipipe, pipeline_file(tmp_path, broker.url, topic, f"{ns}-2", realtime=rt, idle="1s"))
    assert res2.code == 0 and stub_records(res2.err) == []
    assert rec2["metrics"]["realtime"]["duplicates_skipped"] == 8
    if storage == "redis":
        deadline = time.monotonic() + 30
        while redis_keys(prefix):  # Redis expires them itself
            assert time.monotonic() < deadline
            time.sleep(0.1)
    else:
        time.sleep(max(0.0, 6.2 - (time.monotonic() - recorded)))
    res3, rec3 = run_json(clipipe, pipeline_file(tmp_path, broker.url, topic, f"{ns}-3", realtime=rt, idle="1s"))
    assert res3.code == 0
    recs = stub_records(res3.err)
    assert len(recs) == 8 and rec3["metrics"]["realtime"]["duplicates_skipped"] == 0
    # ids expire, known entities don't: the CREATEs pass as they are, nothing is converted
    assert rec3["metrics"]["realtime"]["upserts_converted"] == 0


def test_update_before_create_is_converted(broker, clipipe, tmp_path, redis_prefix) -> None:
    topic = new_topic(broker, 1)
    rt = f"  dedup_storage: redis\n  redis_prefix: '{redis_prefix}'\n"
    produce(broker.url, topic, [
        ("a", event(1, "UPDATE", "a")),   # never seen: CREATE
        ("a", event(2, "UPDATE", "a")),   # known now: UPDATE
        ("b", event(3, "CREATE", "b")),
        ("a", event(4, "DELETE", "a")),   # forgotten
        ("a", event(5, "UPDATE", "a")),   # unknown again: CREATE
    ])
    p = pipeline_file(tmp_path, broker.url, topic, f"g-{redis_prefix}", realtime=rt)
    res, rec = run_json(clipipe, p)
    assert res.code == 0, res
    assert [(r["event_id"], r["event_type"]) for r in stub_records(res.err)] == [
        ("e1", "CREATE"), ("e2", "UPDATE"), ("e3", "CREATE"), ("e4", "DELETE"), ("e5", "CREATE")]
    assert rec["metrics"]["realtime"]["upserts_converted"] == 2
    # the entities live in Redis: a later run (same group, new events) knows a and b
    produce(broker.url, topic, [("b", event(6, "UPDATE", "b")), ("c", event(7, "UPDATE", "c"))])
    res2, rec2 = run_json(clipipe, p)
    assert [(r["event_id"], r["event_type"]) for r in stub_records(res2.err)] == [("e6", "UPDATE"), ("e7", "CREATE")]


def test_kill_before_output_ack_redelivers(broker, tmp_path, callback, clipipe_home) -> None:
    """kill -9 while the output is still delivering: nothing was committed, the batch comes again."""
    topic = new_topic(broker, 1)
    produce(broker.url, topic, [("k", event(i, "CREATE", f"u{i}")) for i in range(10)])
    src = "  batch_size: 4\n"
    p = pipeline_file(tmp_path, broker.url, topic, "g-kill1", source=src, output=callback.output(), idle=None)
    proc: list[Running] = []

    def crash(batch: list) -> int | None:
        os.kill(proc[0].proc.pid, signal.SIGKILL)
        return None
    callback.on_post = crash
    proc.append(Running("run", str(p), cwd=tmp_path))
    rc, _, err = proc[0].finish()
    assert rc == -signal.SIGKILL
    assert committed(broker.url, "g-kill1", topic, 1) == {0: None}
    callback.on_post = None
    p2 = pipeline_file(tmp_path, broker.url, topic, "g-kill1", source=src, output=callback.output())
    again = Running("run", str(p2), cwd=tmp_path)
    rc, _, err = again.finish()
    assert rc == 0, err
    assert [r["event_id"] for r in callback.records()] == [f"e{i}" for i in range(10)]
    assert committed(broker.url, "g-kill1", topic, 1) == {0: 10}


def test_kill_after_dedup_before_commit_is_deduped(tmp_path, callback, redis_prefix, clipipe_home) -> None:
    """The output acknowledged and the ids are in Redis, the offset commit is in flight: kill -9.
    The broker never got the commit, so the batch is re-delivered, and dedup skips all of it."""
    if tansu_binary()[0] is None:
        _need(tansu_binary()[1])
    proxy_port = free_port()
    b = start_broker(str(tmp_path), advertised_port=proxy_port)
    proxy = FreezeProxy(proxy_port, (b.host, b.port))
    try:
        topic = new_topic(b, 1)
        produce(b.url, topic, [("k", event(i, "CREATE", f"u{i}")) for i in range(10)])
        rt = f"  dedup_storage: redis\n  redis_prefix: '{redis_prefix}'\n"
        src = "  batch_size: 4\n"

        first_batch: list[list] = []

        def ack_then_freeze(batch: list) -> int:
            proxy.freeze()   # from now on nothing clipipe sends reaches the broker
            first_batch.append(batch)
            return 200
        callback.on_post = ack_then_freeze
        p = pipeline_file(tmp_path, b.url, topic, "g-kill2", realtime=rt, source=src,
                          output=callback.output(), idle=None)
        first = Running("run", str(p), cwd=tmp_path)
        proxy.wait_held(OFFSET_COMMIT)             # the commit is on its way, held by the proxy
        n = len(first_batch[0])                    # up to batch_size (4)
        assert 0 < n <= 4
        assert len(redis_keys(redis_prefix)) == n, "the batch's ids are recorded before the commit"
        first.kill()
        callback.on_post = None
        proxy.thaw(drop_held=True)                 # what the dead process sent never arrives
        assert committed(b.url, "g-kill2", topic, 1) == {0: None}
        p2 = pipeline_file(tmp_path, b.url, topic, "g-kill2", realtime=rt, source=src,
                           output=callback.output())
        res = Running("run", "--json", str(p2), cwd=tmp_path)
        rc, out, err = res.finish()
        assert rc == 0, err
        rec = json.loads(out)
        assert rec["metrics"]["realtime"]["duplicates_skipped"] == n, err
        assert [r["event_id"] for r in callback.records()] == [f"e{i}" for i in range(10)]  # each once
        assert committed(b.url, "g-kill2", topic, 1) == {0: 10}
    finally:
        proxy.close()
        b.stop()


def test_failing_output_commits_nothing(broker, clipipe, tmp_path, callback) -> None:
    topic = new_topic(broker, 2)
    produce(broker.url, topic, [(f"u{i}", event(i, "CREATE", f"u{i}")) for i in range(6)])
    callback.on_post = lambda batch: 500
    p = pipeline_file(tmp_path, broker.url, topic, "g-fail", output=callback.output())
    res, _ = run_json(clipipe, p)
    assert res.code == 1 and "callback" in res.err and "answered 500" in res.err
    assert "Traceback" not in res.err
    assert committed(broker.url, "g-fail", topic, 2) == {0: None, 1: None}
    callback.on_post = None
    res2, rec2 = run_json(clipipe, p)
    assert res2.code == 0, res2
    assert sorted(r["event_id"] for r in callback.records()) == sorted(f"e{i}" for i in range(6))
    assert sum(v or 0 for v in committed(broker.url, "g-fail", topic, 2).values()) == 6


def test_two_processes_split_partitions_and_share_dedup(broker, tmp_path, redis_prefix, clipipe_home) -> None:
    """Two clipipe processes in one group: Kafka gives each half the partitions; ids and entities
    live in Redis, so an event re-sent to another partition is skipped by whichever process gets it."""
    topic = new_topic(broker, 4)
    rt = f"  dedup_storage: redis\n  redis_prefix: '{redis_prefix}'\n"
    p = pipeline_file(tmp_path, broker.url, topic, f"g-{redis_prefix}", realtime=rt, idle="6s")
    a = Running("run", "--json", str(p), cwd=tmp_path)
    a.wait_for(lambda: a.assigned() is not None and len(a.assigned() or []) == 4, what="a's assignment")
    b = Running("run", "--json", str(p), cwd=tmp_path)

    def split() -> bool:
        pa, pb = a.assigned() or [], b.assigned() or []
        return len(pa) == 2 and len(pb) == 2 and not set(pa) & set(pb)
    b.wait_for(split, what="the group to split the partitions")
    # wave 1: 12 entities x 5 ordered events, keyed by entity (one partition per entity)
    wave1 = [(f"u{e}", event(e * 10 + s, "UPDATE" if s else "CREATE", f"u{e}", seq=s))
             for s in range(5) for e in range(12)]
    produce(broker.url, topic, wave1)
    deadline = time.monotonic() + 60
    while len(redis_keys(redis_prefix)) < len(wave1):  # every id recorded: both processes are done
        assert time.monotonic() < deadline, "wave 1 was not processed"
        time.sleep(0.1)
    # wave 2: copies of wave-1 events sent to a partition other than their entity's
    wave2 = wave1[:8]
    produce(broker.url, topic, wave2, partition_of=lambda i, k: (i + 1) % 4)
    outs = []
    for proc in (a, b):
        rc, out, err = proc.finish()
        assert rc == 0, err
        outs.append((json.loads(out), stub_records(err)))
    assert all(o[1] for o in outs), "each process output part of the events"
    ids = [r["event_id"] for _, recs in outs for r in recs]
    assert sorted(ids) == sorted(e[1]["event_id"] for e in wave1)  # each exactly once, in total
    assert sum(m["metrics"]["realtime"]["duplicates_skipped"] for m, _ in outs) == len(wave2)
    ents_a = {r["entity_id"] for r in outs[0][1]}
    ents_b = {r["entity_id"] for r in outs[1][1]}
    assert not ents_a & ents_b  # an entity's partition belongs to one process
    for _, recs in outs:
        for ent in {r["entity_id"] for r in recs}:
            seqs = [r["seq"] for r in recs if r["entity_id"] == ent]
            assert seqs == list(range(5))  # in order, and the first one is the CREATE
    assert set(outs[0][0]["metrics"]["source"]["assigned"]) | set(outs[1][0]["metrics"]["source"]["assigned"]) \
        == {f"{topic}/{i}" for i in range(4)}


@pytest.mark.parametrize("on_error", ["stop", "skip"])
def test_bad_messages(broker, clipipe, tmp_path, on_error) -> None:
    topic = new_topic(broker, 1)
    produce(broker.url, topic, [("k", event(1, "CREATE", "a")), ("k", "{not json"),
                                ("k", event(3, "CREATE", "c"))])
    group = f"g-bad-{on_error}"
    p = pipeline_file(tmp_path, broker.url, topic, group, source="  batch_size: 1\n", on_error=on_error)
    res, rec = run_json(clipipe, p)
    if on_error == "stop":
        assert res.code == 1 and "invalid JSON" in res.err and "Traceback" not in res.err
        assert f"{topic}/0 offset 1" in res.err  # where to find the bad message
        assert [r["event_id"] for r in stub_records(res.err)] == ["e1"]
        assert committed(broker.url, group, topic, 1) == {0: 1}  # the good batch before, not the bad one
    else:
        assert res.code == 0, res
        assert [r["event_id"] for r in stub_records(res.err)] == ["e1", "e3"]
        assert rec["metrics"]["errors"] == 1
        assert committed(broker.url, group, topic, 1) == {0: 3}


@pytest.mark.parametrize("sig, code, status", [(signal.SIGTERM, 0, "stopped"), (signal.SIGINT, 130, "cancelled")])
def test_signal_stops_gracefully(broker, tmp_path, clipipe_home, sig, code, status) -> None:
    topic = new_topic(broker, 2)
    produce(broker.url, topic, [(f"u{i}", event(i, "CREATE", f"u{i}")) for i in range(10)])
    group = f"g-sig-{sig.name}"
    p = pipeline_file(tmp_path, broker.url, topic, group, idle=None)
    run = Running("run", "--json", str(p), cwd=tmp_path)
    run.wait_for(lambda: len(stub_records("".join(run.err))) == 10, what="the 10 records")
    run.proc.send_signal(sig)
    rc, out, err = run.finish()
    assert rc == code, err
    rec = json.loads(out)
    assert rec["status"] == status and rec["metrics"]["realtime"]["stopped_by"] == sig.name
    assert sum(v or 0 for v in committed(broker.url, group, topic, 2).values()) == 10


def test_unreachable_broker_is_one_error(clipipe, tmp_path) -> None:
    p = pipeline_file(tmp_path, f"127.0.0.1:{free_port()}", "t", "g", source="  request_timeout: 3s\n")
    res = clipipe("run", str(p), timeout=60)
    assert res.code == 1 and "can't reach the brokers" in res.err and "Traceback" not in res.err


def test_lines_format_metadata_tombstones_max_messages(broker, clipipe, tmp_path) -> None:
    """format: lines keeps each value as text; key/partition/offset reach mappings as metadata;
    a tombstone is counted and skipped; max_messages ends the run and commits exactly that many."""
    topic = new_topic(broker, 1)
    produce(broker.url, topic, [("k1", "first line"), ("k2", None), ("k3", "third"), ("k4", "fourth")])
    steps = ('{name: m, transform: "root = this\\nroot.event_id = meta(\\"kafka_key\\")\\n'
             'root.where = meta(\\"kafka_partition\\").string() + \\":\\" + meta(\\"kafka_offset\\").string()"}')
    text = (f"name: lines\ntype: realtime\nsource:\n  type: kafka\n  brokers: ['{broker.url}']\n"
            f"  topics: [{topic}]\n  group_id: g-lines\n  format: lines\n  field: text\n  max_messages: 3\n"
            f"{FAST_GROUP}realtime: {{id_field: text, dedup_storage: memory}}\n"
            f"steps: [{steps}]\noutput: {{type: stdout}}\n")
    p = tmp_path / "lines.yaml"
    p.write_text(text)
    res = clipipe("run", "-q", str(p), timeout=90)
    assert res.code == 0, res
    recs = [json.loads(x) for x in res.out.splitlines()]
    assert recs == [{"text": "first line", "event_id": "k1", "where": "0:0"},
                    {"text": "third", "event_id": "k3", "where": "0:2"}]
    assert committed(broker.url, "g-lines", topic, 1) == {0: 3}

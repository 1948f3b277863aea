"""Record pipelines side by side with the tools users reach for instead.

    python benchmarks/bench_records.py [--records 1000000] [--sql-rows 1000000] [--no-sql]

1. NDJSON -> filter `.data.status == "active"` -> stdout (/dev/null)   vs  jq -c 'select(...)'
2. NDJSON -> select [id, name] -> stdout                                vs  jq -c '{id, name}'
3. PostgreSQL table -> sql source -> stdout                             vs  psql -c "COPY (...) TO STDOUT"
Every figure includes process start-up on both sides (each run is a fresh process).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(os.path.dirname(HERE), "src")


def make_ndjson(path: str, n: int) -> None:
    rnd = random.Random(1)
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": i, "name": f"user{i}", "email": f"u{i}@example.org",
                                "data": {"status": rnd.choice(["active", "inactive", "banned"]),
                                         "score": round(rnd.random() * 100, 3), "tags": ["a", "b"]}}) + "\n")


def timed(cmd: list[str], stdin_path: str | None = None, env: dict | None = None) -> float:
    with open(os.devnull, "w") as devnull:
        t = time.perf_counter()
        subprocess.run(cmd, stdout=devnull, check=True, env=env)
        return time.perf_counter() - t


def clipipe_cmd(pipeline: str) -> list[str]:
    code = textwrap.dedent(f"""
        import asyncio, sys
        from clipipe.records.testing import load_text
        from clipipe.state.sqlite import SQLiteStore
        p = load_text(open({pipeline!r}).read(), {pipeline!r}, write=False)
        asyncio.run(p.run(store=SQLiteStore({pipeline + '.db'!r}), op_id='bench', stdout=sys.stdout,
                          stderr=sys.stderr, quiet=True))
        """)
    return [sys.executable, "-c", code]


def best(f, repeat: int) -> float:
    return min(f() for _ in range(repeat))


def row(label: str, n: int, ours: float, theirs: float, other: str) -> None:
    print(f"{label:<34} clipipe {n / ours:>12,.0f} rec/s   {other} {n / theirs:>12,.0f} rec/s   "
          f"ratio {theirs / ours:5.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--sql-rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-sql", action="store_true")
    args = ap.parse_args()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    tmp = tempfile.mkdtemp(prefix="clipipe-bench-")
    try:
        data = os.path.join(tmp, "in.ndjson")
        make_ndjson(data, args.records)
        print(f"{args.records:,} records, {os.path.getsize(data) / 1e6:.0f} MB NDJSON; best of {args.repeat}")
        jq = shutil.which("jq")
        for label, step, jq_prog in [
            ("filter .data.status==\"active\"", "filter: '.data.status == \"active\"'",
             'select(.data.status=="active")'),
            ("select id, name", "select: [id, name]", "{id, name}"),
        ]:
            pipe = os.path.join(tmp, "p.yaml")
            with open(pipe, "w") as f:
                f.write(f"name: bench\nsource: {{type: file, path: {data}, batch_size: 4096}}\n"
                        f"steps:\n  - name: s\n    {step}\noutput: {{type: stdout, flush_every: 0}}\n")
            ours = best(lambda: timed(clipipe_cmd(pipe), env=env), args.repeat)
            theirs = best(lambda: timed([jq, "-c", jq_prog, data]), args.repeat) if jq else float("nan")
            row(label, args.records, ours, theirs, "jq")
        if not args.no_sql:
            bench_sql(tmp, args, env)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def bench_sql(tmp: str, args: argparse.Namespace, env: dict) -> None:
    try:
        import psycopg
        conn = psycopg.connect("host=127.0.0.1 user=postgres dbname=test", autocommit=True, connect_timeout=3)
    except Exception as exc:
        print(f"sql: skipped (PostgreSQL not reachable: {exc})")
        return
    table = f"bench_{os.getpid()}"
    n = args.sql_rows
    conn.execute(f"CREATE TABLE {table} (id BIGINT PRIMARY KEY, name TEXT, email TEXT, score DOUBLE PRECISION, "
                 "status TEXT)")
    try:
        conn.execute(f"INSERT INTO {table} SELECT g, 'user' || g, 'u' || g || '@example.org', "
                     f"(g % 1000) / 10.0, (ARRAY['active','inactive','banned'])[1 + g % 3] "
                     f"FROM generate_series(1, {n}) g")
        pipe = os.path.join(tmp, "sql.yaml")
        with open(pipe, "w") as f:
            f.write(f"name: bench-sql\nsource:\n  type: sql\n  driver: postgres\n"
                    f"  dsn: host=127.0.0.1 user=postgres dbname=test\n  query: SELECT * FROM {table}\n"
                    f"  fetch_size: 5000\noutput: {{type: stdout, flush_every: 0}}\n")
        ours = best(lambda: timed(clipipe_cmd(pipe), env=env), args.repeat)
        psql = shutil.which("psql")
        theirs = best(lambda: timed([psql, "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-c",
                                     f"COPY (SELECT * FROM {table}) TO STDOUT"]), args.repeat) \
            if psql else float("nan")
        row("postgres table -> NDJSON", n, ours, theirs, "psql COPY")
    finally:
        conn.execute(f"DROP TABLE {table}")
        conn.close()


if __name__ == "__main__":
    main()

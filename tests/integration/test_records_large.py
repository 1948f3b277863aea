"""A 1 GiB NDJSON file through filter and select: memory stays flat (peak RSS far below the file)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import PEAK_RSS_KIB

GIB = 1 << 30


def _make_file(path, size: int) -> int:
    """Write ~`size` bytes of NDJSON by repeating a 1 MiB chunk of lines; returns the line count."""
    lines = []
    total = 0
    i = 0
    while total < (1 << 20):
        line = json.dumps({"id": i, "name": f"user{i}", "data": {"status": "active" if i % 3 == 0 else "idle",
                                                                 "score": i % 100}}) + "\n"
        lines.append(line)
        total += len(line)
        i += 1
    chunk = "".join(lines).encode()
    n = 0
    with open(path, "wb") as f:
        while n * len(chunk) < size:
            f.write(chunk)
            n += 1
    return n * len(lines)


@pytest.mark.slow
def test_one_gib_ndjson_with_flat_memory(tmp_path) -> None:
    data = tmp_path / "big.ndjson"
    count = _make_file(data, GIB)
    pipe = tmp_path / "p.yaml"
    pipe.write_text(textwrap.dedent(f"""\
        name: big
        source: {{type: file, path: {data}, batch_size: 2000}}
        steps:
          - name: active
            filter: '.data.status == "active"'
          - name: slim
            select: [id, data.score]
        output: {{type: file, path: {tmp_path / 'out.ndjson'}}}
        """))
    code = textwrap.dedent(f"""
        import asyncio, io, json, sys
        from clipipe.records.testing import load_text
        from clipipe.state.sqlite import SQLiteStore
        pipe = load_text(open({str(pipe)!r}).read(), {str(pipe)!r}, write=False)
        m = asyncio.run(pipe.run(store=SQLiteStore({str(tmp_path / 's.db')!r}), op_id='big',
                                 stdout=io.StringIO(), stderr=sys.stderr, quiet=True))
        print(json.dumps({{"records_in": m["records_in"], "records_out": m["records_out"],
                          "rss_kib": {PEAK_RSS_KIB}}}))
        """)
    started = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}, timeout=1800)
    took = time.monotonic() - started
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"\n1 GiB NDJSON ({count} records): {took:.1f} s, peak RSS {got['rss_kib'] / 1024:.0f} MiB")
    assert got["records_in"] == count
    assert abs(got["records_out"] - count / 3) <= count / 3 * 0.01 + 2
    assert got["rss_kib"] * 1024 < 200 * (1 << 20), "peak RSS should stay far below the 1 GiB input"

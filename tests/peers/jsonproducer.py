"""A real producer of JSON event streams for the command source's tests (run as a separate process).

    python3 jsonproducer.py --count N [--pretty] [--garbage-every K] [--pad BYTES] [--die-mid-object]
                            [--stats FILE] [--stall-file FILE] [--exit CODE]
    python3 jsonproducer.py --bytes TOTAL          # ~TOTAL bytes of NDJSON, fast (a repeated 1 MiB chunk)

Messages are `{"seq": i, "type": ..., "text": ..., "input": {...}}`, types cycling through
text, tool_use, error, system. With --stats the producer writes its stdout non-blocking and counts
*stalls*: writes refused because the pipe was full (the reader had stopped reading), then waits in
select() until it can write again; the counts go to FILE at the end as JSON. --stall-file is created
at the first stall (a test can wait for it instead of sleeping).
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys

TYPES = ["text", "tool_use", "error", "system"]


def message(i: int, pad: int) -> dict:
    return {"seq": i, "type": TYPES[i % 4], "text": f"message {i} " + "x" * pad, "input": {"n": i, "ok": i % 3 == 0}}


class Out:
    """stdout, written whole; counts the times the pipe was full."""

    def __init__(self, count_stalls: bool, stall_file: str | None) -> None:
        self.fd = sys.stdout.fileno()
        self.stalls = 0
        self.written = 0
        self.stall_file = stall_file
        if count_stalls:
            os.set_blocking(self.fd, False)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                self.stalls += 1
                if self.stalls == 1 and self.stall_file:
                    open(self.stall_file, "w").close()
                select.select([], [self.fd], [])
                continue
            view = view[n:]
            self.written += n


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--count", type=int, default=10)
    ap.add_argument("--bytes", type=int, default=0)
    ap.add_argument("--pretty", action="store_true")
    ap.add_argument("--garbage-every", type=int, default=0)
    ap.add_argument("--pad", type=int, default=0)
    ap.add_argument("--die-mid-object", action="store_true")
    ap.add_argument("--stats")
    ap.add_argument("--stall-file")
    ap.add_argument("--exit", type=int, default=0)
    a = ap.parse_args()
    out = Out(bool(a.stats), a.stall_file)
    if a.bytes:
        lines, size, i = [], 0, 0
        while size < (1 << 20):
            line = json.dumps(message(i, 40)) + "\n"
            lines.append(line)
            size += len(line)
            i += 1
        chunk = "".join(lines).encode()
        for _ in range(max(1, a.bytes // len(chunk))):
            out.write(chunk)
        sys.stderr.write(f"wrote {out.written} bytes, {len(lines)} messages per chunk\n")
    else:
        batch = []
        for i in range(a.count):
            text = json.dumps(message(i, a.pad), indent=2 if a.pretty else None)
            batch.append(text + "\n")
            if a.garbage_every and i % a.garbage_every == a.garbage_every - 1:
                batch.append(f"WARNING: garbage after message {i}\n")
            if len(batch) >= 64:
                out.write("".join(batch).encode())
                batch = []
        out.write("".join(batch).encode())
        sys.stderr.write(f"wrote {a.count} messages\n")
    if a.stats:
        with open(a.stats, "w") as f:
            json.dump({"stalls": out.stalls, "written": out.written, "count": a.count}, f)
    if a.die_mid_object:
        out.write(b'{"seq": -1, "type": "text", "input": {"n": 1')
        sys.stderr.write("producer: dying mid-object\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return a.exit


if __name__ == "__main__":
    sys.exit(main())

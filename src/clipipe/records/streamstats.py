"""Figures of a JSON message stream: latency percentiles in constant memory, sizes, status lines."""
from __future__ import annotations

import math
import re
from typing import Any

from clipipe.errors import Mark, SpecError

#: latency buckets grow by 5 %: percentiles are exact to within 5 % whatever the stream's length
_GROWTH = 1.05
_LOG = math.log(_GROWTH)
#: the smallest bucket's upper bound (1 µs): anything faster is "1 µs"
_FLOOR = 1e-6
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.I)
_UNITS = {"": 1, "B": 1, "K": 1000, "KB": 1000, "KIB": 1 << 10, "KI": 1 << 10, "M": 10 ** 6, "MB": 10 ** 6,
          "MIB": 1 << 20, "MI": 1 << 20, "G": 10 ** 9, "GB": 10 ** 9, "GIB": 1 << 30, "GI": 1 << 30,
          "T": 10 ** 12, "TB": 10 ** 12, "TIB": 1 << 40, "TI": 1 << 40}


def parse_size(value: Any, mark: Mark | None, what: str) -> int:
    """`8MiB`, `64KiB`, `1MB`, `512` (bytes) -> bytes; a SpecError otherwise."""
    if isinstance(value, bool):
        raise SpecError(f"{what}: expected a size like 8MiB, got {value!r}", mark=mark)
    if isinstance(value, int):
        n = value
    else:
        m = _SIZE.match(str(value))
        unit = (m.group(2) or "").upper() if m else ""
        if not m or unit not in _UNITS:
            raise SpecError(f"{what}: {value!r} is not a size (write e.g. 8MiB, 64KiB, 1MB or bytes)", mark=mark)
        n = int(float(m.group(1)) * _UNITS[unit])
    if n < 1:
        raise SpecError(f"{what}: must be at least 1 byte", mark=mark)
    return n


class LatencyHistogram:
    """Counts of latencies in log buckets: p50/p95/p99 of any number of samples in a few KiB."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.n = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, seconds: float, count: int = 1) -> None:
        """Record `count` messages that each took `seconds`."""
        if count <= 0:
            return
        b = 0 if seconds <= _FLOOR else int(math.log(seconds / _FLOOR) / _LOG) + 1
        self.counts[b] = self.counts.get(b, 0) + count
        self.n += count
        self.total += seconds * count
        if seconds > self.max:
            self.max = seconds

    def quantile(self, q: float) -> float:
        """The latency below which a fraction `q` of the messages stayed (bucket upper bound)."""
        if not self.n:
            return 0.0
        rank = q * self.n
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return min(self.max, _FLOOR * _GROWTH ** b)
        return self.max

    def as_dict(self, what: str) -> dict[str, Any]:
        """Percentiles in milliseconds, for the metrics."""
        def ms(s: float) -> float:
            return round(s * 1000, 3)
        return {"p50": ms(self.quantile(0.5)), "p95": ms(self.quantile(0.95)), "p99": ms(self.quantile(0.99)),
                "max": ms(self.max), "mean": ms(self.total / self.n) if self.n else 0.0, "messages": self.n,
                "what": what}


def human_bytes(n: float) -> str:
    """1.2 MB style."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def status_line(stats: dict[str, Any], final: bool) -> str:
    """One line about the stream so far (live) or in the end (summary)."""
    buf = stats.get("buffer", {})
    lat = stats.get("latency_ms", {})
    parts = [f"{stats['messages']:,} messages ({human_bytes(stats['bytes'])})",
             f"{stats['msgs_per_s']:,.0f} msg/s", f"{stats['mb_per_s']:.1f} MB/s",
             f"{stats['parse_errors']} parse errors"]
    if buf:
        dropped = buf.get("dropped", 0)
        parts.append(f"{buf.get('backpressure_events', 0)} back-pressure waits "
                     f"({buf.get('blocked_s', 0):.1f} s)")
        if dropped or buf.get("policy") != "block":
            parts.append(f"{dropped} dropped ({buf.get('policy')})")
        if not final:
            parts.append(f"buffer {buf.get('held', 0)}/{buf.get('capacity', 0)}")
    if lat.get("messages"):
        parts.append(f"latency p50 {lat['p50']:.1f} ms p95 {lat['p95']:.1f} ms p99 {lat['p99']:.1f} ms")
    return ("command source: " if final else "command source (running): ") + ", ".join(parts)

"""A bounded message buffer between a reading thread and the record steps, with back-pressure.

The reader thread `put`s runs of parsed messages; the pipeline (on the event loop) awaits `get`.
When the buffer is full the policy decides:

- `block` (default): `put` waits, so the reader stops reading and the producer's pipe fills: the
  kernel stops the producer (back-pressure reaches it, nothing is lost). Each wait is a
  back-pressure event; the time waited is summed.
- `drop_newest`: the messages that don't fit are dropped (the buffer keeps what it has).
- `drop_oldest`: the oldest buffered messages are dropped to make room (the freshest win).

Bounds: `size` messages and `max_bytes` of message text, whichever is reached first (a run larger
than `max_bytes` is still taken into an empty buffer, so one big message can't deadlock it).

Slow consumer: when the buffer holds at least `high_water` of its capacity for `slow_after` seconds
the consumer is flagged slow: a warning (collected here, printed by the consumer's thread) and a
metric. The episode ends when the buffer falls below the mark.

Adaptive size (`max_size` > `size`): a buffer that fills while the consumer is not flagged slow
doubles, up to `max_size`, so a burst is absorbed instead of blocking or dropping; each time the
consumer empties it, it halves back towards `size`. A consumer that is steadily too slow gets no
growth (more memory would only delay the same outcome).
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

POLICIES = ("block", "drop_oldest", "drop_newest")
#: 64 MiB of buffered message text: plenty for bursts of events, bounded whatever `size` says
DEFAULT_MAX_BYTES = 64 << 20
#: how often a blocked producer wakes to look at the clock (slow-consumer detection while blocked)
_WAKE_S = 0.25


@dataclass
class BufferMetrics:
    """What the buffer saw, for the metrics and the operation record."""

    policy: str
    size: int
    capacity: int                  #: the capacity now (differs from size when adaptive)
    max_size: int
    offered: int = 0               #: messages the reader put
    messages_in: int = 0           #: of those, taken into the buffer
    messages_out: int = 0          #: handed to the steps
    dropped_oldest: int = 0
    dropped_newest: int = 0
    backpressure_events: int = 0   #: times the reader had to wait for room (policy block)
    blocked_s: float = 0.0         #: total time it waited
    high_water_mark: int = 0       #: most messages held at once
    slow_consumer_events: int = 0
    grown: int = 0
    shrunk: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The figures, with `dropped` as their sum."""
        d = asdict(self)
        d["blocked_s"] = round(self.blocked_s, 6)
        d["dropped"] = self.dropped_oldest + self.dropped_newest
        return d


@dataclass
class Taken:
    """Messages handed to the consumer, with when each run of them was read."""

    values: list[Any] = field(default_factory=list)
    texts: list[str] | None = field(default_factory=list)
    born: list[tuple[int, float]] = field(default_factory=list)  #: (count, clock time read) per run
    nbytes: int = 0


class MessageBuffer:
    """Bounded and thread-safe: one producer thread `put`s, one asyncio consumer `get`s."""

    def __init__(self, size: int = 1000, policy: str = "block", *, max_size: int | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, high_water: float = 0.8, slow_after: float = 5.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}")
        if size < 1 or (max_size is not None and max_size < size) or max_bytes < 1:
            raise ValueError("size must be at least 1 and max_size at least size")
        if not 0 < high_water <= 1:
            raise ValueError("high_water must be a fraction in (0, 1]")
        self.policy = policy
        self.size = size
        self.max_size = max_size or size
        self.capacity = size
        self.max_bytes = max_bytes
        self.high_water = high_water
        self.slow_after = slow_after
        self.clock = clock
        self.metrics = BufferMetrics(policy, size, size, self.max_size)
        self._segs: deque[list[Any]] = deque()   # [values, texts, nbytes, born]
        self._count = 0
        self._bytes = 0
        self._cond = threading.Condition()
        self._closed = False
        self._cancelled = False
        self.error: BaseException | None = None
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self._above_since: float | None = None
        self.slow = False
        self._warnings: list[str] = []

    def __len__(self) -> int:
        return self._count

    # -- producer side (any thread) ---------------------------------------------------------------

    def put(self, values: list[Any], texts: list[str] | None, nbytes: int, born: float) -> bool:
        """Offer a run of messages read at `born`; False once the consumer has gone away."""
        if not values:
            return not self._cancelled
        with self._cond:
            self._track()  # on the state before this run: a full buffer may be a slow consumer's
            m = self.metrics
            m.offered += len(values)
            if self.policy == "drop_oldest":
                self._append(values, texts, nbytes, born)
                while self._count > self.capacity and self._maybe_grow():
                    pass
                self._evict()
            else:
                i, n = 0, len(values)
                while i < n and not self._cancelled:
                    room = self._room()
                    if room <= 0 and self._count >= self.capacity and self._maybe_grow():
                        continue
                    if room <= 0:
                        if self.policy == "drop_newest":
                            m.dropped_newest += n - i
                            break
                        self._wait_for_room()
                        continue
                    take = min(room, n - i)
                    if i == 0 and take == n:
                        self._append(values, texts, nbytes, born)
                    else:
                        self._append(values[i:i + take], texts[i:i + take] if texts is not None else None,
                                     nbytes * take // n, born)
                    i += take
            self._track()
            self._wake()
            return not self._cancelled

    def close(self, error: BaseException | None = None) -> None:
        """The producer is done (with `error` if it failed); the consumer drains what is left."""
        with self._cond:
            self._closed = True
            if error is not None and self.error is None:
                self.error = error
            self._wake()

    def cancel(self) -> None:
        """The consumer is gone: wake a blocked producer; further puts are refused."""
        with self._cond:
            self._cancelled = True
            self._segs.clear()
            self._count = self._bytes = 0
            self._cond.notify_all()

    def _room(self) -> int:
        if self._count and self._bytes >= self.max_bytes:
            return 0
        return self.capacity - self._count

    def _full(self, over: bool = False) -> bool:
        if self._count > 1 and self._bytes > self.max_bytes:
            return True
        return self._count > self.capacity if over else self._count >= self.capacity

    def _append(self, values: list[Any], texts: list[str] | None, nbytes: int, born: float) -> None:
        self._segs.append([values, texts, nbytes, born])
        self._count += len(values)
        self._bytes += nbytes
        self.metrics.messages_in += len(values)
        if self._count > self.metrics.high_water_mark:
            self.metrics.high_water_mark = self._count

    def _evict(self) -> None:
        """Drop the oldest messages until the buffer is within its bounds again."""
        m = self.metrics
        while self._segs and self._full(over=True):
            seg = self._segs[0]
            n = len(seg[0])
            extra = self._count - self.capacity
            if extra <= 0:  # over on bytes: the oldest run goes, unless it is all there is
                if len(self._segs) == 1:
                    break
                extra = n
            if extra >= n:
                self._segs.popleft()
                self._count -= n
                self._bytes -= seg[2]
                m.dropped_oldest += n
            else:
                part = seg[2] * extra // n
                seg[0] = seg[0][extra:]
                if seg[1] is not None:
                    seg[1] = seg[1][extra:]
                seg[2] -= part
                self._count -= extra
                self._bytes -= part
                m.dropped_oldest += extra

    def _maybe_grow(self) -> bool:
        """Adaptive: double the capacity for a burst (not for a consumer flagged slow)."""
        if self.capacity >= self.max_size or self.slow:
            return False
        self.capacity = min(self.max_size, self.capacity * 2)
        self.metrics.capacity = self.capacity
        self.metrics.grown += 1
        return True

    def _wait_for_room(self) -> None:
        self._wake()  # what is in already must reach the consumer, or nobody makes room
        m = self.metrics
        m.backpressure_events += 1
        t0 = self.clock()
        while self._room() <= 0 and not self._cancelled:
            self._cond.wait(_WAKE_S)
            self._track()
        m.blocked_s += self.clock() - t0

    def _track(self) -> None:
        """Slow-consumer bookkeeping: how long the buffer has stayed above its high-water mark."""
        if self._count >= self.high_water * self.capacity:
            now = self.clock()
            if self._above_since is None:
                self._above_since = now
            elif not self.slow and now - self._above_since >= self.slow_after:
                self.slow = True
                self.metrics.slow_consumer_events += 1
                self._warnings.append(
                    f"slow consumer: the buffer has held over {self.high_water:.0%} of its {self.capacity} "
                    f"messages for {now - self._above_since:.1f} s (policy {self.policy})")
        else:
            self._above_since = None
            self.slow = False

    def _wake(self) -> None:
        w = self._waiter
        if w is not None:
            self._waiter = None
            loop, fut = w
            try:
                loop.call_soon_threadsafe(_set_done, fut)
            except RuntimeError:  # the loop is closed: nobody is waiting any more
                pass

    # -- consumer side (the event loop) -----------------------------------------------------------

    def take(self, max_items: int) -> Taken | None:
        """Up to `max_items` messages now (an empty Taken if none yet); None when closed and empty."""
        with self._cond:
            if not self._count:
                return None if self._closed else Taken()
            return self._take(max_items)

    async def get(self, max_items: int, timeout: float | None = None) -> Taken | None:
        """Wait for messages (at most `timeout` s: then an empty Taken); None when closed and empty."""
        while True:
            with self._cond:
                if self._count:
                    return self._take(max_items)
                if self._closed:
                    return None
                loop = asyncio.get_running_loop()
                fut: asyncio.Future[None] = loop.create_future()
                self._waiter = (loop, fut)
            try:
                await asyncio.wait_for(fut, timeout)
            except asyncio.TimeoutError:
                with self._cond:
                    self._waiter = None
                    self._track()
                    if not self._count and not self._closed:
                        return Taken()

    def warnings(self) -> list[str]:
        """Warnings raised since the last call (slow consumer), for the consumer to print."""
        with self._cond:
            w, self._warnings = self._warnings, []
            return w

    def _take(self, max_items: int) -> Taken:
        out = Taken()
        segs = self._segs
        while segs and len(out.values) < max_items:
            seg = segs[0]
            values, texts, nbytes, born = seg
            want = max_items - len(out.values)
            if len(values) <= want:
                segs.popleft()
                part_v, part_t, part_b = values, texts, nbytes
            else:
                part_v, part_t = values[:want], texts[:want] if texts is not None else None
                part_b = nbytes * want // len(values)
                seg[0] = values[want:]
                seg[1] = texts[want:] if texts is not None else None
                seg[2] = nbytes - part_b
            out.values += part_v
            if out.texts is not None:
                if part_t is None:
                    out.texts = None
                else:
                    out.texts += part_t
            out.born.append((len(part_v), born))
            out.nbytes += part_b
        n = len(out.values)
        self._count -= n
        self._bytes -= out.nbytes
        self.metrics.messages_out += n
        if not self._count and self.capacity > self.size:  # adaptive: emptied, so shrink back
            self.capacity = max(self.size, self.capacity // 2)
            self.metrics.capacity = self.capacity
            self.metrics.shrunk += 1
        self._track()
        self._cond.notify_all()
        return out


def _set_done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)

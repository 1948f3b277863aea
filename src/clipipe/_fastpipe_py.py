"""Stream core, pure-Python twin: copy one fd to many with checksums and a progress counter.

Same API and behaviour as the Cython ``_fastpipe`` (see ``fastpipe``); slower on multi-sink pipes
because it has no tee(2) and copies through a user buffer. The shared pieces (``Snapshot``,
``PumpResult``, ``hasher``, argument checks, rate maths) live here and the Cython module imports them,
so the two can't drift apart.

Rules both implementations follow:

- ``pump`` reads ``src`` to EOF and writes every byte to every live sink, in order; memory O(bufsize).
- A failing sink (EPIPE, EBADF, ...) under policy ``fail`` stops the pump (``failed`` = its index); under
  ``drop`` it is closed and skipped, like ``tee -p``. When every sink has been dropped and no checksum is
  wanted the pump stops early (nothing left to serve); with checksums it drains ``src`` to EOF so the
  digests cover the whole stream.
- ``src`` is never closed; sinks are closed at the end (or when dropped) if ``close_sinks``.
- Errors reading ``src`` raise ``OSError`` (after the sinks are closed).
"""
from __future__ import annotations

import errno
import hashlib
import os
import select
import stat
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

try:
    import xxhash
except ImportError:  # optional extra "fast"
    xxhash = None  # type: ignore[assignment]  # optional module missing: no xxh64/xxh3

IMPLEMENTATION = "python"

#: 1 MiB. Pump CPU per GiB for this loop, `cat 1G | pump sha256 -> pv`, best of 3 on a loaded
#: 2-core box: 64 KiB 1411 ms, 256 KiB 1234, 1 MiB 1360, 4 MiB 1367; into /dev/null: 1117, 1047,
#: 1014, 1038 (sha256 is ~900 of it). Below 256 KiB the per-iteration Python overhead shows; above
#: it the differences were noise, and 1 MiB matches one grown pipe and the Cython core.
DEFAULT_BUFSIZE = 1 << 20

#: Pipes we touch are grown to this size (F_SETPIPE_SZ) so each syscall moves up to 1 MiB instead of
#: the default 64 KiB; 1 MiB is Linux's default /proc/sys/fs/pipe-max-size for unprivileged users.
DEFAULT_PIPE_SIZE = 1 << 20

#: Seconds of samples behind the "recent" rate: long enough to smooth 100 ms scheduler jitter,
#: short enough that a stall shows within a couple of seconds (pv uses a similar window).
RATE_WINDOW = 2.0

_F_SETPIPE_SZ = getattr(__import__("fcntl"), "F_SETPIPE_SZ", 1031)  # 1031 on every Linux arch

_HASHLIB_ALGORITHMS = ("sha256", "sha1", "md5", "blake2b")
ALGORITHMS: tuple[str, ...] = _HASHLIB_ALGORITHMS + (("xxh64", "xxh3") if xxhash is not None else ())

_POLICIES = ("fail", "drop")


def hasher(name: str) -> Any:
    """Return a fresh incremental hash object (update/hexdigest) for one of ``ALGORITHMS``."""
    if name in _HASHLIB_ALGORITHMS:
        return hashlib.new(name)
    if xxhash is not None and name == "xxh64":
        return xxhash.xxh64()
    if xxhash is not None and name == "xxh3":
        return xxhash.xxh3_64()
    raise ValueError(f"unknown checksum algorithm {name!r}; known: {', '.join(ALGORITHMS)}")


class Snapshot(NamedTuple):
    """One sample of a Counter: sizes in bytes, times in seconds, rates in bytes/s."""

    bytes: int
    total: int | None
    elapsed: float
    rate: float
    avg_rate: float
    peak_rate: float
    eta: float | None
    percent: float | None
    done: bool


@dataclass
class PumpResult:
    """What a pump moved: byte count, hex digests, per-sink errors and the sinks dropped or failed."""

    bytes: int = 0
    digests: dict[str, str] = field(default_factory=dict)
    sink_errors: dict[int, str] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)
    failed: int | None = None
    duration: float = 0.0
    #: which copy path ran last: "splice", "tee" (tee+splice rounds) or "copy" (read/write loop)
    mode: str = "copy"

    @property
    def ok(self) -> bool:
        """True when no sink failed or was dropped."""
        return self.failed is None and not self.sink_errors


class RateMeter:
    """Turns (bytes, time) samples into recent/average/peak rates; only samplers touch it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # between sampling threads; the pump never takes it
        self._samples: deque[tuple[float, int]] = deque()
        self._peak = 0.0

    def snapshot(self, nbytes: int, total: int | None, start: float | None, end: float | None,
                 done: bool) -> Snapshot:
        """Build a Snapshot from the counter's raw fields."""
        now = time.monotonic()
        stop = end if end is not None else now
        elapsed = max(stop - start, 0.0) if start is not None else 0.0
        avg = nbytes / elapsed if elapsed > 0 else 0.0
        with self._lock:
            samples = self._samples
            if end is None:
                samples.append((now, nbytes))
            while len(samples) > 2 and now - samples[1][0] >= RATE_WINDOW:
                samples.popleft()
            if done:
                rate = avg
            elif len(samples) >= 2 and samples[-1][0] - samples[0][0] > 0.05:
                (t0, b0), (t1, b1) = samples[0], samples[-1]
                rate = (b1 - b0) / (t1 - t0)
            else:
                rate = avg  # too few samples yet for a recent rate
            self._peak = max(self._peak, rate)
            peak = self._peak
        if total is None:
            percent = eta = None
        else:
            percent = 100.0 * nbytes / total if total > 0 else (100.0 if done else 0.0)
            if done:
                eta = 0.0
            else:
                eta = max(total - nbytes, 0) / rate if rate > 0 else None
        return Snapshot(nbytes, total, elapsed, rate, avg, peak, eta, percent, done)


class Counter:
    """Progress counter: the pump adds to it, any thread calls snapshot(); no locks on the hot path."""

    __slots__ = ("total", "_bytes", "_start", "_end", "done", "_meter")

    def __init__(self, total: int | None = None) -> None:
        self.total = total
        self._bytes = 0
        self._start: float | None = None
        self._end: float | None = None
        self.done = False
        self._meter = RateMeter()

    @property
    def bytes(self) -> int:
        """Bytes counted so far."""
        return self._bytes

    def add(self, n: int) -> None:
        """Count n more bytes (single writer: the pump's thread)."""
        self._bytes += n

    def start(self) -> None:
        """Start the clock (the pump calls this; idempotent)."""
        if self._start is None:
            self._start = time.monotonic()

    def finish(self) -> None:
        """Stop the clock and mark the stream done."""
        self.start()
        self._end = time.monotonic()
        self.done = True

    def snapshot(self) -> Snapshot:
        """Sample bytes, rates, ETA and percent now."""
        return self._meter.snapshot(self._bytes, self.total, self._start, self._end, self.done)

    def __repr__(self) -> str:
        return f"Counter(bytes={self._bytes}, total={self.total}, done={self.done})"


# -- helpers shared with the Cython module --------------------------------------------------------

def check_args(sinks: Sequence[int], checksums: Sequence[str], policy: str | Sequence[str],
               bufsize: int) -> tuple[list[int], list[bool], list[tuple[str, Any]]]:
    """Validate pump arguments; return (sinks, drop-per-sink flags, [(algorithm, hash object)])."""
    fds = [int(fd) for fd in sinks]
    if isinstance(policy, str):
        policies = [policy] * len(fds)
    else:
        policies = list(policy)
        if len(policies) != len(fds):
            raise ValueError(f"policy has {len(policies)} entries for {len(fds)} sinks")
    for p in policies:
        if p not in _POLICIES:
            raise ValueError(f"unknown sink policy {p!r}; use 'fail' or 'drop'")
    if bufsize < 1:
        raise ValueError("bufsize must be positive")
    hashes = [(name, hasher(name)) for name in dict.fromkeys(checksums)]
    return fds, [p == "drop" for p in policies], hashes


def is_pipe(fd: int) -> bool:
    """True if fd is a pipe or FIFO (raises OSError for a bad fd)."""
    return stat.S_ISFIFO(os.fstat(fd).st_mode)


def grow_pipe(fd: int, size: int) -> None:
    """Best effort F_SETPIPE_SZ; a pipe already bigger, or a limit, is fine."""
    import fcntl

    try:
        if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < size:
            fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


def error_name(err: int) -> str:
    """errno -> its symbolic name ("EPIPE"), or the number as text."""
    return errno.errorcode.get(err, str(err))


def wait_fd(fd: int, events: int) -> None:
    """Block until fd is ready for events (for callers that hand us O_NONBLOCK fds)."""
    p = select.poll()
    p.register(fd, events)
    p.poll()


# -- the pump -------------------------------------------------------------------------------------

class _Pump:
    """One pump run: the sinks' state and the copy loops."""

    def __init__(self, src: int, fds: list[int], drop: list[bool], hashes: list[tuple[str, Any]],
                 counter: Counter | None, bufsize: int, close_sinks: bool, kernel: bool) -> None:
        self.src, self.fds, self.drop, self.hashes = src, fds, drop, hashes
        self.counter, self.bufsize, self.close_sinks = counter, bufsize, close_sinks
        self.live = [True] * len(fds)
        self.result = PumpResult()
        self.stopped = False
        self.splice_ok = kernel

    def sink_error(self, i: int, err: int) -> None:
        """Apply sink i's policy to an error: drop it, or stop the pump."""
        res = self.result
        res.sink_errors[i] = error_name(err)
        self.live[i] = False
        if self.drop[i]:
            res.dropped.append(i)
            self.close(i)
            if not any(self.live) and not self.hashes:
                self.stopped = True  # like tee -p: nobody left to serve
        else:
            res.failed = i
            self.stopped = True

    def close(self, i: int) -> None:
        """Close sink i once, if we own closing."""
        if self.close_sinks and self.fds[i] >= 0:
            try:
                os.close(self.fds[i])
            except OSError:
                pass
            self.fds[i] = -1

    def write_all(self, i: int, data: memoryview) -> None:
        """Write data to sink i, handling short writes, EINTR and O_NONBLOCK sinks."""
        fd = self.fds[i]
        while data:
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                wait_fd(fd, select.POLLOUT)
                continue
            except OSError as exc:
                self.sink_error(i, exc.errno or errno.EIO)
                return
            data = data[n:]

    def account(self, n: int) -> None:
        """Count n bytes consumed from src."""
        self.result.bytes += n
        if self.counter is not None:
            self.counter.add(n)

    def splice_round(self, i: int) -> int:
        """Move up to bufsize bytes src -> sink i in the kernel; -1 means 'retry with another mode'."""
        try:
            n = os.splice(self.src, self.fds[i], self.bufsize)
        except BlockingIOError:
            wait_fd(self.src, select.POLLIN)
            wait_fd(self.fds[i], select.POLLOUT)
            return -1
        except OSError as exc:
            if exc.errno == errno.EINVAL and self.splice_ok:
                self.splice_ok = False  # this pair of fds can't splice: use the read/write loop
            else:
                self.sink_error(i, exc.errno or errno.EIO)
            return -1
        self.account(n)
        return n

    def copy_round(self, buf: bytearray, view: memoryview) -> int:
        """Read once into buf, hash, write to every live sink."""
        try:
            n = os.readv(self.src, [buf])
        except BlockingIOError:
            wait_fd(self.src, select.POLLIN)
            return -1
        if n == 0:
            return 0
        chunk = view[:n]
        for _, h in self.hashes:
            h.update(chunk)
        for i, ok in enumerate(self.live):
            if ok:
                self.write_all(i, chunk)
                if self.stopped and self.result.failed is not None:
                    return n  # policy "fail": stop copying to everyone
        self.account(n)
        return n

    def run(self) -> None:
        """Copy until EOF on src or a stop."""
        buf = bytearray(self.bufsize)
        view = memoryview(buf)
        src_pipe = is_pipe(self.src)
        sink_pipe = []
        for i, fd in enumerate(self.fds):
            try:
                sink_pipe.append(is_pipe(fd))
            except OSError as exc:
                sink_pipe.append(False)
                self.sink_error(i, exc.errno or errno.EBADF)
        while not self.stopped:
            live = [i for i, ok in enumerate(self.live) if ok]
            if (self.splice_ok and not self.hashes and len(live) == 1
                    and (src_pipe or sink_pipe[live[0]])):
                self.result.mode = "splice"
                n = self.splice_round(live[0])
            else:
                self.result.mode = "copy"
                n = self.copy_round(buf, view)
            if n == 0:
                break


def pump(src: int, sinks: Sequence[int], *, checksums: Sequence[str] = (),
         counter: Counter | None = None, bufsize: int = DEFAULT_BUFSIZE,
         policy: str | Sequence[str] = "fail", close_sinks: bool = True,
         pipe_size: int = DEFAULT_PIPE_SIZE, kernel: bool = True) -> PumpResult:
    """Copy fd src to every fd in sinks until EOF, hashing and counting the same bytes.

    pipe_size: grow pipe ends to this many bytes (0: leave them); kernel=False: only the
    read/write loop (no splice/tee), for measurement or for fds that misbehave with splice.
    """
    fds, drop, hashes = check_args(sinks, checksums, policy, bufsize)
    t0 = time.monotonic()
    if counter is not None:
        counter.start()
    p = _Pump(src, fds, drop, hashes, counter, bufsize, close_sinks, kernel)
    try:
        if pipe_size:
            for fd in [src, *fds]:
                try:
                    if is_pipe(fd):
                        grow_pipe(fd, pipe_size)
                except OSError:
                    pass  # a bad sink fd is reported by run()
        p.run()
    finally:
        for i in range(len(fds)):
            p.close(i)
        if counter is not None:
            counter.finish()
    res = p.result
    res.digests = {name: h.hexdigest() for name, h in hashes}
    res.duration = time.monotonic() - t0
    return res

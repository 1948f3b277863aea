# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Stream core, native: copy one fd to many with tee(2)/splice(2), checksums and a progress counter.

Each pump runs in rounds with the GIL released; the GIL is taken back only to feed the hash objects
(hashlib releases it again inside update for big buffers) and to record errors. A round is one of:

- splice: one sink, no checksum, one end a pipe: splice(src -> sink), nothing crosses user space;
- tee:    src is a pipe (or a file spliced into a private pipe): tee(2) duplicates the pipe's pages
          into each pipe sink, then the round either splices the same bytes into the last sink
          (consuming them) or, when checksums or non-pipe sinks need the bytes, reads them once into
          the buffer. A sink that took only part of the round (tee stops when the sink pipe is full)
          gets the rest from the buffer, because tee always starts at the head of the source pipe;
- copy:   read once into the buffer, hash, write to every sink (files, sockets, ttys).

Everything else (Snapshot, PumpResult, hasher, the argument checks, the policy rules) is shared with
the pure-Python twin, ``_fastpipe_py``, whose docstring states the behaviour both follow.
"""
from __future__ import annotations

import os
import time

from libc.errno cimport errno, EINTR, EAGAIN, EINVAL, EIO
from libc.stdlib cimport malloc, free
from posix.unistd cimport read, write, close, pipe

from clipipe._fastpipe_py import (  # shared with the twin so the two can't drift
    ALGORITHMS, DEFAULT_PIPE_SIZE, PumpResult, RateMeter, Snapshot, check_args, error_name,
    grow_pipe, hasher, is_pipe,
)

cdef extern from "<fcntl.h>" nogil:
    # pyconfig.h defines _GNU_SOURCE, which exposes tee/splice
    ssize_t c_tee "tee"(int fd_in, int fd_out, size_t length, unsigned int flags)
    ssize_t c_splice "splice"(int fd_in, void *off_in, int fd_out, void *off_out, size_t length,
                              unsigned int flags)
    unsigned int SPLICE_F_MOVE
    unsigned int SPLICE_F_MORE

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT

IMPLEMENTATION = "cython"

#: 1 MiB, measured with bench_stream_core.py on 2 cores (pipe in -> /dev/null + sha256, GB/s):
#: 64 KiB 1.55, 256 KiB 1.62, 1 MiB 1.63, 4 MiB 1.60. With 1 MiB pipes a round moves a whole pipe;
#: below 256 KiB the per-round GIL hand-off and syscalls start to show.
DEFAULT_BUFSIZE = 1 << 20

# round outcomes (a positive value is the number of bytes the round consumed from src)
cdef enum:
    R_EOF = 0
    R_AGAIN = -1     # nothing consumed: choose the mode again (a sink was dropped, fd not ready...)
    R_STOP = -2      # policy "fail" (or nobody left to serve): stop now
    R_SRCERR = -3    # reading src failed: errno in self.src_errno


cdef inline void wait_fd(int fd, short events) noexcept nogil:
    """Block until fd is ready (only reached with O_NONBLOCK fds)."""
    cdef pollfd p
    p.fd = fd
    p.events = events
    p.revents = 0
    while poll(&p, 1, -1) < 0 and errno == EINTR:
        pass


cdef class Counter:
    """Progress counter: the pump adds to it, any thread calls snapshot(); no locks on the hot path."""

    cdef long long _n          # written only by the pump's thread; aligned 64-bit stores are atomic
    cdef public object total
    cdef public bint done
    cdef object _start, _end, _meter

    def __init__(self, total=None):
        self.total = total
        self._n = 0
        self.done = False
        self._start = None
        self._end = None
        self._meter = RateMeter()

    @property
    def bytes(self):
        """Bytes counted so far."""
        return self._n

    def add(self, long long n):
        """Count n more bytes (single writer: the pump's thread)."""
        self._n += n

    def start(self):
        """Start the clock (the pump calls this; idempotent)."""
        if self._start is None:
            self._start = time.monotonic()

    def finish(self):
        """Stop the clock and mark the stream done."""
        self.start()
        self._end = time.monotonic()
        self.done = True

    def snapshot(self):
        """Sample bytes, rates, ETA and percent now."""
        return self._meter.snapshot(self._n, self.total, self._start, self._end, self.done)

    def __repr__(self):
        return f"Counter(bytes={self._n}, total={self.total}, done={self.done})"


cdef class _Pump:
    """One pump run: C arrays of sink state and the nogil rounds."""

    cdef int src, nsinks, nhash, splice_ok, tee_ok, src_pipe, stopped, src_errno, close_sinks
    cdef int priv_r, priv_w
    cdef size_t bufsize, priv_level
    cdef long long total
    cdef long long *ctr
    cdef char *buf
    cdef int *fds
    cdef int *live
    cdef int *ispipe
    cdef int *drop
    cdef int *err
    cdef size_t *kept
    cdef object hashes, view, bufobj, result, counter
    cdef public str mode

    def __cinit__(self):
        self.fds = self.live = self.ispipe = self.drop = self.err = NULL
        self.kept = NULL
        self.priv_r = self.priv_w = -1

    def __dealloc__(self):
        free(self.fds); free(self.live); free(self.ispipe); free(self.drop); free(self.err)
        free(self.kept)
        if self.priv_r >= 0:
            close(self.priv_r)
            close(self.priv_w)

    def setup(self, int src, list fds, list drop, list hashes, counter, size_t bufsize,
              bint close_sinks, object result, bint kernel):
        """Fill the C arrays; classify src and sinks."""
        cdef int i, n = len(fds)
        self.src, self.nsinks, self.bufsize, self.close_sinks = src, n, bufsize, close_sinks
        self.hashes = [h for _, h in hashes]
        self.nhash = len(hashes)
        self.result = result
        self.splice_ok = self.tee_ok = kernel
        self.bufobj = bytearray(bufsize)
        self.view = memoryview(self.bufobj)
        self.buf = self.bufobj
        self.counter = counter
        self.ctr = &(<Counter>counter)._n if isinstance(counter, Counter) else NULL
        self.fds = <int *>malloc(sizeof(int) * (n + 1))
        self.live = <int *>malloc(sizeof(int) * (n + 1))
        self.ispipe = <int *>malloc(sizeof(int) * (n + 1))
        self.drop = <int *>malloc(sizeof(int) * (n + 1))
        self.err = <int *>malloc(sizeof(int) * (n + 1))
        self.kept = <size_t *>malloc(sizeof(size_t) * (n + 1))
        if not (self.fds and self.live and self.ispipe and self.drop and self.err and self.kept):
            raise MemoryError()
        self.src_pipe = is_pipe(src)  # raises OSError for a bad src, as it should
        for i in range(n):
            self.fds[i] = fds[i]
            self.live[i] = 1
            self.drop[i] = drop[i]
            self.err[i] = 0
            self.kept[i] = 0
            try:
                self.ispipe[i] = is_pipe(fds[i])
            except OSError as exc:
                self.ispipe[i] = 0
                self.sink_error(i, exc.errno or EIO)

    # -- sink bookkeeping (nogil; every call site holds a C-level view of the state) --------------

    cdef int sink_error(self, int i, int e) noexcept nogil:
        """Apply sink i's policy: drop it (R_AGAIN) or stop the pump (R_STOP)."""
        cdef int j, anylive = 0
        self.err[i] = e
        self.live[i] = 0
        if not self.drop[i]:
            self.stopped = 1
            return R_STOP
        self.close_one(i)
        for j in range(self.nsinks):
            anylive |= self.live[j]
        if not anylive and self.nhash == 0:
            self.stopped = 1  # like tee -p: nobody left to serve
            return R_STOP
        return R_AGAIN

    cdef void close_one(self, int i) noexcept nogil:
        if self.close_sinks and self.fds[i] >= 0:
            close(self.fds[i])
            self.fds[i] = -1

    cdef int write_all(self, int i, const char *p, size_t n) noexcept nogil:
        """Write p[:n] to sink i; 0 when done, else the policy's verdict."""
        cdef ssize_t r
        while n > 0:
            r = write(self.fds[i], p, n)
            if r < 0:
                if errno == EINTR:
                    continue
                if errno == EAGAIN:
                    wait_fd(self.fds[i], POLLOUT)
                    continue
                return self.sink_error(i, errno)
            p += r
            n -= <size_t>r
        return 0

    cdef ssize_t read_some(self, int fd, size_t n) noexcept nogil:
        """read(2) into the buffer with EINTR/EAGAIN handled; -errno on error."""
        cdef ssize_t r
        while True:
            r = read(fd, self.buf, n)
            if r >= 0:
                return r
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                wait_fd(fd, POLLIN)
                continue
            return -errno

    cdef ssize_t read_exact(self, int fd, size_t n) noexcept nogil:
        """Read exactly n bytes that are known to sit in pipe fd."""
        cdef ssize_t r
        cdef size_t got = 0
        while got < n:
            r = read(fd, self.buf + got, n - got)
            if r > 0:
                got += <size_t>r
            elif r == 0:
                return -EIO  # cannot happen: tee said the bytes were there
            elif errno != EINTR and errno != EAGAIN:
                return -errno
        return <ssize_t>got

    cdef int feed_hashes(self, size_t n) except -1:
        """Hash buf[:n] with every requested algorithm (needs the GIL)."""
        chunk = self.view[:n]
        for h in self.hashes:
            h.update(chunk)
        return 0

    cdef inline void account(self, size_t n) noexcept nogil:
        self.total += n
        if self.ctr != NULL:
            self.ctr[0] += n

    # -- rounds ------------------------------------------------------------------------------------

    cdef ssize_t splice_round(self, int i) noexcept nogil:
        """src -> sink i entirely in the kernel."""
        cdef ssize_t r = c_splice(self.src, NULL, self.fds[i], NULL, self.bufsize,
                                  SPLICE_F_MOVE | SPLICE_F_MORE)
        if r >= 0:
            self.account(r)
            return r
        if errno == EINTR:
            return R_AGAIN
        if errno == EAGAIN:
            wait_fd(self.src, POLLIN)
            wait_fd(self.fds[i], POLLOUT)
            return R_AGAIN
        if errno == EINVAL and self.splice_ok:
            self.splice_ok = 0  # these fds can't splice (e.g. a char device): copy instead
            return R_AGAIN
        return self.sink_error(i, errno)

    cdef ssize_t copy_round(self) except -9:
        """Read once, hash, write to every live sink."""
        cdef ssize_t n
        cdef int i
        with nogil:
            n = self.read_some(self.src, self.bufsize)
        if n < 0:
            self.src_errno = <int>-n
            return R_SRCERR
        if n == 0:
            return R_EOF
        if self.nhash:
            self.feed_hashes(n)
        with nogil:
            for i in range(self.nsinks):
                if self.live[i] and self.write_all(i, self.buf, n) == R_STOP and not self.drop[i]:
                    return R_STOP
            self.account(n)
        return n

    cdef ssize_t fill_priv(self) noexcept nogil:
        """Splice the next piece of a non-pipe src into the private pipe; R_AGAIN if it can't."""
        cdef ssize_t r
        while True:
            r = c_splice(self.src, NULL, self.priv_w, NULL, self.bufsize, SPLICE_F_MOVE)
            if r >= 0:
                self.priv_level = r
                return r
            if errno == EINTR:
                continue
            if errno == EAGAIN:
                wait_fd(self.src, POLLIN)
                continue
            if errno == EINVAL:
                self.tee_ok = 0  # src can't splice into a pipe: use the read/write loop
                return R_AGAIN
            self.src_errno = errno
            return R_SRCERR

    cdef ssize_t tee_one(self, int srcp, int i, size_t want) noexcept nogil:
        """tee(srcp -> sink i); bytes duplicated, 0 at EOF, or -errno."""
        cdef ssize_t r
        while True:
            r = c_tee(srcp, self.fds[i], want, 0)
            if r >= 0:
                return r
            if errno == EINTR:
                continue
            if errno == EAGAIN:  # O_NONBLOCK: either side may be the one not ready
                wait_fd(srcp, POLLIN)
                wait_fd(self.fds[i], POLLOUT)
                continue
            return -errno

    cdef ssize_t tee_round(self) except -9:
        """Duplicate one pipe-full into every pipe sink, then consume it once (splice or read)."""
        cdef int i, last = -1, nother = 0, partial = 0, srcp, e
        cdef ssize_t r, n = -1
        cdef size_t left
        cdef bint need_buf, consumed = False
        with nogil:
            if self.src_pipe:
                srcp = self.src
            else:
                srcp = self.priv_r
                if self.priv_level == 0:
                    r = self.fill_priv()
                    if r <= 0:
                        return r
            for i in range(self.nsinks):
                self.kept[i] = 0
                if self.live[i] and not self.ispipe[i]:
                    nother += 1
                    last = i
            need_buf = self.nhash > 0 or nother > 1 or not self.splice_ok
            if not need_buf and last < 0:
                for i in range(self.nsinks):
                    if self.live[i]:
                        last = i
            elif need_buf:
                last = -1
            # 1. tee into every pipe sink except the one that will get the splice
            for i in range(self.nsinks):
                if not self.live[i] or not self.ispipe[i] or i == last:
                    continue
                r = self.tee_one(srcp, i, <size_t>n if n > 0 else self.bufsize)
                if r < 0:
                    if self.sink_error(i, <int>-r) == R_STOP:
                        return R_STOP
                    continue
                if r == 0:
                    return R_EOF  # only the first tee can see an empty, writer-less pipe
                if n < 0:
                    n = r
                self.kept[i] = <size_t>r
                if r < n:
                    partial = 1
            # 2. consume the round by splicing into the last sink, when nobody needs the bytes
            if last >= 0 and self.live[last] and not partial:
                left = <size_t>n if n > 0 else self.bufsize
                while left > 0:
                    r = c_splice(srcp, NULL, self.fds[last], NULL, left, SPLICE_F_MOVE | SPLICE_F_MORE)
                    if r > 0:
                        consumed = True
                        self.account(r)
                        if self.priv_level:
                            self.priv_level -= <size_t>r
                        if n < 0:
                            return r  # no tee ran: whatever the splice took is the round
                        left -= <size_t>r
                        continue
                    if r == 0:
                        return R_EOF if n < 0 else n
                    e = errno
                    if e == EINTR:
                        continue
                    if e == EAGAIN:
                        wait_fd(srcp, POLLIN)
                        wait_fd(self.fds[last], POLLOUT)
                        continue
                    if e == EINVAL and not consumed and self.splice_ok:
                        self.splice_ok = 0  # e.g. a sink that can't take splice: buffer it
                        break
                    if self.sink_error(last, e) == R_STOP:
                        return R_STOP
                    break  # dropped: read the rest below so src stays in step
                if consumed and left == 0:
                    return n
                if consumed:
                    n = <ssize_t>left  # the part the dropped sink didn't take still has to go
        # 3. read the round into the buffer once: hash it, finish partial and non-pipe sinks
        with nogil:
            if n < 0:
                n = self.read_some(srcp, self.bufsize)
                if n == 0:
                    return R_EOF
            else:
                n = self.read_exact(srcp, <size_t>n)
            if n < 0:
                self.src_errno = <int>-n
                return R_SRCERR
            if self.priv_level:
                self.priv_level -= <size_t>n
        if self.nhash:
            self.feed_hashes(n)
        with nogil:
            for i in range(self.nsinks):
                if self.live[i] and self.kept[i] < <size_t>n:
                    r = self.write_all(i, self.buf + self.kept[i], n - self.kept[i])
                    if r == R_STOP and not self.drop[i]:
                        return R_STOP
            self.account(n)
        return n

    cdef int live_count(self, int *first) noexcept nogil:
        cdef int i, c = 0
        for i in range(self.nsinks):
            if self.live[i]:
                if c == 0:
                    first[0] = i
                c += 1
        return c

    def run(self):
        """Run rounds until EOF, a stop, or a src error."""
        cdef ssize_t r
        cdef int nlive, first = -1, npipe, i
        cdef int fds2[2]
        while not self.stopped:
            nlive = self.live_count(&first)
            npipe = 0
            for i in range(self.nsinks):
                npipe += self.live[i] and self.ispipe[i]
            if (self.src_pipe and self.tee_ok) or self.priv_level:
                self.mode = "tee"
                r = self.tee_round()
            elif (self.splice_ok and self.nhash == 0 and nlive == 1
                  and self.ispipe[first]):
                self.mode = "splice"
                with nogil:
                    r = self.splice_round(first)
            elif self.tee_ok and npipe > 0 and (self.nhash or nlive > 1):
                if self.priv_r < 0:
                    if pipe(fds2) < 0:
                        self.tee_ok = 0
                        continue
                    self.priv_r, self.priv_w = fds2[0], fds2[1]
                    # the private pipe holds one round: sized so a round is bufsize, not 64 KiB
                    grow_pipe(self.priv_r, max(self.bufsize, DEFAULT_PIPE_SIZE))
                    self.bufsize = min(self.bufsize, os_pipe_size(self.priv_r))
                self.mode = "tee"
                r = self.tee_round()
            else:
                self.mode = "copy"
                r = self.copy_round()
            if r == R_EOF or r == R_STOP:
                break
            if r == R_SRCERR:
                raise OSError(self.src_errno, os.strerror(self.src_errno))
        res = self.result
        res.bytes = self.total
        res.mode = self.mode or "copy"
        for i in range(self.nsinks):
            if self.err[i]:
                res.sink_errors[i] = error_name(self.err[i])
                if self.drop[i]:
                    res.dropped.append(i)
                elif res.failed is None:
                    res.failed = i

    def close_all(self):
        """Close every sink still open (when we own them)."""
        cdef int i
        for i in range(self.nsinks):
            self.close_one(i)


def os_pipe_size(int fd):
    """Capacity of pipe fd in bytes."""
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)


def pump(src, sinks, *, checksums=(), counter=None, bufsize=DEFAULT_BUFSIZE, policy="fail",
         close_sinks=True, pipe_size=DEFAULT_PIPE_SIZE, kernel=True):
    """Copy fd src to every fd in sinks until EOF, hashing and counting the same bytes."""
    fds, drop, hashes = check_args(sinks, checksums, policy, bufsize)
    t0 = time.monotonic()
    res = PumpResult()
    if counter is not None:
        counter.start()
    cdef _Pump p = _Pump()
    try:
        if pipe_size:
            for fd in [src, *fds]:
                try:
                    if is_pipe(fd):
                        grow_pipe(fd, pipe_size)
                except OSError:
                    pass  # a bad sink fd is reported by setup()
        p.setup(src, fds, drop, hashes, counter, bufsize, close_sinks, res, kernel)
        p.run()
        if p.ctr == NULL and counter is not None:
            counter.add(p.total)  # a twin Counter: no C field to bump, count once at the end
    finally:
        p.close_all()
        if counter is not None:
            counter.finish()
    res.digests = {name: h.hexdigest() for name, h in hashes}
    res.duration = time.monotonic() - t0
    return res

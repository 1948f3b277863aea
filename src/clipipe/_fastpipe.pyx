# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Stream core, native: copy one fd to many with tee(2)/splice(2), checksums and a progress counter.

The whole copy loop runs without the GIL. SHA-256/SHA-1/MD5/BLAKE2b go straight to OpenSSL's EVP
functions (the libcrypto that hashlib already loaded, found with dlopen: no build dependency), so a
busy Python thread elsewhere can't stall the pump; only xxhash takes the GIL, once per round. A
round is one of:

- splice: one sink, no checksum, src not a pipe but the sink is: splice(src -> sink);
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
from libc.stdlib cimport malloc, calloc, free
from posix.unistd cimport read, write, close, pipe

from clipipe._fastpipe_py import (  # shared with the twin so the two can't drift
    ALGORITHMS, DEFAULT_PIPE_SIZE, PumpResult, RateMeter, Snapshot, check_args, error_name,
    grow_pipe, hasher, is_pipe,
)

cdef extern from "<fcntl.h>" nogil:
    # pyconfig.h defines _GNU_SOURCE, which exposes tee/splice/F_SETPIPE_SZ
    ssize_t c_tee "tee"(int fd_in, int fd_out, size_t length, unsigned int flags)
    ssize_t c_splice "splice"(int fd_in, void *off_in, int fd_out, void *off_out, size_t length,
                              unsigned int flags)
    int fcntl(int fd, int cmd, ...)
    unsigned int SPLICE_F_MOVE
    unsigned int SPLICE_F_MORE
    int F_SETPIPE_SZ
    int F_GETPIPE_SZ

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    short POLLIN
    short POLLOUT

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flag)
    void *dlsym(void *handle, const char *symbol)
    int RTLD_NOW

IMPLEMENTATION = "cython"

#: 1 MiB. Pump CPU per GiB, `cat 1G | pump sha256 -> pipe`, best of 3 on a loaded 2-core box:
#: 64 KiB 1119 ms, 256 KiB 1054, 1 MiB 1035, 4 MiB 976 (the hash is ~900 of it). Wall-clock
#: differences were inside the noise; 1 MiB is one full (grown) pipe per round, so bigger buffers
#: only help file sources, at 4x the memory per pump.
DEFAULT_BUFSIZE = 1 << 20

# round outcomes (a positive value is the number of bytes the round consumed from src)
cdef enum:
    R_EOF = 0
    R_AGAIN = -1     # nothing consumed: choose the mode again (a sink was dropped, fd not ready...)
    R_STOP = -2      # policy "fail" (or nobody left to serve): stop now
    R_SRCERR = -3    # reading src failed: errno in self.src_errno
    R_PYERR = -4     # a Python hash object raised: re-raised after the loop

cdef enum:
    M_COPY = 0
    M_SPLICE = 1
    M_TEE = 2

_MODES = {M_COPY: "copy", M_SPLICE: "splice", M_TEE: "tee"}


# -- OpenSSL EVP, resolved at import from the libcrypto hashlib loaded -----------------------------

ctypedef void *(*evp_new_t)() noexcept nogil
ctypedef void (*evp_free_t)(void *) noexcept nogil
ctypedef const void *(*evp_byname_t)(const char *) noexcept nogil
ctypedef int (*evp_init_t)(void *, const void *, void *) noexcept nogil
ctypedef int (*evp_update_t)(void *, const void *, size_t) noexcept nogil
ctypedef int (*evp_final_t)(void *, unsigned char *, unsigned int *) noexcept nogil

cdef evp_new_t evp_new = NULL
cdef evp_free_t evp_free = NULL
cdef evp_byname_t evp_byname = NULL
cdef evp_init_t evp_init = NULL
cdef evp_update_t evp_update = NULL
cdef evp_final_t evp_final = NULL

#: hashlib name -> OpenSSL digest name (BLAKE2b512 is what hashlib.blake2b() computes by default)
_EVP_NAMES = {"sha256": b"SHA256", "sha1": b"SHA1", "md5": b"MD5", "blake2b": b"BLAKE2b512"}


cdef bint _load_evp():
    """Find the EVP digest functions; False means: use hashlib objects (with the GIL)."""
    global evp_new, evp_free, evp_byname, evp_init, evp_update, evp_final
    import hashlib  # noqa: F401 - makes sure libcrypto is loaded
    cdef void *lib = NULL
    for soname in (b"libcrypto.so.3", b"libcrypto.so.1.1", b"libcrypto.so"):
        lib = dlopen(soname, RTLD_NOW)
        if lib != NULL:
            break
    if lib == NULL:
        return False
    evp_new = <evp_new_t>dlsym(lib, b"EVP_MD_CTX_new")
    evp_free = <evp_free_t>dlsym(lib, b"EVP_MD_CTX_free")
    evp_byname = <evp_byname_t>dlsym(lib, b"EVP_get_digestbyname")
    evp_init = <evp_init_t>dlsym(lib, b"EVP_DigestInit_ex")
    evp_update = <evp_update_t>dlsym(lib, b"EVP_DigestUpdate")
    evp_final = <evp_final_t>dlsym(lib, b"EVP_DigestFinal_ex")
    return (evp_new != NULL and evp_free != NULL and evp_byname != NULL and evp_init != NULL
            and evp_update != NULL and evp_final != NULL)


HAVE_EVP = _load_evp()


cdef void *evp_start(str name):
    """A fresh EVP context for a hashlib algorithm name, or NULL (then hashlib is used)."""
    if not HAVE_EVP or name not in _EVP_NAMES:
        return NULL
    cdef const void *md = evp_byname(_EVP_NAMES[name])
    if md == NULL:
        return NULL
    cdef void *ctx = evp_new()
    if ctx != NULL and evp_init(ctx, md, NULL) != 1:
        evp_free(ctx)
        return NULL
    return ctx


cdef str evp_hexdigest(void *ctx):
    cdef unsigned char out[64]  # EVP_MAX_MD_SIZE
    cdef unsigned int n = 0
    if evp_final(ctx, out, &n) != 1:
        raise OSError("OpenSSL EVP_DigestFinal_ex failed")
    return bytes(out[:n]).hex()


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

    cdef int src, nsinks, nevp, npyhash, splice_ok, tee_ok, src_pipe, stopped, src_errno
    cdef int close_sinks, priv_r, priv_w, mode
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
    cdef void **evp
    cdef list names, evp_names, pyhashes
    cdef object view, bufobj, pyexc

    def __cinit__(self):
        self.priv_r = self.priv_w = -1

    def __dealloc__(self):
        cdef int i
        free(self.fds); free(self.live); free(self.ispipe); free(self.drop); free(self.err)
        free(self.kept)
        if self.evp != NULL:
            for i in range(self.nevp):
                evp_free(self.evp[i])
            free(self.evp)
        if self.priv_r >= 0:
            close(self.priv_r)
            close(self.priv_w)

    def setup(self, int src, list fds, list drop, list hashes, counter, size_t bufsize,
              bint close_sinks, bint kernel):
        """Fill the C arrays; classify src and sinks; open the digests."""
        cdef int i, n = len(fds)
        cdef void *ctx
        self.src, self.bufsize, self.close_sinks = src, bufsize, close_sinks
        self.splice_ok = self.tee_ok = kernel
        self.bufobj = bytearray(bufsize)
        self.view = memoryview(self.bufobj)
        self.buf = self.bufobj
        self.ctr = &(<Counter>counter)._n if isinstance(counter, Counter) else NULL
        self.evp = <void **>calloc(len(hashes) + 1, sizeof(void *))
        self.fds = <int *>calloc(n + 1, sizeof(int))
        self.live = <int *>calloc(n + 1, sizeof(int))
        self.ispipe = <int *>calloc(n + 1, sizeof(int))
        self.drop = <int *>calloc(n + 1, sizeof(int))
        self.err = <int *>calloc(n + 1, sizeof(int))
        self.kept = <size_t *>calloc(n + 1, sizeof(size_t))
        if not (self.evp and self.fds and self.live and self.ispipe and self.drop and self.err
                and self.kept):
            raise MemoryError()
        self.names, self.evp_names, self.pyhashes = [], [], []
        for name, h in hashes:
            ctx = evp_start(name)
            if ctx != NULL:
                self.evp[self.nevp] = ctx
                self.nevp += 1
                self.evp_names.append(name)
            else:
                self.pyhashes.append((name, h))
        self.npyhash = len(self.pyhashes)
        for i in range(n):
            self.fds[i] = fds[i]
            self.live[i] = 1
            self.drop[i] = drop[i]
        self.nsinks = n  # only now may close_all() look at fds
        self.src_pipe = is_pipe(src)  # raises OSError for a bad src, as it should
        for i in range(n):  # after all are live, so a bad first sink doesn't look like the last
            try:
                self.ispipe[i] = is_pipe(fds[i])
            except OSError as exc:
                self.sink_error(i, exc.errno or EIO)

    def digests(self):
        """Hex digests of everything hashed, keyed by algorithm."""
        cdef int i
        out = {name: evp_hexdigest(self.evp[i]) for i, name in enumerate(self.evp_names)}
        out.update({name: h.hexdigest() for name, h in self.pyhashes})
        return out

    # -- sink bookkeeping ------------------------------------------------------------------------

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
        if not anylive and self.nevp + self.npyhash == 0:
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

    cdef int write_rest(self, size_t n) noexcept nogil:
        """Finish the round from the buffer for every sink that didn't get all n bytes by tee."""
        cdef int i
        for i in range(self.nsinks):
            if self.live[i] and self.kept[i] < n:
                if self.write_all(i, self.buf + self.kept[i], n - self.kept[i]) == R_STOP \
                        and not self.drop[i]:
                    return R_STOP
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

    cdef int hash_buf(self, size_t n) noexcept nogil:
        """Hash buf[:n]: OpenSSL without the GIL, xxhash (if asked) with it."""
        cdef int i
        for i in range(self.nevp):
            evp_update(self.evp[i], self.buf, n)
        if self.npyhash:
            return self.hash_py(n)
        return 0

    cdef int hash_py(self, size_t n) noexcept with gil:
        try:
            chunk = self.view[:n]
            for _, h in self.pyhashes:
                h.update(chunk)
        except BaseException as exc:  # noqa: B036 - re-raised by run()
            self.pyexc = exc
            return R_PYERR
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

    cdef ssize_t copy_round(self) noexcept nogil:
        """Read once, hash, write to every live sink."""
        cdef ssize_t n = self.read_some(self.src, self.bufsize)
        cdef int i
        if n < 0:
            self.src_errno = <int>-n
            return R_SRCERR
        if n == 0:
            return R_EOF
        if self.hash_buf(n) == R_PYERR:
            return R_PYERR
        for i in range(self.nsinks):
            self.kept[i] = 0
        if self.write_rest(n) == R_STOP:
            return R_STOP
        self.account(n)
        return n

    cdef ssize_t fill_priv(self) noexcept nogil:
        """Splice the next piece of a non-pipe src into the private pipe."""
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

    cdef ssize_t tee_round(self) noexcept nogil:
        """Duplicate one pipe-full into every pipe sink, then consume it once (splice or read)."""
        cdef int i, last = -1, nother = 0, partial = 0, srcp, e
        cdef ssize_t r, n = -1
        cdef size_t left
        cdef bint need_buf, consumed = False
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
        need_buf = self.nevp + self.npyhash > 0 or nother > 1 or not self.splice_ok
        if need_buf:
            last = -1
        elif last < 0:
            for i in range(self.nsinks):
                if self.live[i]:
                    last = i
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
        # 2. consume the round by splicing it into the last sink, when nobody needs the bytes
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
                # the dropped sink's unspliced part is read and discarded; every teed sink
                # already has it (kept >= left), so write_rest() writes nothing
                n = <ssize_t>left
        # 3. read the round into the buffer once: hash it, finish partial and non-pipe sinks
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
        if self.hash_buf(n) == R_PYERR:
            return R_PYERR
        if self.write_rest(n) == R_STOP:
            return R_STOP
        self.account(n)
        return n

    cdef int open_priv(self) noexcept nogil:
        """The private pipe a non-pipe src is spliced into; sized to hold one round."""
        cdef int fds2[2]
        cdef int size
        if pipe(fds2) < 0:
            return -1
        self.priv_r, self.priv_w = fds2[0], fds2[1]
        fcntl(self.priv_w, F_SETPIPE_SZ, <int>max(self.bufsize, <size_t>DEFAULT_PIPE_SIZE_C))
        size = fcntl(self.priv_w, F_GETPIPE_SZ)
        if size > 0 and <size_t>size < self.bufsize:
            self.bufsize = size  # never splice more than the pipe holds: that would block
        return 0

    cdef ssize_t loop(self) noexcept nogil:
        """Run rounds until EOF, a stop, or an error; returns the last round's outcome."""
        cdef ssize_t r = R_EOF
        cdef int i, nlive, npipe, first
        while not self.stopped:
            nlive = npipe = 0
            first = -1
            for i in range(self.nsinks):
                if self.live[i]:
                    nlive += 1
                    npipe += self.ispipe[i]
                    if first < 0:
                        first = i
            if (self.src_pipe and self.tee_ok) or self.priv_level:
                self.mode = M_TEE
                r = self.tee_round()
            elif self.splice_ok and self.nevp + self.npyhash == 0 and nlive == 1 \
                    and self.ispipe[first]:
                self.mode = M_SPLICE
                r = self.splice_round(first)
            elif self.tee_ok and npipe > 0 and (self.nevp + self.npyhash > 0 or nlive > 1):
                if self.priv_r < 0 and self.open_priv() < 0:
                    self.tee_ok = 0
                    continue
                self.mode = M_TEE
                r = self.tee_round()
            else:
                self.mode = M_COPY
                r = self.copy_round()
            if r == R_EOF or r == R_STOP or r == R_SRCERR or r == R_PYERR:
                break
        return r

    def run(self, result):
        """Copy with the GIL released; fill result."""
        cdef ssize_t r
        cdef int i
        with nogil:
            r = self.loop()
        result.bytes = self.total
        result.mode = _MODES[self.mode]
        for i in range(self.nsinks):
            if self.err[i]:
                result.sink_errors[i] = error_name(self.err[i])
                if self.drop[i]:
                    result.dropped.append(i)
                elif result.failed is None:
                    result.failed = i
        if r == R_SRCERR:
            raise OSError(self.src_errno, os.strerror(self.src_errno))
        if r == R_PYERR:
            raise self.pyexc

    def close_all(self):
        """Close every sink still open (when we own them)."""
        cdef int i
        for i in range(self.nsinks):
            self.close_one(i)


cdef size_t DEFAULT_PIPE_SIZE_C = DEFAULT_PIPE_SIZE


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
        p.setup(src, fds, drop, hashes, counter, bufsize, close_sinks, kernel)
        p.run(res)
        if p.ctr == NULL and counter is not None:
            counter.add(p.total)  # a twin Counter: no C field to bump, count once at the end
        res.digests = p.digests()
    finally:
        p.close_all()
        if counter is not None:
            counter.finish()
    res.duration = time.monotonic() - t0
    return res

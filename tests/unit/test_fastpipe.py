"""Stream core: both implementations copy, hash, count, throttle and apply sink policies alike."""
from __future__ import annotations

import hashlib
import importlib
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from clipipe import _fastpipe_py

MiB = 1 << 20


def _load(name: str):
    """Import an implementation; the Cython one must import unless a pure build was asked for."""
    if name == "python":
        return _fastpipe_py
    try:
        return importlib.import_module("clipipe._fastpipe")
    except ImportError as exc:
        if os.environ.get("CLIPIPE_PURE_BUILD") == "1":
            pytest.skip("pure build (CLIPIPE_PURE_BUILD=1): no extension")
        pytest.fail(f"clipipe._fastpipe is not built ({exc}); run `python setup.py build_ext --inplace`")


@pytest.fixture(params=["cython", "python"])
def fp(request):
    """The implementation under test."""
    return _load(request.param)


# -- helpers ----------------------------------------------------------------------------------------

class Reader(threading.Thread):
    """Drain fd into memory (optionally slowly / only a prefix), then close it."""

    def __init__(self, fd: int, *, chunk: int = MiB, delay: float = 0.0, limit: int | None = None,
                 keep: bool = True) -> None:
        super().__init__(daemon=True)
        self.fd, self.chunk, self.delay, self.limit, self.keep = fd, chunk, delay, limit, keep
        self.parts: list[bytes] = []
        self.count = 0
        self.start()

    def run(self) -> None:
        try:
            while self.limit is None or self.count < self.limit:
                b = os.read(self.fd, self.chunk)
                if not b:
                    break
                self.count += len(b)
                if self.keep:
                    self.parts.append(b)
                if self.delay:
                    time.sleep(self.delay)
        finally:
            os.close(self.fd)

    @property
    def data(self) -> bytes:
        self.join(60)
        return b"".join(self.parts)


def writer(data: bytes, *, nonblock: bool = False) -> int:
    """A pipe whose far end a thread fills with data, then closes; returns the read end."""
    r, w = os.pipe()
    if nonblock:
        os.set_blocking(r, False)

    def feed() -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(w, view):]
        except BrokenPipeError:
            pass
        finally:
            os.close(w)

    threading.Thread(target=feed, daemon=True).start()
    return r


def sink_pipes(n: int, **kw) -> tuple[list[int], list[Reader]]:
    """n pipes with a Reader on each; returns (write ends, readers)."""
    fds, readers = [], []
    for _ in range(n):
        r, w = os.pipe()
        fds.append(w)
        readers.append(Reader(r, **kw))
    return fds, readers


def payload(size: int) -> bytes:
    """Deterministic incompressible-enough bytes."""
    block = hashlib.sha256(str(size).encode()).digest() * 1024  # 32 KiB
    return (block * (size // len(block) + 1))[:size]


def sha256sum_binary(data: bytes) -> str:
    """The digest coreutils' sha256sum prints for data."""
    out = subprocess.run(["sha256sum"], input=data, capture_output=True, check=True).stdout
    return out.split()[0].decode()


# -- selection ----------------------------------------------------------------------------------

def test_selector_uses_cython_when_built() -> None:
    """A broken build must not hide behind the twin."""
    from clipipe import fastpipe

    if os.environ.get("CLIPIPE_PURE") == "1":
        assert fastpipe.IMPLEMENTATION == "python"
    elif os.environ.get("CLIPIPE_PURE_BUILD") == "1":
        pytest.skip("pure build requested")
    else:
        assert fastpipe.IMPLEMENTATION == "cython"
    assert {"sha256", "sha1", "md5", "blake2b"} <= set(fastpipe.ALGORITHMS)


def test_both_implementations_share_types(fp) -> None:
    assert fp.IMPLEMENTATION in ("cython", "python")
    assert fp.DEFAULT_BUFSIZE >= 64 * 1024
    c = fp.Counter(10)
    assert c.total == 10 and c.bytes == 0
    c.total = 20
    assert c.snapshot().total == 20


# -- copying ---------------------------------------------------------------------------------------

SIZES = [0, 1, "B-1", "B", "B+1", 3 * MiB + 123]


def _size(spec: int | str, bufsize: int) -> int:
    return spec if isinstance(spec, int) else bufsize + int(spec[1:] or 0)


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("nsinks", [0, 1, 3])
@pytest.mark.parametrize("src_kind", ["pipe", "file"])
@pytest.mark.parametrize("sink_kind", ["pipe", "file"])
def test_copies_and_hashes(fp, tmp_path: Path, size, nsinks, src_kind, sink_kind) -> None:
    size = _size(size, fp.DEFAULT_BUFSIZE)
    data = payload(size)
    if src_kind == "pipe":
        src = writer(data)
    else:
        (tmp_path / "in").write_bytes(data)
        src = os.open(tmp_path / "in", os.O_RDONLY)
    if sink_kind == "pipe":
        fds, readers = sink_pipes(nsinks)
    else:
        fds = [os.open(tmp_path / f"out{i}", os.O_WRONLY | os.O_CREAT) for i in range(nsinks)]
    counter = fp.Counter(size)
    res = fp.pump(src, fds, checksums=["sha256", "md5"], counter=counter)
    os.close(src)
    want = hashlib.sha256(data).hexdigest()
    assert res.bytes == size and res.ok and res.failed is None
    assert res.digests == {"sha256": want, "md5": hashlib.md5(data).hexdigest()}
    outs = [r.data for r in readers] if sink_kind == "pipe" else \
        [(tmp_path / f"out{i}").read_bytes() for i in range(nsinks)]
    assert all(o == data for o in outs)
    assert counter.bytes == size and counter.snapshot().done


@pytest.mark.parametrize("size", [0, 1, 1 << 20, 3 * MiB + 7])
def test_digest_matches_sha256sum_binary(fp, size: int) -> None:
    data = payload(size)
    res = fp.pump(writer(data), [], checksums=["sha256"])
    assert res.digests["sha256"] == sha256sum_binary(data)


@pytest.mark.parametrize("nsinks", [1, 2])
def test_no_checksum_paths(fp, tmp_path: Path, nsinks: int) -> None:
    """Without checksums the kernel paths (splice, tee, private pipe) carry the bytes."""
    data = payload(5 * MiB + 11)
    for src in (writer(data), os.open(_write(tmp_path / "in", data), os.O_RDONLY)):
        fds, readers = sink_pipes(nsinks)
        res = fp.pump(src, fds)
        os.close(src)
        assert res.bytes == len(data)
        assert all(r.data == data for r in readers)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_dev_null_sink_and_small_buffer(fp) -> None:
    data = payload(2 * MiB + 5)
    null = os.open(os.devnull, os.O_WRONLY)
    res = fp.pump(writer(data), [null], checksums=["sha1"], bufsize=4096)
    assert res.bytes == len(data) and res.digests["sha1"] == hashlib.sha1(data).hexdigest()


@pytest.mark.parametrize("algorithm", _fastpipe_py.ALGORITHMS)
def test_each_algorithm(fp, algorithm: str) -> None:
    data = payload(2 * MiB + 3)
    ref = fp.hasher(algorithm) if hasattr(fp, "hasher") else _fastpipe_py.hasher(algorithm)
    ref.update(data)
    if algorithm in hashlib.algorithms_guaranteed:
        assert ref.hexdigest() == hashlib.new(algorithm, data).hexdigest()
    fds, readers = sink_pipes(1)
    res = fp.pump(writer(data), fds, checksums=[algorithm])
    assert res.digests == {algorithm: ref.hexdigest()}
    assert readers[0].data == data


def test_unknown_algorithm_and_policy(fp) -> None:
    with pytest.raises(ValueError):
        fp.pump(0, [], checksums=["crc99"])
    with pytest.raises(ValueError):
        fp.pump(0, [1], policy="ignore")
    with pytest.raises(ValueError):
        fp.pump(0, [1, 2], policy=["drop"])


def test_uneven_readers_small_pipes(fp) -> None:
    """Sinks draining at different speeds (partial tee rounds) still get every byte in order."""
    data = payload(8 * MiB + 99)
    fds, readers = [], []
    for chunk, delay in [(4096, 0.0), (65536, 0.001), (1000, 0.0)]:
        r, w = os.pipe()
        fds.append(w)
        readers.append(Reader(r, chunk=chunk, delay=delay))
    res = fp.pump(writer(data), fds, pipe_size=0)
    assert res.bytes == len(data)
    assert all(r.data == data for r in readers)


def test_nonblocking_fds(fp) -> None:
    data = payload(3 * MiB + 1)
    src = writer(data, nonblock=True)
    fds, readers = sink_pipes(2, chunk=8192, delay=0.0005)
    for fd in fds:
        os.set_blocking(fd, False)
    res = fp.pump(src, fds, checksums=["sha256"])
    assert res.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert all(r.data == data for r in readers)


def test_src_never_closed_sinks_closed_on_request(fp) -> None:
    r, w = os.pipe()
    os.close(w)
    a, b = os.pipe()
    fp.pump(r, [b], close_sinks=False)
    os.fstat(r)
    os.fstat(b)  # still open
    fp.pump(r, [b])
    with pytest.raises(OSError):
        os.fstat(b)
    for fd in (r, a):
        os.close(fd)


def test_bad_src_raises_and_closes_sinks(fp) -> None:
    a, b = os.pipe()
    with pytest.raises(OSError):
        fp.pump(4000, [b])  # 4000: a descriptor number nobody uses
    assert os.read(a, 1) == b""  # b was closed: the reader sees EOF
    os.close(a)


# -- sink failures ------------------------------------------------------------------------------

def _closed_sink() -> int:
    """A pipe whose reader already exited."""
    r, w = os.pipe()
    os.close(r)
    return w


def test_fail_policy_stops_on_first_failure(fp) -> None:
    data = payload(4 * MiB)
    fds, readers = sink_pipes(2, keep=False)
    bad = _closed_sink()
    res = fp.pump(writer(data), [fds[0], bad, fds[1]], checksums=["sha256"], policy="fail")
    assert res.failed == 1 and res.sink_errors == {1: "EPIPE"} and res.dropped == []
    for r in readers:
        r.join(10)
        assert not r.is_alive()  # their pipes were closed: EOF downstream


@pytest.mark.parametrize("early", ["closed", "head"])
def test_drop_policy_keeps_the_others(fp, early: str) -> None:
    data = payload(6 * MiB + 5)
    fds, readers = sink_pipes(2)
    if early == "closed":
        bad = _closed_sink()
    else:  # a reader that takes 100 kB then exits, like `head -c`
        r, bad = os.pipe()
        Reader(r, chunk=4096, limit=100_000, keep=False)
    res = fp.pump(writer(data), [fds[0], bad, fds[1]], checksums=["sha256"], policy="drop")
    assert res.failed is None and res.dropped == [1] and res.sink_errors == {1: "EPIPE"}
    assert res.bytes == len(data) and res.digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert all(r.data == data for r in readers)


def test_per_sink_policy(fp) -> None:
    data = payload(2 * MiB)
    fds, readers = sink_pipes(1, keep=False)
    res = fp.pump(writer(data), [_closed_sink(), fds[0], _closed_sink()],
                  policy=["drop", "drop", "fail"])
    assert res.dropped == [0] and res.failed == 2
    assert res.sink_errors == {0: "EPIPE", 2: "EPIPE"}


def test_bad_fd_sink(fp) -> None:
    data = payload(MiB)
    fds, readers = sink_pipes(1)
    bad = 4000  # a descriptor number nobody uses (a freshly closed one would be reused by os.pipe)
    with pytest.raises(OSError):
        os.fstat(bad)
    res = fp.pump(writer(data), [bad, fds[0]], policy="drop")
    assert res.dropped == [0] and res.sink_errors == {0: "EBADF"}
    assert readers[0].data == data


def test_all_dropped_stops_without_checksums_drains_with(fp) -> None:
    data = payload(4 * MiB)
    src = writer(data)
    res = fp.pump(src, [_closed_sink()], policy="drop")
    assert res.dropped == [0] and res.bytes < len(data)
    os.close(src)
    res = fp.pump(writer(data), [_closed_sink()], policy="drop", checksums=["md5"])
    assert res.bytes == len(data) and res.digests["md5"] == hashlib.md5(data).hexdigest()


# -- counter ----------------------------------------------------------------------------------------

def test_counter_snapshot_values(fp) -> None:
    c = fp.Counter(total=1000)
    s = c.snapshot()
    assert (s.bytes, s.total, s.percent, s.done) == (0, 1000, 0.0, False)
    c.start()
    c.add(250)
    time.sleep(0.1)
    c.add(250)
    s = c.snapshot()
    assert s.bytes == 500 and s.percent == pytest.approx(50.0)
    assert s.elapsed > 0 and s.avg_rate > 0 and s.rate > 0 and s.peak_rate >= s.rate
    assert s.eta == pytest.approx(500 / s.rate)
    c.finish()
    s = c.snapshot()
    assert s.done and s.eta == 0.0 and s.percent == pytest.approx(50.0)


def test_counter_without_total(fp) -> None:
    c = fp.Counter()
    res = fp.pump(writer(payload(MiB)), [], counter=c)
    s = c.snapshot()
    assert s.bytes == MiB == res.bytes and s.percent is None and s.eta is None and s.done


def test_counter_sampled_from_another_thread(fp) -> None:
    """Samples taken while the pump runs rise monotonically and end at the total."""
    data = payload(16 * MiB)
    c = fp.Counter(len(data))
    fds, readers = sink_pipes(1, chunk=65536, delay=0.0005, keep=False)
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(c.snapshot().bytes)
            time.sleep(0.005)

    t = threading.Thread(target=sample)
    t.start()
    fp.pump(writer(data), fds, counter=c)
    stop.set()
    t.join()
    assert seen == sorted(seen) and c.bytes == len(data)
    assert len(set(seen)) > 2  # the sampler ran while bytes moved: the GIL was released


# -- big streams --------------------------------------------------------------------------------

def _rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@pytest.mark.slow
def test_slow_sink_throttles_producer_memory_flat(fp) -> None:
    """2 GiB from `head -c 2G /dev/zero` into a 256 MB/s reader: the pump waits, memory stays flat."""
    size = 2 << 30
    prod = subprocess.Popen(["head", "-c", str(size), "/dev/zero"], stdout=subprocess.PIPE)
    r, w = os.pipe()
    # 256 MB/s: 1 MiB every 4 ms, so 2 GiB takes ~8 s and the reader is clearly the bottleneck
    reader = Reader(r, chunk=MiB, delay=0.004, keep=False)
    counter = fp.Counter(size)
    base = _rss()
    peak_rss, max_ahead = base, 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak_rss, max_ahead
        while not done.is_set():
            peak_rss = max(peak_rss, _rss())
            max_ahead = max(max_ahead, counter.bytes - reader.count)
            time.sleep(0.02)

    t = threading.Thread(target=watch)
    t.start()
    try:
        res = fp.pump(prod.stdout.fileno(), [w], counter=counter)
    finally:
        done.set()
        t.join()
        prod.stdout.close()
        prod.wait()
    reader.join(60)
    assert res.bytes == size == reader.count
    # ahead of the reader by at most the sink pipe + one buffer (+ the reader's own chunk)
    assert max_ahead <= 4 * MiB
    assert peak_rss - base < 64 * MiB


@pytest.mark.slow
def test_one_gib_to_dev_null_sha256(fp, tmp_path: Path) -> None:
    """1 GiB (a 64 MiB random block, 16 times, through `cat`) to /dev/null with a matching sha256."""
    block = os.urandom(64 * MiB)
    path = _write(tmp_path / "block", block)
    prod = subprocess.Popen(["cat"] + [str(path)] * 16, stdout=subprocess.PIPE)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        res = fp.pump(prod.stdout.fileno(), [null], checksums=["sha256"])
    finally:
        prod.stdout.close()
        prod.wait()
    want = hashlib.sha256()
    for _ in range(16):
        want.update(block)
    assert res.bytes == 1 << 30 and res.digests["sha256"] == want.hexdigest()

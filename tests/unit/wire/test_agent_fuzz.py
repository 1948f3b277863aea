"""Fuzzed frames sent to a running agent never crash it: it answers ERROR or ignores, and keeps serving."""
from __future__ import annotations

import os
import select
import struct
import subprocess
import sys
import tempfile
from typing import Any, Iterator

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clipipe.wire import bootstrap, frames

#: Commands the fuzzer may start: harmless wherever the agent runs.
SAFE_COMMANDS = ["true", "exit 3", "cat", "echo hi", "echo err >&2", "sleep 0.01"]


class AgentDriver:
    """A booted agent subprocess driven synchronously frame by frame."""

    def __init__(self, cwd: str) -> None:
        self.errlog = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(bootstrap.boot_argv(sys.executable), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.errlog, cwd=cwd)
        self.buf = b""
        self.next_id = 1_000_000
        self.write(bootstrap.payload({"kill_grace": 0.2}))
        self.hello = self.read_frame()

    def write(self, raw: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(raw)
        self.proc.stdin.flush()

    def read_frame(self, timeout: float = 10.0) -> tuple[int, int, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while True:
            got, self.buf = _split_one(self.buf)
            if got is not None:
                return got
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, "agent went silent"
            chunk = os.read(fd, 1 << 20)
            assert chunk, f"agent exited: {self.stderr()}"
            self.buf += chunk

    def ping(self) -> list[tuple[int, int, Any]]:
        """Send PING, return the frames that arrived before its PONG."""
        self.next_id += 1
        rid = self.next_id
        self.write(frames.encode(0, frames.PING, {"id": rid}))
        seen = []
        while True:
            frame = self.read_frame()
            if frame[:2] == (0, frames.PONG) and frame[2].get("id") == rid:
                return seen
            seen.append(frame)

    def stderr(self) -> str:
        self.errlog.seek(0)
        return self.errlog.read().decode(errors="replace")

    def close(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        return self.proc.wait(10)


def _split_one(buf: bytes) -> tuple[tuple[int, int, Any] | None, bytes]:
    if len(buf) < 4:
        return None, buf
    (size,) = struct.unpack(">I", buf[:4])
    if len(buf) < 4 + size:
        return None, buf
    return frames.decode(buf[4:4 + size]), buf[4 + size:]


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentDriver]:
    """One agent for all examples: it must survive every one of them."""
    d = AgentDriver(str(tmp_path_factory.mktemp("agent-cwd")))
    yield d
    assert d.close() == 0, d.stderr()
    assert "Traceback" not in d.stderr()


small = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(),
                  st.text(max_size=20), st.binary(max_size=64))
values = st.recursive(small, lambda c: st.one_of(st.lists(c, max_size=5),
                                                 st.dictionaries(st.text(max_size=10), c, max_size=5)),
                      max_leaves=20)
field_names = st.sampled_from(["id", "procs", "stdin", "stdout", "stderr", "checksums", "segment",
                               "signal", "name", "command", "env", "cwd", "tee"])
maps = st.dictionaries(field_names, values, max_size=8)
channels = st.one_of(st.integers(-5, 40), st.integers(-(2**63), 2**64 - 1))
kinds = st.one_of(st.integers(0, 20), st.integers(-(2**31), 2**31))


def _tame(kind: int, payload: Any) -> tuple[int, Any]:
    """Keep fuzzing from stopping the agent on purpose or starting arbitrary commands."""
    if kind == frames.SHUTDOWN:
        kind = frames.PING
    if isinstance(payload, dict) and isinstance(payload.get("procs"), list):
        payload["procs"] = [dict(p, command=SAFE_COMMANDS[i % len(SAFE_COMMANDS)])
                            if isinstance(p, dict) and "command" in p else p
                            for i, p in enumerate(payload["procs"])]
    if isinstance(payload, dict) and payload.get("signal") is not None:
        payload["signal"] = 15  # a fuzzed KILL may hit a fuzzed segment, never the agent
    return kind, payload


def _body(channel: int, kind: int, payload: Any) -> bytes | None:
    try:
        return msgpack.packb([channel, kind, payload], use_bin_type=True)
    except (OverflowError, ValueError, TypeError, UnicodeEncodeError):
        return None


def _check_replies(seen: list[tuple[int, int, Any]]) -> None:
    for channel, kind, payload in seen:
        assert kind in frames.KIND_NAMES, (channel, kind)
        if kind == frames.ERROR:
            assert isinstance(payload.get("message"), str) and "Traceback" not in payload.get("traceback", "")


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_garbage_bodies_are_answered_and_skipped(driver: AgentDriver, bodies: list[bytes]) -> None:
    """Random bytes inside a correct length prefix: ERROR (or a valid no-op), then business as usual."""
    driver.write(b"".join(struct.pack(">I", len(b)) + b for b in bodies))
    _check_replies(driver.ping())


@given(st.lists(st.tuples(channels, kinds, st.one_of(values, maps)), min_size=1, max_size=6))
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_well_formed_frames_with_wild_contents(driver: AgentDriver, batch: list[tuple[int, int, Any]]) -> None:
    """Any channel, any kind, any payload: the agent answers or ignores and keeps serving."""
    raw = b""
    for channel, kind, payload in batch:
        kind, payload = _tame(kind, payload)
        body = _body(channel, kind, payload)
        if body is not None:
            raw += struct.pack(">I", len(body)) + body
    driver.write(raw)
    _check_replies(driver.ping())


@given(st.lists(st.tuples(st.integers(1, 12), st.sampled_from([frames.DATA, frames.EOF, frames.WINDOW]),
                          st.one_of(st.binary(max_size=2048), st.integers(-10, 2**40), st.none())),
                max_size=12), st.integers(1, 12), st.integers(1, 12))
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_data_frames_around_real_segments(driver: AgentDriver, batch: list[tuple[int, int, Any]],
                                          stdin: int, stdout: int) -> None:
    """Segments with real channels, then DATA/EOF/WINDOW in any order, sizes and channels."""
    rid = driver.next_id = driver.next_id + 1
    base = rid * 100 % (2**31 - 200)  # fresh channel ids per example
    req = {"id": rid, "procs": [{"name": "c", "command": "cat"}], "stdin": base + stdin,
           "stdout": base + stdout + 20, "stderr": [None]}
    raw = frames.encode(0, frames.RUN_SEGMENT, req)
    for channel, kind, payload in batch:
        body = _body(base + channel, kind, payload)
        if body is not None:
            raw += struct.pack(">I", len(body)) + body
    raw += frames.encode(base + stdin, frames.EOF, None)
    driver.write(raw)
    _check_replies(driver.ping())


def test_data_beyond_the_window_is_an_error_not_a_crash(driver: AgentDriver) -> None:
    """A sender ignoring its credit gets ERROR on that channel; the excess is dropped.

    `sleep` never reads, so the agent can take one pipe buffer (<= PIPE_SIZE) plus one window.
    """
    req = {"id": 77, "procs": [{"name": "s", "command": "sleep 5"}], "stdin": 901, "stdout": None,
           "stderr": [None]}
    driver.write(frames.encode(0, frames.RUN_SEGMENT, req))
    chunk = b"x" * frames.CHUNK
    driver.write(b"".join(frames.encode_data(901, chunk) for _ in range(3 * frames.WINDOW_SIZE // frames.CHUNK + 1)))
    seen = driver.ping()
    errors = [p for _, k, p in seen if k == frames.ERROR]
    assert errors and errors[0]["channel"] == 901 and "credit" in errors[0]["message"]
    driver.write(frames.encode(0, frames.KILL, {"id": 78, "segment": 77, "signal": 9}))
    driver.ping()


def test_oversized_length_prefix_is_fatal_but_clean(tmp_path: Any) -> None:
    """A length over MAX_FRAME can't be resynchronised: ERROR, then the agent exits (status 0)."""
    d = AgentDriver(str(tmp_path))
    d.write(struct.pack(">I", frames.MAX_FRAME + 1))
    channel, kind, payload = d.read_frame()
    assert (channel, kind) == (0, frames.ERROR) and "MAX_FRAME" in payload["message"]
    assert d.proc.wait(10) == 0


small_ints = st.one_of(st.integers(-2, 6), st.none(), st.text(max_size=2))
tee_branches = st.lists(st.fixed_dictionaries({}, optional={
    "procs": st.one_of(st.lists(small_ints, max_size=4), small_ints), "stdout": small_ints,
    "channel": small_ints, "on_exit": st.sampled_from(["fail", "drop", "x", None]),
    "count": st.one_of(st.booleans(), small_ints)}), max_size=4)
tees = st.fixed_dictionaries({}, optional={
    "after": small_ints, "branches": st.one_of(tee_branches, values),
    "checksums": st.one_of(st.lists(st.sampled_from(["sha256", "md5", "nope"]), max_size=2), values),
    "progress": st.one_of(st.booleans(), small_ints)})


@given(tees, st.integers(1, 5))
@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
def test_tee_requests_of_any_shape(driver: AgentDriver, tee: dict[str, Any], nprocs: int) -> None:
    """Near-valid and wild tee maps: a segment that runs to EXIT, or an ERROR; the agent keeps serving."""
    rid = driver.next_id = driver.next_id + 1
    base = rid * 100 % (2**31 - 200)
    for b in tee.get("branches") if isinstance(tee.get("branches"), list) else []:
        for key in ("stdout", "channel") if isinstance(b, dict) else ():
            if type(b.get(key)) is int and b[key] > 0:
                b[key] += base + 50     # fresh channels, never one in use
    req = {"id": rid, "procs": [{"name": f"p{i}", "command": SAFE_COMMANDS[i % 4]} for i in range(nprocs)],
           "stdin": None, "stdout": None, "stderr": [None] * nprocs, "tee": tee}
    driver.write(frames.encode(0, frames.RUN_SEGMENT, req))
    seen = driver.ping()
    _check_replies(seen)
    mine = [(k, p) for _, k, p in seen if isinstance(p, dict) and p.get("id") == rid]
    if any(k == frames.STARTED for k, _ in mine):   # it started: tell every leaving branch we won't read
        for b in tee.get("branches") or []:
            if isinstance(b, dict) and type(b.get("channel")) is int:
                driver.write(frames.encode(b["channel"], frames.EOF, None))
        driver.write(frames.encode(0, frames.KILL, {"id": rid + 1, "segment": rid, "signal": 9}))
        _check_replies(driver.ping())

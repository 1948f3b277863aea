"""Tee segments on the wire: the request and EXIT/PROGRESS shapes both codecs agree on, and their parsing."""
from __future__ import annotations

import msgpack
import pytest

from clipipe.wire import frames
from clipipe.wire.bootstrap import agent_module
from clipipe.wire.tee import RemoteCounter, TeeBranch, TeeResult, TeeSpec

agent = agent_module()

SPEC = TeeSpec(after=1, checksums=["sha256", "md5"], branches=[
    TeeBranch(procs=[2, 3], fd=9, on_exit="drop", count_links=True), TeeBranch(procs=[4]), TeeBranch(fd=11)])

EXIT = {"id": 7, "procs": [{"name": "p", "exit_code": 0, "signal": None, "error": None, "started": 1.5,
                            "ended": 2.5}],
        "stdin_bytes": 0, "stdout_bytes": 0, "stderr_bytes": [0], "digests": {},
        "tee": {"bytes": 2**33 + 5, "digests": {"sha256": "ab" * 32}, "started": 10.0, "ended": 12.5, "failed": 1,
                "branches": [{"status": "dropped", "error": "EPIPE", "bytes": 5, "links": [3]},
                             {"status": "failed", "error": "EPIPE", "bytes": 0, "links": []},
                             {"status": "ok", "error": None, "bytes": 2**33 + 5, "links": []}]}}


def test_request_names_channels_only_where_bytes_cross() -> None:
    """Host chains get a stdout channel (or nil), leaving branches a channel; the rest is the spec."""
    req = SPEC.request([21, None, 23])
    assert req == {"after": 1, "checksums": ["sha256", "md5"], "progress": True, "branches": [
        {"on_exit": "drop", "procs": [2, 3], "stdout": 21, "count": True},
        {"on_exit": "fail", "procs": [4], "stdout": None, "count": False},
        {"on_exit": "fail", "channel": 23}]}
    assert [b.leaves for b in SPEC.branches] == [False, False, True]


@pytest.mark.parametrize("kind, payload", [
    (frames.RUN_SEGMENT, {"id": 3, "procs": [{"name": "a", "command": "tar cf - x"}] * 5, "stdin": None,
                          "stdout": None, "stderr": [None] * 5, "checksums": [], "tee": SPEC.request([21, None, 23])}),
    (frames.PROGRESS, {"id": 3, "bytes": 2**40 + 1}),
    (frames.EXIT, EXIT),
])
def test_both_codecs_agree_on_the_tee_kinds(kind: int, payload: dict) -> None:
    """Controller frames decode in the agent's codec and back, byte for byte."""
    raw = frames.encode(0, kind, payload)
    assert agent.unpack(raw[4:]) == [0, kind, payload]
    assert b"".join(agent.encode_frame(0, kind, payload)) == raw
    assert frames.decode(raw[4:]) == (0, kind, payload)
    assert msgpack.unpackb(raw[4:], raw=False) == [0, kind, payload]


def test_exit_tee_map_parses_into_results() -> None:
    """EXIT's tee map becomes a TeeResult with our own per-branch wire counts."""
    r = TeeResult.from_exit(EXIT["tee"], [0, 0, 77])
    assert r.bytes == 2**33 + 5 and r.digests == {"sha256": "ab" * 32} and r.duration == 2.5 and r.failed == 1
    assert [(b.status, b.error, b.bytes, b.links, b.wire_bytes) for b in r.branches] == [
        ("dropped", "EPIPE", 5, [3], 0), ("failed", "EPIPE", 0, [], 0), ("ok", None, 2**33 + 5, [], 77)]


@pytest.mark.parametrize("junk", [None, "x", 3, {"branches": "no", "failed": "1"}, {"branches": [None, 4]}])
def test_a_malformed_tee_map_is_not_a_crash(junk: object) -> None:
    """It is the remote's word: missing or odd fields read as empty, never raise."""
    r = TeeResult.from_exit(junk, [])
    assert r.failed is None and r.bytes == 0 and all(b.status == "ok" for b in r.branches)


def test_remote_counter_looks_like_a_fastpipe_counter() -> None:
    """PROGRESS totals only grow; finish() takes the agent's bytes and duration; snapshot() has the fields."""
    c = RemoteCounter(total=1000)
    assert c.snapshot().bytes == 0 and not c.snapshot().done
    c.update(300)
    c.update(200)              # late or reordered: never goes back
    assert c.bytes == 300 and c.snapshot().percent == 30.0
    c.add(100)
    c.finish(1000, duration=2.0)
    snap = c.snapshot()
    assert snap.done and snap.bytes == 1000 and snap.percent == 100.0 and snap.eta == 0.0
    assert snap.elapsed == pytest.approx(2.0) and snap.avg_rate == pytest.approx(500.0)

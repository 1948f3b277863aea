"""Frame codec, bootstrap loader/payload, and credit-window channels on the controller side."""
from __future__ import annotations

import ast
import asyncio
import shlex
import struct
import subprocess
import zlib

import msgpack
import pytest

from clipipe.wire import bootstrap, frames
from clipipe.wire.mux import InboundChannel, Mux, OutboundChannel, WindowViolation

agent = bootstrap.agent_module()


def test_protocol_table_comes_from_the_agent() -> None:
    """The controller's constants are the agent's: one table, no copies to drift."""
    for name in ("PROTOCOL", "CONTROL", "HELLO", "RUN_SEGMENT", "DATA", "EOF", "WINDOW", "EXIT", "KILL",
                 "ERROR", "PING", "PONG", "SHUTDOWN", "PROGRESS", "CHUNK", "WINDOW_SIZE", "GRANT", "MAX_FRAME",
                 "PROGRESS_INTERVAL"):
        assert getattr(frames, name) == getattr(agent, name)
    assert len(set(agent.KIND_NAMES)) == len(agent.KIND_NAMES) == 13
    assert agent.CHUNK <= agent.WINDOW_SIZE < agent.MAX_FRAME


@pytest.mark.parametrize("frame", [(0, frames.PING, {"id": 1}), (7, frames.WINDOW, 65536), (3, frames.EOF, None),
                                   (0, frames.RUN_SEGMENT, {"id": 2, "procs": [{"name": "a", "command": "ls"}]})])
def test_encode_decode_roundtrip(frame: tuple) -> None:
    """A frame is a u32 BE length and a msgpack [channel, kind, payload] body."""
    raw = frames.encode(*frame)
    (size,) = struct.unpack(">I", raw[:4])
    assert size == len(raw) - 4
    assert msgpack.unpackb(raw[4:], raw=False) == list(frame)
    assert frames.decode(raw[4:]) == frame


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65535, 65536, frames.CHUNK])
def test_data_frames_are_plain_msgpack(size: int) -> None:
    """encode_data's hand-built header equals what msgpack would write, and the agent's."""
    data = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    body = msgpack.packb([5, frames.DATA, data], use_bin_type=True)
    assert frames.encode_data(5, data) == struct.pack(">I", len(body)) + body
    assert frames.encode(5, frames.DATA, data) == b"".join(agent.encode_frame(5, agent.DATA, data))


def test_oversized_frames_are_refused() -> None:
    """Nothing larger than MAX_FRAME is written or read."""
    with pytest.raises(frames.FrameError):
        frames.encode_data(1, b"x" * frames.MAX_FRAME)
    with pytest.raises(frames.FrameError):
        frames.split_frames(struct.pack(">I", frames.MAX_FRAME + 1) + b"x")


@pytest.mark.parametrize("body", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"a": 1}),
                                  msgpack.packb(["a", 1, None]), msgpack.packb([1, 2, 3]) + b"x"])
def test_bad_bodies_raise_frame_error(body: bytes) -> None:
    """Anything but [int, int, payload] is a FrameError."""
    with pytest.raises(frames.FrameError):
        frames.decode(body)


def test_split_frames_keeps_the_incomplete_tail() -> None:
    """A stream cut mid-frame yields the whole frames and the rest."""
    raw = frames.encode(0, frames.PING, {"id": 1}) + frames.encode_data(2, b"abc")
    got, tail = frames.split_frames(raw + raw[:5])
    assert got == [(0, frames.PING, {"id": 1}), (2, frames.DATA, b"abc")]
    assert tail == raw[:5]


def test_read_frame_from_stream_reader() -> None:
    """read_frame reads exactly one frame; a torn stream raises IncompleteReadError."""
    async def main() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(frames.encode(0, frames.PONG, {"id": 3}) + b"\x00\x00")
        reader.feed_eof()
        assert await frames.read_frame(reader) == (0, frames.PONG, {"id": 3})
        with pytest.raises(asyncio.IncompleteReadError):
            await frames.read_frame(reader)
    asyncio.run(main())


def test_boot_command_is_one_shell_line_without_disk_writes() -> None:
    """`python3 -c '...'`: one line, quotes that survive a shell, the loader reads fd 0 only."""
    cmd = bootstrap.boot_command("/usr/bin/python3")
    assert "\n" not in cmd
    argv = shlex.split(cmd)
    assert argv[:2] == ["/usr/bin/python3", "-c"] and argv == bootstrap.boot_argv("/usr/bin/python3")
    assert "open(" not in bootstrap.LOADER_SOURCE and "os.read(0" in bootstrap.LOADER_SOURCE
    ast.parse(bootstrap.LOADER_SOURCE, feature_version=(3, 8))


def test_payload_layout() -> None:
    """u32 n | zlib(agent source) | u32 m | repr(config)."""
    raw = bootstrap.payload({"kill_grace": 0.5})
    (n,) = struct.unpack(">I", raw[:4])
    assert zlib.decompress(raw[4:4 + n]) == bootstrap.agent_source()
    (m,) = struct.unpack(">I", raw[4 + n:8 + n])
    assert ast.literal_eval(raw[8 + n:].decode()) == {"kill_grace": 0.5} and len(raw) == 8 + n + m
    with pytest.raises(ValueError):
        bootstrap.payload({"x": object()})


def test_loader_boots_the_agent_which_says_hello_first() -> None:
    """The one-liner inflates the payload from stdin and the agent's first frame is HELLO."""
    proc = subprocess.run(bootstrap.boot_command(), shell=True, input=bootstrap.payload(),
                          capture_output=True, timeout=30)
    got, tail = frames.split_frames(proc.stdout)
    assert tail == b"" and proc.returncode == 0, proc.stderr
    (channel, kind, hello), = got
    assert (channel, kind) == (frames.CONTROL, frames.HELLO)
    assert {"version", "protocol", "python", "platform", "hostname", "pid", "cwd"} <= set(hello)
    assert hello["protocol"] == frames.PROTOCOL


def test_loader_exits_quietly_on_a_short_payload() -> None:
    """A transport that dies mid-boot leaves no traceback noise and a distinct exit status."""
    proc = subprocess.run(bootstrap.boot_argv(), input=bootstrap.payload()[:100], capture_output=True,
                          timeout=30)
    assert proc.returncode == 3 and proc.stdout == b""


def test_outbound_channel_waits_for_credit() -> None:
    """A sender blocks at zero credit and resumes on WINDOW; EOF from the peer returns 0."""
    async def main() -> None:
        ch = OutboundChannel(1, window=10)
        assert await ch.wait_credit() == 10
        ch.take(10)
        with pytest.raises(WindowViolation):
            ch.take(1)
        waiter = asyncio.create_task(ch.wait_credit())
        await asyncio.sleep(0.01)
        assert not waiter.done()
        ch.grant(4)
        assert await waiter == 4
        ch.peer_eof()
        assert await ch.wait_credit() == 0
        failing = OutboundChannel(2, window=0)
        failing.fail(RuntimeError("gone"))
        with pytest.raises(RuntimeError):
            await failing.wait_credit()
    asyncio.run(main())


def test_inbound_channel_bounds_and_batches_grants() -> None:
    """DATA beyond the window is a violation; credit returns in GRANT batches or when drained."""
    async def main() -> None:
        ch = InboundChannel(1, window=frames.GRANT * 2)
        ch.feed(b"a" * frames.GRANT)
        ch.feed(b"b" * frames.GRANT)
        with pytest.raises(WindowViolation):
            ch.feed(b"c")
        assert len(await ch.get() or b"") == frames.GRANT
        assert ch.consumed(frames.GRANT // 2) == 0 or True  # a batch may wait while data is queued
        ch2 = InboundChannel(2, window=100)
        ch2.feed(b"x" * 10)
        assert await ch2.get() == b"x" * 10
        assert ch2.consumed(10) == 10  # queue empty: grant now
        ch2.feed_eof()
        assert await ch2.get() is None
    asyncio.run(main())


def test_mux_allocates_unique_ids_and_drops_released() -> None:
    """Ids are unique while open; released channels no longer route."""
    mux = Mux()
    a, b = mux.open_outbound(), mux.open_inbound()
    assert a.id != b.id and mux.get(a.id) is a and len(mux) == 2
    mux.release(a)
    assert mux.get(a.id) is None and len(mux) == 1

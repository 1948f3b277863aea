"""The controller's frame codec (the `msgpack` package) and the protocol table shared with the agent.

The table (kinds, window, chunk and frame sizes) is imported from agent/clipipe_agent.py, whose module
docstring is the protocol specification; nothing is redefined here.
"""
from __future__ import annotations

import struct
from typing import Any, Protocol

import msgpack

from clipipe.wire.bootstrap import agent_module

_agent = agent_module()

PROTOCOL: int = _agent.PROTOCOL
CONTROL: int = _agent.CONTROL
HELLO: int = _agent.HELLO
RUN_SEGMENT: int = _agent.RUN_SEGMENT
STARTED: int = _agent.STARTED
DATA: int = _agent.DATA
EOF: int = _agent.EOF
WINDOW: int = _agent.WINDOW
EXIT: int = _agent.EXIT
KILL: int = _agent.KILL
ERROR: int = _agent.ERROR
PING: int = _agent.PING
PONG: int = _agent.PONG
SHUTDOWN: int = _agent.SHUTDOWN
PROGRESS: int = _agent.PROGRESS
KIND_NAMES: dict[int, str] = dict(_agent.KIND_NAMES)
CHUNK: int = _agent.CHUNK
WINDOW_SIZE: int = _agent.WINDOW_SIZE
GRANT: int = _agent.GRANT
MAX_FRAME: int = _agent.MAX_FRAME
KILL_GRACE: float = _agent.KILL_GRACE
PROGRESS_INTERVAL: float = _agent.PROGRESS_INTERVAL
BRANCH_POLICIES: tuple[str, ...] = tuple(_agent.BRANCH_POLICIES)

_HEADER = struct.Struct(">I")


class FrameError(Exception):
    """Bytes on the wire that are not a valid frame (a protocol error, never a user error)."""


class ByteReader(Protocol):
    """What read_frame needs of a transport: asyncio.StreamReader's readexactly."""

    async def readexactly(self, n: int) -> bytes: ...


def encode(channel: int, kind: int, payload: Any) -> bytes:
    """One frame: u32 length + msgpack [channel, kind, payload]."""
    if kind == DATA:
        return encode_data(channel, payload)
    body = msgpack.packb([channel, kind, payload], use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise FrameError(f"frame of {len(body)} bytes exceeds MAX_FRAME {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


def encode_data(channel: int, data: bytes | bytearray | memoryview) -> bytes:
    """A DATA frame built around data with a single copy (no msgpack pass over the bytes)."""
    n = len(data)
    if n < 0x100:
        binhead = struct.pack(">BB", 0xC4, n)
    elif n < 0x10000:
        binhead = struct.pack(">BH", 0xC5, n)
    else:
        binhead = struct.pack(">BI", 0xC6, n)
    head = b"\x93" + msgpack.packb(channel) + msgpack.packb(DATA) + binhead
    size = len(head) + len(data)
    if size > MAX_FRAME:
        raise FrameError(f"DATA frame of {size} bytes exceeds MAX_FRAME {MAX_FRAME}")
    return b"".join((_HEADER.pack(size), head, data))


def decode(body: bytes) -> tuple[int, int, Any]:
    """A frame body -> (channel, kind, payload); raises FrameError on anything else."""
    try:
        frame = msgpack.unpackb(body, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise FrameError(f"undecodable frame: {exc}") from exc
    if (not isinstance(frame, list) or len(frame) != 3 or type(frame[0]) is not int
            or type(frame[1]) is not int):
        raise FrameError("a frame is [channel, kind, payload]")
    return frame[0], frame[1], frame[2]


async def read_frame(reader: ByteReader) -> tuple[int, int, Any]:
    """Read one frame; asyncio.IncompleteReadError at a clean or torn end of stream."""
    (size,) = _HEADER.unpack(await reader.readexactly(4))
    if size > MAX_FRAME:
        raise FrameError(f"frame of {size} bytes exceeds MAX_FRAME {MAX_FRAME}")
    return decode(await reader.readexactly(size))


def split_frames(data: bytes) -> tuple[list[tuple[int, int, Any]], bytes]:
    """Decode every complete frame in data; return them and the incomplete tail (for tests, tools)."""
    frames = []
    pos = 0
    while len(data) - pos >= 4:
        (size,) = _HEADER.unpack_from(data, pos)
        if size > MAX_FRAME:
            raise FrameError(f"frame of {size} bytes exceeds MAX_FRAME {MAX_FRAME}")
        if len(data) - pos - 4 < size:
            break
        frames.append(decode(data[pos + 4:pos + 4 + size]))
        pos += 4 + size
    return frames, data[pos:]

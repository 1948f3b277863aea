"""RFC 6455 server side for the Kubernetes API stand-in: the upgrade handshake and frames (stdlib only).

Server frames are never masked; client frames always are (RFC 6455 5.1). Unmasking uses one big-int
XOR per frame, which runs at memory speed in CPython and keeps the stand-in off a benchmark's
critical path.
"""
from __future__ import annotations

import base64
import hashlib
import struct
import threading
from typing import BinaryIO

#: RFC 6455 1.3: the GUID appended to Sec-WebSocket-Key before hashing.
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA

#: Largest message the stand-in accepts from a client: the agent's frames are 1 MiB; a margin.
MAX_MESSAGE = 64 * 1024 * 1024


class WSClosed(Exception):
    """The client closed the connection (close frame or EOF)."""


def accept_key(key: str) -> str:
    """Sec-WebSocket-Accept for a client's Sec-WebSocket-Key."""
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def unmask(data: bytes, key: bytes) -> bytes:
    """XOR `data` with the repeating 4-byte `key`."""
    n = len(data)
    if not n:
        return b""
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(n, "little")


def _read_exactly(rfile: BinaryIO, n: int) -> bytes:
    buf = rfile.read(n)
    if buf is None or len(buf) < n:
        raise WSClosed("EOF")
    return buf


def read_frame(rfile: BinaryIO) -> tuple[bool, int, bytes]:
    """One frame from the client: (fin, opcode, unmasked payload)."""
    b0, b1 = _read_exactly(rfile, 2)
    fin, opcode, masked, length = bool(b0 & 0x80), b0 & 0x0F, bool(b1 & 0x80), b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack(">H", _read_exactly(rfile, 2))
    elif length == 127:
        (length,) = struct.unpack(">Q", _read_exactly(rfile, 8))
    if length > MAX_MESSAGE:
        raise WSClosed(f"frame of {length} bytes is too large")
    key = _read_exactly(rfile, 4) if masked else b""
    payload = _read_exactly(rfile, length) if length else b""
    return fin, opcode, unmask(payload, key) if masked else payload


def read_message(rfile: BinaryIO, send: FrameSender) -> tuple[int, bytes]:
    """One whole message (continuations joined); answers pings; raises WSClosed on close or EOF."""
    parts: list[bytes] = []
    first_op = None
    while True:
        fin, op, payload = read_frame(rfile)
        if op == OP_CLOSE:
            send.close(payload[:2] if len(payload) >= 2 else struct.pack(">H", 1000))
            raise WSClosed("close frame")
        if op == OP_PING:
            send.frame(OP_PONG, payload)
            continue
        if op == OP_PONG:
            continue
        if op != OP_CONT:
            first_op = op
        parts.append(payload)
        if fin:
            return first_op or OP_BINARY, b"".join(parts)


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked server frame."""
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 1 << 16:
        head += bytes([126]) + struct.pack(">H", n)
    else:
        head += bytes([127]) + struct.pack(">Q", n)
    return head + payload


class FrameSender:
    """Thread-safe frame writer on one socket (stdout, stderr and status pumps share it)."""

    def __init__(self, sock: object) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.closed = False

    def frame(self, opcode: int, payload: bytes) -> bool:
        """Send one frame; False when the client is gone."""
        data = encode_frame(opcode, payload)
        with self.lock:
            if self.closed:
                return False
            try:
                self.sock.sendall(data)  # type: ignore[attr-defined]
            except OSError:
                self.closed = True
                return False
        return True

    def binary(self, channel: int, data: bytes) -> bool:
        """A binary message whose first byte is the Kubernetes channel number."""
        return self.frame(OP_BINARY, bytes([channel]) + data)

    def close(self, code: bytes = struct.pack(">H", 1000)) -> None:
        """Send a close frame once."""
        with self.lock:
            if self.closed:
                return
            try:
                self.sock.sendall(encode_frame(OP_CLOSE, code))  # type: ignore[attr-defined]
            except OSError:
                pass
            self.closed = True

"""One pod exec (the official client's WSClient) bridged to asyncio with bounded buffers.

`ExecStream.open()` starts `kubernetes.stream.stream(connect_get_namespaced_pod_exec, ...,
_preload_content=False)`: a websocket speaking the channel protocol (a binary message's first byte is
its channel: 0 stdin, 1 stdout, 2 stderr, 3 status, 255 close-a-channel in v5). websocket-client is
blocking, so two daemon threads run it:

- the reader receives messages and puts stdout/stderr chunks into an inbox bounded by INBOX_BYTES: when
  the event loop stops taking them, the thread blocks, TCP fills up, and the pod's process blocks on
  its stdout. Memory stays O(buffer) whatever the stream's size.
- the writer takes stdin bytes from an outbox bounded by OUTBOX_BYTES (`drain()` waits below it),
  coalesces them into messages of up to MESSAGE_BYTES, and sends them.

End of stdin: v5.channel.k8s.io has a close message ([255, 0]); `close()` sends it. v4 (and older) have
none: the process's stdin stays open until the websocket ends. The agent does not need it (SHUTDOWN and
its own EOF frames say everything), so the agent runs on v4 too; the raw-exec fallback refuses a
segment that reads stdin over v4 rather than hang or cut its output (see kubernetes.py).

The exit status (channel 3) is a metav1.Status from v4 on: Success, or Failure with the exit code in
details.causes[reason=ExitCode]; a Failure without one means the exec itself failed (e.g. the binary
is missing). The original channel.k8s.io sends only an error text.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from clipipe.targets.kubeclient import KubeAPI, PodRef, api_error, call_blocking

V5 = "v5.channel.k8s.io"
V4 = "v4.channel.k8s.io"
STDIN, STDOUT, STDERR, STATUS, CLOSE = 0, 1, 2, 3, 255

#: Bytes of stdout/stderr the reader thread may hold before it stops reading the socket: 4 agent
#: chunks, enough to keep the link busy while the loop writes the previous ones out.
INBOX_BYTES = 4 * 1024 * 1024
#: Bytes of stdin queued for the writer thread before drain() waits.
OUTBOX_BYTES = 4 * 1024 * 1024
#: Largest websocket message the writer sends: coalescing small writes (WINDOW frames, EOFs) saves
#: a syscall and a masking pass each; 1 MiB keeps one message's masking copy small.
MESSAGE_BYTES = 1024 * 1024
#: Seconds close() waits for the server's close answer before cutting the socket.
CLOSE_WAIT = 3.0

_EXIT_RE = re.compile(r"exit code (\d+)")


@dataclass
class ExecStatus:
    """How an exec ended, from the status channel."""

    exit_code: int | None              #: None: the exec did not run the command to an end
    message: str = ""
    reason: str = ""                   #: NonZeroExitCode, InternalError, ... ("lost" without a status)

    @property
    def not_found(self) -> bool:
        """True when the runtime could not start the command (missing binary)."""
        text = self.message.lower()
        return (self.exit_code in (126, 127) or "executable file not found" in text
                or "no such file or directory" in text)


def parse_status(raw: bytes, protocol: str) -> ExecStatus:
    """Channel-3 bytes -> ExecStatus (v4/v5 JSON, or the original protocol's error text)."""
    text = raw.decode("utf-8", "replace").strip()
    if protocol not in (V4, V5):
        if not text:
            return ExecStatus(0)
        m = _EXIT_RE.search(text)
        return ExecStatus(int(m[1]) if m else None, text, "Error")
    try:
        body = json.loads(text)
    except ValueError:
        return ExecStatus(None, text, "unparsable")
    if body.get("status") == "Success":
        return ExecStatus(0)
    for cause in (body.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            try:
                return ExecStatus(int(cause.get("message")), str(body.get("message") or ""), "NonZeroExitCode")
            except (TypeError, ValueError):
                break
    return ExecStatus(None, str(body.get("message") or text), str(body.get("reason") or "Failure"))


def _settle(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Inbox:
    """Thread -> loop queue of (channel, bytes), bounded in bytes; the producer thread blocks when full."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limit: int) -> None:
        self._loop = loop
        self._limit = limit
        self._items: deque[tuple[int, bytes]] = deque()
        self._size = 0
        self._ended = False
        self._discard = False
        self._cv = threading.Condition()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, channel: int, data: bytes) -> None:
        """(thread) Queue a chunk, waiting while the queue is full."""
        with self._cv:
            while self._size >= self._limit and not self._discard:
                self._cv.wait()
            if self._discard:
                return
            self._items.append((channel, data))
            self._size += len(data)
            self._wake()

    def end(self) -> None:
        """(thread) No more chunks."""
        with self._cv:
            self._ended = True
            self._wake()

    def _wake(self) -> None:
        w, self._waiter = self._waiter, None
        if w is not None:
            self._loop.call_soon_threadsafe(_settle, w)

    async def get(self) -> tuple[int, bytes] | None:
        """(loop) The next chunk; None at the end."""
        while True:
            with self._cv:
                if self._items:
                    item = self._items.popleft()
                    self._size -= len(item[1])
                    self._cv.notify()
                    return item
                if self._ended:
                    return None
                fut = self._loop.create_future()
                self._waiter = fut
            await fut

    def discard(self) -> None:
        """(loop) Drop what is queued and whatever comes: nobody will read it."""
        with self._cv:
            self._discard = True
            self._items.clear()
            self._size = 0
            self._cv.notify_all()


class ExecStream:
    """An exec's stdin/stdout/stderr as asyncio objects; a StreamReaderLike/StreamWriterLike pair too."""

    def __init__(self, ws: Any, loop: asyncio.AbstractEventLoop, *, on_stderr: Callable[[bytes], None] | None,
                 name: str) -> None:
        self.ws = ws
        self.protocol: str = str(getattr(ws, "subprotocol", None) or "channel.k8s.io")
        self.name = name
        self._loop = loop
        self._on_stderr = on_stderr
        self._inbox = _Inbox(loop, INBOX_BYTES)
        self._buf = bytearray()
        self._status_raw = b""
        self._ended = loop.create_future()
        self.error: BaseException | None = None     #: why the reader stopped, when not a close
        self.status: ExecStatus | None = None
        self.bytes_in = 0                            #: stdin bytes sent
        self.bytes_out = 0                           #: stdout bytes received
        self._out: deque[bytes | None] = deque()    #: stdin chunks; None = close stdin
        self._out_size = 0
        self._out_cv = threading.Condition()
        self._out_stop = False
        self._drainers: list[asyncio.Future[None]] = []
        self.write_error: BaseException | None = None
        self._reader = threading.Thread(target=self._read_loop, name=f"clipipe-k8s-exec-r-{name}", daemon=True)
        self._writer = threading.Thread(target=self._write_loop, name=f"clipipe-k8s-exec-w-{name}", daemon=True)
        self._reader.start()
        self._writer.start()

    # ------------------------------------------------------------------ opening
    @classmethod
    async def open(cls, api: KubeAPI, pod: PodRef, argv: list[str], *, target: str, timeout: float,
                   protocol: str | None = None, on_stderr: Callable[[bytes], None] | None = None) -> ExecStream:
        """Start `argv` in the pod (stdin, stdout, stderr, no tty); errors are typed TargetErrors."""
        from kubernetes.stream import stream

        kwargs: dict[str, Any] = {"command": argv, "stdin": True, "stdout": True, "stderr": True, "tty": False,
                                  "_preload_content": False, "binary": True}
        if pod.container:
            kwargs["container"] = pod.container
        if protocol:
            kwargs["_headers"] = {"sec-websocket-protocol": protocol}
        abandoned = threading.Event()

        def connect() -> Any:
            ws = stream(api.core.connect_get_namespaced_pod_exec, pod.name, pod.namespace, **kwargs)
            if abandoned.is_set():          # we gave up waiting: don't leave a live exec behind
                ws.close()
            return ws

        try:
            ws = await call_blocking(connect, timeout, "exec", target)
        except BaseException as exc:
            abandoned.set()
            raise api_error(exc, target=target, api=api, what=f"exec in pod {pod.namespace}/{pod.name}",
                            namespace=pod.namespace) from exc
        return cls(ws, asyncio.get_running_loop(), on_stderr=on_stderr, name=pod.name)

    # ------------------------------------------------------------------ threads
    def _read_loop(self) -> None:
        from websocket import ABNF

        sock = self.ws.sock
        try:
            while True:
                op, frame = sock.recv_data_frame(True)
                if op == ABNF.OPCODE_CLOSE:
                    break
                if op not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT):
                    continue
                data = frame.data if isinstance(frame.data, bytes) else bytes(frame.data)
                if not data:
                    continue
                ch = data[0]
                if ch in (STDOUT, STDERR):
                    if len(data) > 1:
                        self._inbox.put(ch, data[1:])
                elif ch == STATUS:
                    self._status_raw += data[1:]
                # CLOSE (v5, the server closing one of its channels) and resize need nothing here
        except Exception as exc:  # noqa: BLE001 - a dropped link ends the stream with its reason
            self.error = exc
        finally:
            if self._status_raw or self.error is None:
                self.status = parse_status(self._status_raw, self.protocol)
            self._inbox.end()
            self._loop.call_soon_threadsafe(_settle, self._ended)
            with self._out_cv:
                self._out_stop = True
                self._out_cv.notify_all()

    def _write_loop(self) -> None:
        from websocket import ABNF

        while True:
            with self._out_cv:
                while not self._out and not self._out_stop:
                    self._out_cv.wait()
                if self._out_stop and not self._out:
                    return
                parts: list[bytes] = []
                size = 0
                close = False
                while self._out and size < MESSAGE_BYTES:
                    item = self._out.popleft()
                    if item is None:
                        close = True
                        break
                    parts.append(item)
                    size += len(item)
            try:
                if parts:
                    self.ws.sock.send(b"\x00" + b"".join(parts), opcode=ABNF.OPCODE_BINARY)
                    self.bytes_in += size
                if close:
                    self.ws.close_channel(STDIN)     # a no-op below v5
            except Exception as exc:  # noqa: BLE001 - the reader sees the same link die
                self.write_error = exc
                with self._out_cv:
                    self._out.clear()
                    self._out_stop = True
            with self._out_cv:
                self._out_size -= size
                low = self._out_size <= OUTBOX_BYTES // 2 or self._out_stop
                waiters = self._drainers if low else []
                if low:
                    self._drainers = []
            for w in waiters:
                self._loop.call_soon_threadsafe(_settle, w)

    # ------------------------------------------------------------------ reading (loop side)
    async def read_item(self) -> tuple[int, bytes] | None:
        """The next (channel, bytes) of stdout (1) or stderr (2); None once the exec ended."""
        item = await self._inbox.get()
        if item is not None and item[0] == STDOUT:
            self.bytes_out += len(item[1])
        return item

    async def readexactly(self, n: int) -> bytes:
        """Exactly n stdout bytes (stderr goes to on_stderr meanwhile); IncompleteReadError at the end."""
        buf = self._buf
        while len(buf) < n:
            item = await self.read_item()
            if item is None:
                partial = bytes(buf)
                buf.clear()
                raise asyncio.IncompleteReadError(partial, n)
            ch, data = item
            if ch == STDOUT:
                buf += data
            elif self._on_stderr is not None:
                self._on_stderr(data)
        out = bytes(buf[:n])
        del buf[:n]
        return out

    # ------------------------------------------------------------------ writing (loop side)
    @property
    def can_close_stdin(self) -> bool:
        """True when the protocol can signal end of stdin (v5)."""
        return self.protocol == V5

    def write(self, data: bytes) -> None:
        """Queue stdin bytes (drain() applies back-pressure)."""
        if not data:
            return
        if self.write_error is not None:
            raise ConnectionResetError(f"exec stdin lost: {self.write_error}")
        with self._out_cv:
            if self._out_stop:
                raise ConnectionResetError("exec stream ended")
            self._out.append(bytes(data))
            self._out_size += len(data)
            self._out_cv.notify()

    async def drain(self) -> None:
        """Wait until the queued stdin is below the outbox bound."""
        while True:
            if self.write_error is not None:
                raise ConnectionResetError(f"exec stdin lost: {self.write_error}")
            with self._out_cv:
                if self._out_size <= OUTBOX_BYTES or self._out_stop:
                    return
                fut = self._loop.create_future()
                self._drainers.append(fut)
            await fut

    def close(self) -> None:
        """End of stdin: the v5 close message after what is queued (nothing to send below v5)."""
        with self._out_cv:
            if not self._out_stop:
                self._out.append(None)
                self._out_cv.notify()

    # ------------------------------------------------------------------ ending
    async def wait(self) -> ExecStatus:
        """Wait for the exec to end; its status (exit_code None and reason "lost" without one)."""
        await asyncio.shield(self._ended)
        if self.status is None:
            why = f"{type(self.error).__name__}: {self.error}" if self.error else "closed without a status"
            return ExecStatus(None, f"connection lost ({why})", "lost")
        return self.status

    def discard_output(self) -> None:
        """Drop unread and future stdout/stderr, so the reader thread can reach the status."""
        self._inbox.discard()

    @property
    def ended(self) -> bool:
        """True once the reader saw the websocket end."""
        return self._ended.done()

    async def aclose(self) -> None:
        """Close the websocket (politely, then for sure) and let the threads end."""
        self._inbox.discard()
        with self._out_cv:
            self._out_stop = True
            self._out_cv.notify_all()
        if not self._ended.done():
            # a daemon thread: a send stuck on a full socket must not hold us (shutdown() frees it)
            threading.Thread(target=self._send_close, name=f"clipipe-k8s-close-{self.name}", daemon=True).start()
            try:
                await asyncio.wait_for(asyncio.shield(self._ended), CLOSE_WAIT)
            except asyncio.TimeoutError:
                pass
        with contextlib.suppress(Exception):
            self.ws.sock.shutdown()

    def _send_close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.sock.send_close()

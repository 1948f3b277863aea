"""Data channels multiplexed over one agent connection, each with a credit window (controller side).

An OutboundChannel (controller -> agent, a segment's stdin) sends only while it holds credit; the
agent grants more with WINDOW frames as it writes into the process's pipe. An InboundChannel (agent ->
controller, stdout and stderrs) queues at most one window of DATA and hands credit back in GRANT-sized
batches as its consumer drains it. So a slow consumer throttles only its own producer.
"""
from __future__ import annotations

import asyncio
from collections import deque

from clipipe.wire.frames import GRANT, WINDOW_SIZE


class WindowViolation(Exception):
    """The peer sent more DATA than the credit it was given."""


class OutboundChannel:
    """Controller -> agent bytes on one channel, within the credit the agent granted."""

    def __init__(self, cid: int, window: int = WINDOW_SIZE) -> None:
        self.id = cid
        self.credit = window
        self.sent = 0
        self.peer_closed = False       #: the agent said its reader is gone (EOF from the agent)
        self._exc: BaseException | None = None
        self._wakeup = asyncio.Event()

    def grant(self, n: int) -> None:
        """Credit from a WINDOW frame."""
        self.credit += n
        self._wakeup.set()

    def peer_eof(self) -> None:
        """The agent stopped reading this channel: stop sending."""
        self.peer_closed = True
        self._wakeup.set()

    def fail(self, exc: BaseException) -> None:
        """The session died: wake the sender with exc."""
        self._exc = exc
        self._wakeup.set()

    async def wait_credit(self) -> int:
        """Wait until some credit is available; 0 means the peer closed the channel."""
        while True:
            if self._exc is not None:
                raise self._exc
            if self.peer_closed:
                return 0
            if self.credit > 0:
                return self.credit
            self._wakeup.clear()
            await self._wakeup.wait()

    def take(self, n: int) -> None:
        """Spend credit for n bytes about to be sent."""
        if n > self.credit:
            raise WindowViolation(f"channel {self.id}: {n} bytes over a credit of {self.credit}")
        self.credit -= n
        self.sent += n


class InboundChannel:
    """Agent -> controller bytes on one channel: a queue bounded by the window we granted."""

    def __init__(self, cid: int, window: int = WINDOW_SIZE) -> None:
        self.id = cid
        self.allowed = window          #: bytes the agent may still send
        self.received = 0
        self.closed_local = False      #: we told the agent we won't read (drop what still arrives)
        self._queue: deque[bytes | None] = deque()
        self._ungranted = 0
        self._exc: BaseException | None = None
        self._wakeup = asyncio.Event()

    def feed(self, data: bytes) -> None:
        """A DATA frame arrived."""
        if len(data) > self.allowed:
            raise WindowViolation(f"channel {self.id}: {len(data)} bytes over a credit of {self.allowed}")
        self.allowed -= len(data)
        self.received += len(data)
        if not self.closed_local:
            self._queue.append(data)
            self._wakeup.set()

    def feed_eof(self) -> None:
        """The agent will send no more on this channel."""
        self._queue.append(None)
        self._wakeup.set()

    def fail(self, exc: BaseException) -> None:
        """The session died: wake the consumer with exc."""
        self._exc = exc
        self._wakeup.set()

    async def get(self) -> bytes | None:
        """The next chunk, or None at EOF."""
        while not self._queue:
            if self._exc is not None:
                raise self._exc
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._queue.popleft()

    def consumed(self, n: int) -> int:
        """The consumer took n bytes; return the credit to grant now (0 = wait for a bigger batch)."""
        self._ungranted += n
        if self._ungranted >= GRANT or (not self._queue and self._ungranted):
            grant, self._ungranted = self._ungranted, 0
            self.allowed += grant
            return grant
        return 0


Channel = OutboundChannel | InboundChannel


class Mux:
    """The channel table of one session: allocates ids, routes frames, fails everything at once."""

    def __init__(self, window: int = WINDOW_SIZE) -> None:
        self.window = window
        self._next = 1
        self._channels: dict[int, Channel] = {}

    def _allocate(self) -> int:
        cid = self._next
        self._next = cid + 1 if cid < 2**31 - 1 else 1
        while self._next in self._channels:
            self._next += 1
        return cid

    def open_outbound(self) -> OutboundChannel:
        """A new controller -> agent channel."""
        ch = OutboundChannel(self._allocate(), self.window)
        self._channels[ch.id] = ch
        return ch

    def open_inbound(self) -> InboundChannel:
        """A new agent -> controller channel."""
        ch = InboundChannel(self._allocate(), self.window)
        self._channels[ch.id] = ch
        return ch

    def get(self, cid: int) -> Channel | None:
        """The open channel with this id, if any (frames for closed channels are dropped)."""
        return self._channels.get(cid)

    def release(self, ch: Channel | None) -> None:
        """Forget a channel; late frames for it are ignored."""
        if ch is not None:
            self._channels.pop(ch.id, None)

    def fail_all(self, exc: BaseException) -> None:
        """Wake every channel's user with exc."""
        for ch in self._channels.values():
            ch.fail(exc)

    def __len__(self) -> int:
        return len(self._channels)

    def channels(self) -> list[Channel]:
        """The open channels (for stats and tests)."""
        return list(self._channels.values())

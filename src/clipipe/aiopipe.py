"""Reading a pipe's read end from asyncio without a thread and without a StreamReader's copies."""
from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

#: Bytes read per wake-up: a default pipe buffer and then some.
READ_SIZE = 64 * 1024


async def read_chunks(fd: int, size: int = READ_SIZE) -> AsyncIterator[bytes]:
    """The bytes of `fd` (made non-blocking) as they arrive, until EOF; the fd stays open."""
    loop = asyncio.get_running_loop()
    os.set_blocking(fd, False)
    ready = asyncio.Event()
    loop.add_reader(fd, ready.set)
    try:
        while True:
            await ready.wait()
            ready.clear()
            try:
                data = os.read(fd, size)
            except BlockingIOError:
                continue
            if not data:
                return
            yield data
    finally:
        loop.remove_reader(fd)

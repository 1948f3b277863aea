"""Type stub for the Cython stream core (same API as clipipe._fastpipe_py)."""
from __future__ import annotations

from typing import Any, Sequence

from clipipe._fastpipe_py import ALGORITHMS as ALGORITHMS
from clipipe._fastpipe_py import DEFAULT_PIPE_SIZE as DEFAULT_PIPE_SIZE
from clipipe._fastpipe_py import PumpResult as PumpResult
from clipipe._fastpipe_py import Snapshot as Snapshot
from clipipe._fastpipe_py import hasher as hasher

IMPLEMENTATION: str
HAVE_EVP: bool  # hashing through OpenSSL EVP without the GIL (else hashlib objects)
DEFAULT_BUFSIZE: int

class Counter:
    """Progress counter: the pump adds to it, any thread calls snapshot(); no locks on the hot path."""

    total: int | None
    done: bool
    def __init__(self, total: int | None = None) -> None: ...
    @property
    def bytes(self) -> int: ...
    def add(self, n: int) -> None: ...
    def start(self) -> None: ...
    def finish(self) -> None: ...
    def snapshot(self) -> Snapshot: ...

def pump(
    src: int,
    sinks: Sequence[int],
    *,
    checksums: Sequence[str] = (),
    counter: Counter | Any | None = None,
    bufsize: int = ...,
    policy: str | Sequence[str] = "fail",
    close_sinks: bool = True,
    pipe_size: int = ...,
    kernel: bool = True,
) -> PumpResult: ...

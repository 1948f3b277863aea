"""Stream core selector: the Cython ``_fastpipe`` when built, else the pure-Python twin.

``CLIPIPE_PURE=1`` forces the twin (tests run both; see msgpack-python for the pattern).
"""
from __future__ import annotations

import os

if os.environ.get("CLIPIPE_PURE") == "1":
    from clipipe._fastpipe_py import (
        DEFAULT_BUFSIZE, IMPLEMENTATION, Counter, pump,
    )
else:
    try:
        from clipipe._fastpipe import (  # type: ignore[assignment]  # Cython twin of the same API
            DEFAULT_BUFSIZE, IMPLEMENTATION, Counter, pump,
        )
    except ImportError:
        from clipipe._fastpipe_py import (
            DEFAULT_BUFSIZE, IMPLEMENTATION, Counter, pump,
        )

from clipipe._fastpipe_py import (  # shared by both implementations
    ALGORITHMS, DEFAULT_PIPE_SIZE, PumpResult, Snapshot, hasher,
)

__all__ = [
    "ALGORITHMS", "Counter", "DEFAULT_BUFSIZE", "DEFAULT_PIPE_SIZE", "IMPLEMENTATION",
    "PumpResult", "Snapshot", "hasher", "pump",
]

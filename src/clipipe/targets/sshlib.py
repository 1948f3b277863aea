"""Importing asyncssh without its optional-library probes costing 10 ms each where the library is absent.

At import time asyncssh looks for liboqs (post-quantum key exchange: `find_library("oqs")`, then
`("liboqs")`) and libnettle (UMAC MACs: "nettle", "libnettle", "libnettle-6"). On Linux every
`ctypes.util.find_library` miss runs `ldconfig -p` and then `gcc`/`ld` as subprocesses: 20 ms of each
clipipe start that touches SSH on a machine without liboqs, a tenth of a 10-host fleet run.
`fast_library_probe()` answers those names with None when `lib<name>.` is neither in the dynamic
loader's cache nor in the usual library directories, and leaves every other lookup (and every machine
where LD_LIBRARY_PATH/LIBRARY_PATH widen the search) to the real find_library. asyncssh ends up
offering the same algorithms it would have offered.

    with fast_library_probe():
        import asyncssh
"""
from __future__ import annotations

import contextlib
import ctypes.util
import os
import sys
from typing import Iterator

#: The names asyncssh probes at import time.
PROBED = ("oqs", "liboqs", "nettle", "libnettle", "libnettle-6")
LD_CACHE = "/etc/ld.so.cache"


def _lib_dirs() -> list[str]:
    """The directories gcc/ld search by default on Linux, the multiarch ones included."""
    dirs = ["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/local/lib", "/usr/local/lib64"]
    multiarch = getattr(sys.implementation, "_multiarch", "") or f"{os.uname().machine}-linux-gnu"
    dirs += [f"{d}/{multiarch}" for d in ("/lib", "/usr/lib", "/usr/local/lib")]
    return dirs


def absent_libraries(names: tuple[str, ...] = PROBED) -> set[str]:
    """Those of `names` that find_library certainly would not find (empty when unsure or not Linux)."""
    if not sys.platform.startswith("linux"):
        return set()
    if os.environ.get("LD_LIBRARY_PATH") or os.environ.get("LIBRARY_PATH"):
        return set()
    try:
        with open(LD_CACHE, "rb") as f:
            cache = f.read()
    except OSError:
        return set()
    absent = {name for name in names if f"lib{name}.".encode() not in cache}
    seen: set[str] = set()
    for d in _lib_dirs():
        real = os.path.realpath(d)
        if not absent or real in seen:
            continue
        seen.add(real)
        try:
            files = os.listdir(real)
        except OSError:
            continue
        prefixes = tuple(f"lib{name}." for name in absent)
        for fname in files:
            if fname.startswith(prefixes):
                absent -= {name for name in absent if fname.startswith(f"lib{name}.")}
    return absent


@contextlib.contextmanager
def fast_library_probe() -> Iterator[None]:
    """Within the block, find_library(name) is None at once for the probed names that are absent."""
    absent = set() if "asyncssh" in sys.modules else absent_libraries()
    if not absent:
        yield
        return
    real = ctypes.util.find_library

    def find_library(name: str) -> str | None:
        return None if name in absent else real(name)

    ctypes.util.find_library = find_library
    try:
        yield
    finally:
        ctypes.util.find_library = real

"""TCP connects started before asyncssh is imported, so sshd's per-connection start-up overlaps ours.

For every connection sshd forks and re-executes itself, loads its keys and only then sends its banner
(measured here: 26 ms until the last of 10 loopback hosts answered, 125 ms for 50), while importing
asyncssh costs the controller ~90 ms of one core. A fleet run therefore starts the connects of its
first `forks` hosts at once (non-blocking sockets, stdlib only; names are resolved by one background
thread), imports asyncssh and builds the targets meanwhile, and each SSH target finishes its connect
and hands the socket to `asyncssh.connect(sock=...)`. The SSH protocol, host-key check and login are unchanged: only the TCP
handshake happened earlier.

A host is pre-connected only when nothing but the context itself decides where the socket goes: no
`jump:`, and no Host/Match block (nor an Include) in its ssh_config that could rename the host, change
the port or add a proxy. A pre-connect that failed (refused, timed out, unknown host) re-raises the
same exception at the target's connect, so the error classification is the one of a normal connect.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import fnmatch
import ipaddress
import os
import socket
import threading
from dataclasses import dataclass, field
from typing import Any

_lock = threading.Lock()
_pending: dict[tuple[str, int], Early] = {}


@dataclass
class Early:
    """A TCP connect under way: a non-blocking socket whose connect() returned EINPROGRESS."""

    host: str
    port: int
    timeout: float
    #: the socket and address once known (at once for an address, after DNS for a name), or the error
    ready: concurrent.futures.Future[tuple[socket.socket, Any]] = field(default_factory=concurrent.futures.Future)

    async def connected(self) -> socket.socket:
        """The connected socket (for asyncssh's `sock=`); the connect's own error otherwise."""
        sock, addr = await asyncio.wait_for(asyncio.wrap_future(self.ready), self.timeout)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, addr), self.timeout)
        except BaseException:
            sock.close()
            raise
        return sock

    def discard(self) -> None:
        """Close the socket (nobody took it)."""
        self.ready.add_done_callback(_close_ready)


def _close_ready(fut: concurrent.futures.Future[tuple[socket.socket, Any]]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result()[0].close()


def _begin(early: Early, family: int, addr: Any) -> None:
    """Start the non-blocking connect (the kernel sends the SYN now; sshd forks when it accepts)."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.connect_ex(addr)
    except OSError as exc:
        sock.close()
        early.ready.set_exception(exc)
        return
    early.ready.set_result((sock, addr))


def _resolve_all(names: list[Early]) -> None:
    """One thread resolves the host names (DNS releases the GIL) and begins their connects."""
    for early in names:
        try:
            family, _, _, _, addr = socket.getaddrinfo(early.host, early.port, type=socket.SOCK_STREAM)[0]
        except OSError as exc:
            early.ready.set_exception(exc)
            continue
        _begin(early, family, addr)


def config_may_redirect(path: str | None, host: str) -> bool:
    """True when the ssh_config at `path` has a Host/Match block that may apply to `host`, or includes."""
    if not path:
        return False
    try:
        with open(os.path.expanduser(path), encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False                      # no file: asyncssh reads none either
    for line in lines:
        words = line.strip().replace("=", " ", 1).split()
        if not words or words[0].startswith("#"):
            continue
        key = words[0].lower()
        if key in ("match", "include"):
            return True
        if key == "host":
            pats = words[1:]
            if any(fnmatch.fnmatchcase(host, p) for p in pats if not p.startswith("!")):
                return True
    return False


def eligible(settings: Any) -> bool:
    """True when a pre-connect of these SSH settings reaches exactly what asyncssh would reach."""
    if getattr(settings, "jump", None):
        return False
    return not config_may_redirect(getattr(settings, "ssh_config", None), settings.host)


def start(settings_list: list[Any]) -> int:
    """Begin connecting to each eligible SSH settings' host:port; returns how many were started.

    Addresses connect at once (a non-blocking connect costs microseconds); names are resolved by one
    background thread, in order, and connected the same way.
    """
    names: list[Early] = []
    started = 0
    for s in settings_list:
        if not eligible(s):
            continue
        key = (s.host, s.port or 22)
        with _lock:
            if key in _pending:
                continue
            early = _pending[key] = Early(key[0], key[1], float(s.connect_timeout))
        started += 1
        try:
            ip = ipaddress.ip_address(key[0])
        except ValueError:
            names.append(early)
            continue
        _begin(early, socket.AF_INET6 if ip.version == 6 else socket.AF_INET, (key[0], key[1]))
    if names:
        threading.Thread(target=_resolve_all, args=(names,), name="clipipe-preconnect", daemon=True).start()
    return started


def take(host: str, port: int) -> Early | None:
    """The pending connect to host:port (removed: a socket serves one connection), or None."""
    with _lock:
        return _pending.pop((host, port), None)


def discard_all() -> None:
    """Close the sockets nobody took (hosts that were cancelled or never reached)."""
    with _lock:
        early = list(_pending.values())
        _pending.clear()
    for e in early:
        e.discard()

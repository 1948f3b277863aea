"""TCP connects started before asyncssh is imported, so sshd's per-connection start-up overlaps ours.

For every connection sshd forks and re-executes itself, loads its keys and only then sends its banner
(measured here: 26 ms until the last of 10 loopback hosts answered, 125 ms for 50), while importing
asyncssh costs the controller ~90 ms of one core. A fleet run therefore opens its first `forks`
sockets at once (stdlib only, one small thread each: DNS and connect release the GIL), imports
asyncssh and builds the targets meanwhile, and each SSH target hands its socket to
`asyncssh.connect(sock=...)`. The SSH protocol, host-key check and login are unchanged: only the TCP
handshake happened earlier.

A host is pre-connected only when nothing but the context itself decides where the socket goes: no
`jump:`, and no Host/Match block (nor an Include) in its ssh_config that could rename the host, change
the port or add a proxy. A pre-connect that failed (refused, timed out, unknown host) re-raises the
same exception at the target's connect, so the error classification is the one of a normal connect.
"""
from __future__ import annotations

import concurrent.futures
import fnmatch
import os
import socket
import threading
from typing import Any

_lock = threading.Lock()
_pending: dict[tuple[str, int], concurrent.futures.Future[socket.socket]] = {}


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.settimeout(None)
    sock.setblocking(False)
    return sock


def _run(fut: concurrent.futures.Future[socket.socket], host: str, port: int, timeout: float) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(_connect(host, port, timeout))
    except BaseException as exc:  # noqa: BLE001 - re-raised where the target connects
        fut.set_exception(exc)


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
    """Begin connecting to each eligible SSH settings' host:port; returns how many were started."""
    started = 0
    for s in settings_list:
        if not eligible(s):
            continue
        key = (s.host, s.port or 22)
        with _lock:
            if key in _pending:
                continue
            fut: concurrent.futures.Future[socket.socket] = concurrent.futures.Future()
            _pending[key] = fut
        threading.Thread(target=_run, args=(fut, key[0], key[1], float(s.connect_timeout)),
                         name="clipipe-preconnect", daemon=True).start()
        started += 1
    return started


def take(host: str, port: int) -> concurrent.futures.Future[socket.socket] | None:
    """The pending connect to host:port (removed: a socket serves one connection), or None."""
    with _lock:
        return _pending.pop((host, port), None)


def discard_all() -> None:
    """Close the sockets nobody took (hosts that were cancelled or never reached)."""
    with _lock:
        futs = list(_pending.values())
        _pending.clear()
    for fut in futs:
        fut.add_done_callback(_close_result)


def _close_result(fut: concurrent.futures.Future[socket.socket]) -> None:
    if not fut.cancelled() and fut.exception() is None:
        fut.result().close()

"""Port-forwards: a local TCP listener whose connections ride a target's tunnel to a remote port.

    fwd = target.port_forward(9000)                  # kubernetes: the context's pod; or pod=/service=
    async with fwd:                                  # ssh: remote_host= (default: the host itself)
        use(fwd.host, fwd.port)                      # the bound local address (local_port=0: any)

One `Forward` owns the listener; a `Tunnel` (kubernetes: a port-forward websocket per connection, see
`clipipe.targets.kubeforward`; ssh: a direct-tcpip channel of the target's one connection, below)
opens each connection's way to the remote port. The listener stays up whatever happens to the tunnel:

- start() probes the tunnel (one TCP connect through it to the remote port) and fails with one typed
  error when that does not work, so a forward that never worked never looks started;
- a supervisor checks the tunnel every `check_interval` seconds (cheaply: the ssh connection is open;
  the pod still exists and runs) and, when it is down, reconnects with exponential back-off
  (BACKOFF_MIN doubling to BACKOFF_MAX) until it comes back or the forward is stopped; each success
  counts in `reconnects`;
- a connection that arrives while the tunnel is down waits for it (up to `connect_wait` seconds)
  instead of being refused.

The SSH tunnel uses `SSHClientConnection.open_connection`, the direct-tcpip channel that asyncssh's
`forward_local_port` also opens per connection; owning the listener is what lets a reconnect keep the
same local port (a re-created `forward_local_port` listener could lose it to another process).
"""
from __future__ import annotations

import asyncio
import contextlib
import time
from types import TracebackType
from typing import Any, Protocol

from clipipe.errors import TargetError, UnreachableError

#: Read size of the relay loops; a socket buffer's worth.
COPY_CHUNK = 256 * 1024
#: Back-off between reconnect attempts: doubling from BACKOFF_MIN to BACKOFF_MAX seconds.
BACKOFF_MIN = 0.2
BACKOFF_MAX = 5.0
#: Seconds between cheap health checks of the tunnel.
CHECK_INTERVAL = 5.0
#: Seconds a new local connection waits for a tunnel that is reconnecting before it is dropped.
CONNECT_WAIT = 30.0


class Tunnel(Protocol):
    """What a Forward needs of a target: a way to the remote port, a health check, a reconnect."""

    name: str

    async def open_stream(self, probe: bool = False) -> tuple[Any, Any]:
        """One connection to the remote port: (reader, writer) with asyncio stream methods."""

    async def check(self) -> None:
        """Raise a TargetError when the tunnel is down (cheap: no connection to the remote port)."""

    async def reconnect(self) -> None:
        """Re-establish the tunnel (new connection, pod looked up again); raise when it can't."""

    def describe(self) -> dict[str, Any]:
        """Where the tunnel leads, for records."""

    async def close(self) -> None:
        """Release what the tunnel holds of its own."""


class Forward:
    """A probed, self-healing local port-forward; an async context manager (see the module docstring)."""

    def __init__(self, tunnel: Tunnel, *, local_port: int = 0, local_host: str = "127.0.0.1",
                 check_interval: float = CHECK_INTERVAL, connect_wait: float = CONNECT_WAIT) -> None:
        self.tunnel = tunnel
        self.local_host = local_host
        self.local_port = local_port
        self.check_interval = check_interval
        self.connect_wait = connect_wait
        self.status = "new"            #: new, up, reconnecting, stopped
        self.reconnects = 0
        self.connections = 0
        self.bytes_up = 0              #: local -> remote
        self.bytes_down = 0
        self.last_error: str | None = None
        self.started_at = 0.0
        self._server: asyncio.AbstractServer | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._relays: set[asyncio.Task[None]] = set()
        self._up = asyncio.Event()
        self._wake = asyncio.Event()
        self._healing: asyncio.Lock = asyncio.Lock()

    # ------------------------------------------------------------------ address
    @property
    def host(self) -> str:
        """The local address clients connect to."""
        return self.local_host

    @property
    def port(self) -> int:
        """The bound local port (the real one when 0 was asked for)."""
        return self.local_port

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) of the local end."""
        return self.local_host, self.local_port

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Forward:
        return await self.start()

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> Forward:
        """Probe the tunnel, bind the listener, start the supervisor; raise a typed error if it can't work."""
        await self._probe()
        try:
            self._server = await asyncio.start_server(self._serve, self.local_host, self.local_port)
        except OSError as exc:
            await self.tunnel.close()
            raise TargetError(f"can't listen on {self.local_host}:{self.local_port}: {exc.strerror or exc}",
                              target=self.tunnel.name, hint="choose another local_port (0 picks a free one)") from exc
        self.local_port = int(self._server.sockets[0].getsockname()[1])
        self.status = "up"
        self._up.set()
        self.started_at = time.time()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"forward-{self.tunnel.name}")
        return self

    async def stop(self) -> None:
        """Close the listener and every relayed connection; release the tunnel."""
        self.status = "stopped"
        if self._server is not None:
            self._server.close()
        for task in [self._supervisor, *self._relays]:
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in [self._supervisor, *self._relays] if t is not None),
                             return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
            self._server = None
        await self.tunnel.close()

    async def _probe(self) -> None:
        """One TCP connect through the tunnel to the remote port (the connection is then closed)."""
        reader, writer = await self.tunnel.open_stream(probe=True)
        with contextlib.suppress(Exception):
            writer.close()

    # ------------------------------------------------------------------ health
    async def check_now(self) -> bool:
        """Check the tunnel now (reconnecting when it is down); True when it is up afterwards."""
        async with self._healing:
            try:
                await self.tunnel.check()
                return True
            except (TargetError, OSError) as exc:
                self.last_error = str(exc)
            return await self._heal(max_attempts=1)

    async def _supervise(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.check_interval)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            async with self._healing:
                try:
                    await self.tunnel.check()
                    continue
                except (TargetError, OSError) as exc:
                    self.last_error = str(exc)
                await self._heal()

    async def _heal(self, max_attempts: int | None = None) -> bool:
        """Reconnect with back-off until it works (or max_attempts tries failed)."""
        self.status = "reconnecting"
        self._up.clear()
        delay = BACKOFF_MIN
        attempt = 0
        while self.status != "stopped":
            attempt += 1
            try:
                await self.tunnel.reconnect()
                await self._probe()
            except (TargetError, OSError) as exc:
                self.last_error = str(exc)
                if max_attempts is not None and attempt >= max_attempts:
                    return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
                continue
            self.reconnects += 1
            self.status = "up"
            self._up.set()
            return True
        return False

    # ------------------------------------------------------------------ relaying
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._relays.add(task)
        try:
            remote = await self._open_remote()
            if remote is None:
                return
            self.connections += 1
            rreader, rwriter = remote
            up = asyncio.create_task(self._copy(reader, rwriter, True))
            down = asyncio.create_task(self._copy(rreader, writer, False))
            try:
                await asyncio.gather(up, down)
            finally:
                up.cancel()
                down.cancel()
                for w in (rwriter, writer):
                    with contextlib.suppress(Exception):
                        w.close()
        finally:
            with contextlib.suppress(Exception):
                writer.close()
            if task is not None:
                self._relays.discard(task)

    async def _open_remote(self) -> tuple[Any, Any] | None:
        """The remote end for a new local connection, waiting out a reconnect (up to connect_wait)."""
        deadline = time.monotonic() + self.connect_wait
        while time.monotonic() < deadline and self.status != "stopped":
            if not self._up.is_set():
                try:
                    await asyncio.wait_for(self._up.wait(), max(0.0, deadline - time.monotonic()))
                except asyncio.TimeoutError:
                    return None
            try:
                return await self.tunnel.open_stream()
            except (TargetError, OSError) as exc:
                self.last_error = str(exc)
                self._up.clear()
                self.status = "reconnecting"
                self._wake.set()            # the supervisor heals; we wait for it
        return None

    async def _copy(self, reader: Any, writer: Any, upstream: bool) -> None:
        """Bytes one way until EOF, then half-close the other side."""
        try:
            while True:
                data = await reader.read(COPY_CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                if upstream:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
        except (ConnectionError, OSError):
            pass
        with contextlib.suppress(Exception):
            if writer.can_write_eof():
                writer.write_eof()
            else:
                writer.close()

    def describe(self) -> dict[str, Any]:
        """Local address, remote end, status and counters (for records and `describe()`)."""
        return {"local": f"{self.local_host}:{self.local_port}", "remote": self.tunnel.describe(),
                "status": self.status, "reconnects": self.reconnects, "connections": self.connections,
                "bytes_up": self.bytes_up, "bytes_down": self.bytes_down, "last_error": self.last_error}


# ------------------------------------------------------------------------------------------ ssh
class SSHTunnel:
    """Connections to remote_host:remote_port through an ssh target's one asyncssh connection."""

    def __init__(self, target: Any, remote_host: str, remote_port: int) -> None:
        self.target = target
        self.name = str(target.name)
        self.remote_host = remote_host
        self.remote_port = remote_port

    async def open_stream(self, probe: bool = False) -> tuple[Any, Any]:
        """A direct-tcpip channel: the SSH server connects to the remote port for us."""
        import asyncssh

        conn = await self.target.connect()
        try:
            return await conn.open_connection(self.remote_host, self.remote_port)
        except asyncssh.ChannelOpenError as exc:
            raise TargetError(f"port-forward: {self.target.host} could not connect to "
                              f"{self.remote_host}:{self.remote_port}: {exc.reason}", target=self.name,
                              hint="is something listening there (as seen from the ssh host)?") from exc
        except (asyncssh.Error, OSError) as exc:
            raise UnreachableError(f"port-forward: ssh connection lost: {exc}", target=self.name) from exc

    async def check(self) -> None:
        """The one connection is open."""
        conn = getattr(self.target, "conn", None)
        if conn is None or conn.is_closed():
            raise UnreachableError("port-forward: the ssh connection is closed", target=self.name)

    async def reconnect(self) -> None:
        """Drop the dead connection and open a new one (the target's later steps reuse it)."""
        conn = getattr(self.target, "conn", None)
        if conn is not None and conn.is_closed():
            self.target.conn = None
        await self.target.connect()

    def describe(self) -> dict[str, Any]:
        """ssh host and the remote address."""
        return {"via": "ssh", "context": self.name, "host": self.target.host,
                "to": f"{self.remote_host}:{self.remote_port}"}

    async def close(self) -> None:
        """Nothing of its own: the connection belongs to the target."""


def open_forward(target: Any, remote_port: int, local_port: int = 0, **where: Any) -> Forward:
    """`target.port_forward(...)` for any target; a TargetError for targets that can't forward."""
    method = getattr(target, "port_forward", None)
    if not callable(method):
        raise TargetError(f"context {getattr(target, 'name', '?')!r} ({getattr(target, 'kind', '?')}) "
                          "can't forward ports: use a kubernetes or ssh context", target=getattr(target, "name", None))
    result: Forward = method(remote_port, local_port, **where)
    return result

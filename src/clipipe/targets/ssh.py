"""The SSH target: one asyncssh connection per target per run, the agent booted over an exec channel.

Paths a segment can take (recorded per segment in `stream_stats`, totalled in `describe()`):
- "agent": frames over the asyncssh connection (control, small streams, per-proc stderr);
- "openssh-mux": bulk streams, `ssh -S CTL host SCRIPT` with the controller's fds as the ssh client's
  own stdin/stdout (Python off the byte path; see `clipipe.targets.sshmux`);
- "exec": one command with no stdin and no stream (an ad-hoc `clipipe run -c host CMD`) before the
  agent was needed: a plain exec channel of the asyncssh connection (no agent boot);
- "raw-exec": the remote has no usable Python: the segment runs as one `sh` script over an asyncssh
  exec channel (plain stdout/stderr/exit), said once as a warning.

Connect errors are classified once here (`map_connect_errors`) into UnreachableError, AuthError and
HostKeyError, each with a hint kept as a constant below.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import stat
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any

from clipipe.errors import AuthError, HostKeyError, TargetError, UnreachableError
from clipipe.targets import preconnect
from clipipe.targets.sshlib import fast_library_probe
from clipipe.targets.sshsettings import DataPlane, SSHSettings, parse_jump

with fast_library_probe():
    import asyncssh

from clipipe.targets.base import (
    ConnectInfo,
    ProcOutcome,
    ProcSpec,
    SegmentIO,
    StreamStats,
    register,
    tally,
)
from clipipe.targets.sshmux import (
    FAST_CIPHER,
    OpenSSHMaster,
    StatusParser,
    StderrRouter,
    new_nonce,
    proc_line,
    remote_command,
    run_over_mux,
    segment_script,
    write_all,
)

try:  # AgentTarget lands from the wire work; until then the agent path is unavailable
    from clipipe.targets.agent import AgentTarget
except ImportError:  # pragma: no cover - transitional
    AgentTarget = None  # type: ignore[assignment,misc]

HINT_HOST_KEY_UNKNOWN = ("the host key of {host}:{port} is not in {known_hosts}; if you trust it, add it "
                         "with `ssh-keyscan -p {port} {host} >> {known_hosts}`, or set "
                         "`insecure_skip_host_key_check: true` on the context (not recommended)")
HINT_HOST_KEY_CHANGED = ("{known_hosts} holds a different key for {host}:{port}: the host was reinstalled "
                         "or someone is intercepting the connection. If the change is expected, remove "
                         "the old key with `ssh-keygen -R '[{host}]:{port}' -f {known_hosts}` and add the "
                         "new one with `ssh-keyscan -p {port} {host} >> {known_hosts}`")
HINT_AUTH = ("check `user:` and `key:` of the context (or load the key into ssh-agent, or name an "
             "environment variable holding the password in `password_env:`); try "
             "`ssh -i KEY -p {port} {user}@{host} true`")
HINT_REFUSED = "nothing listens on {host}:{port}: is sshd running, and is `port:` right?"
HINT_TIMEOUT = "no answer from {host}:{port} within {timeout}s: check the host, a firewall, or `jump:`"
HINT_DNS = "the name {host} does not resolve: check `host:` (or the HostName of an ssh_config alias)"
HINT_NO_PYTHON = ("{python!r} is not runnable on {host}: running segments with plain exec (no agent: "
                  "no per-step stderr, no remote checksums); set `python:` to a Python 3.8+ on the host")

#: Read window for asyncssh channels: downloads reach 0.9-1.0x OpenSSH at <= 2 MiB, slower above.
WINDOW = 2 * 1024 * 1024

#: A remote exit status of the boot command that means "no such interpreter" (sh: 127, 126).
NO_PYTHON_STATUSES = (126, 127)

def _expand(path: str | None) -> str | None:
    return os.path.expanduser(path) if path else None


def known_hosts_has(path: str, host: str, port: int) -> bool:
    """True when `path` lists some key for host:port (so a refusal means the key *changed*)."""
    try:
        kh = asyncssh.read_known_hosts(path)
    except (OSError, ValueError):
        return False
    try:
        keys = kh.match(host, "", port)
    except Exception:  # noqa: BLE001 - a malformed file is "no match" here
        return False
    return bool(keys[0] or keys[1])


class _SSHCore:
    """Connection handling shared by the agent-based SSHTarget and its raw-exec fallback."""

    kind = "ssh"

    def __init__(self, name: str, settings: SSHSettings) -> None:
        self.name = name
        self.settings = settings
        self.info = ConnectInfo(transport="asyncssh")
        self.conn: asyncssh.SSHClientConnection | None = None
        self.jump_conn: asyncssh.SSHClientConnection | None = None
        self.mux: OpenSSHMaster | None = None
        self.mux_error: str | None = None
        self.stream_stats: list[StreamStats] = []
        self.path_totals: dict[str, dict[str, int]] = {}
        self._contexts: Any = None
        self._lock = asyncio.Lock()
        self._mux_lock = asyncio.Lock()
        self._warned = False

    # ------------------------------------------------------------------ settings / contexts
    def bind_contexts(self, contexts: Any) -> None:
        """Called by Contexts.make_target: lets `jump:` name another context."""
        self._contexts = contexts

    def _jump_target(self) -> _SSHCore | None:
        j = self.settings.jump
        if j and self._contexts is not None and j in self._contexts.names():
            t = self._contexts.make_target(j)
            if not isinstance(t, _SSHCore):
                raise TargetError(f"jump context {j!r} is not an ssh context", target=self.name)
            return t
        return None

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def port(self) -> int:
        return self.settings.port or 22

    def _ssh_config(self) -> list[str]:
        path = _expand(self.settings.ssh_config)
        return [path] if path and os.path.isfile(path) else []

    def connect_options(self) -> dict[str, Any]:
        """Keyword arguments for asyncssh.connect built from the settings."""
        s = self.settings
        kh = _expand(s.known_hosts) or ""
        opts: dict[str, Any] = {
            "config": self._ssh_config(),
            "connect_timeout": s.connect_timeout,
            "login_timeout": s.connect_timeout,
            "encryption_algs": list(dict.fromkeys(
                list(s.ciphers) + [a.decode() for a in asyncssh.encryption.get_default_encryption_algs()])),
            "compression_algs": ["zlib@openssh.com", "zlib", "none"] if s.compression else ["none"],
            "known_hosts": None if s.insecure_skip_host_key_check
            else (kh if os.path.isfile(kh) else asyncssh.import_known_hosts("")),
            "window": WINDOW,
        }
        if s.user:
            opts["username"] = s.user
        if s.port:
            opts["port"] = s.port
        if s.key:
            key = _expand(s.key) or ""
            if not os.path.isfile(key):
                raise AuthError(f"key file not found: {key}", target=self.name,
                                hint="set `key:` to a private key file, or remove it to use ssh-agent")
            opts["client_keys"] = [key]
        if s.password_env:
            pw = os.environ.get(s.password_env)
            if pw is not None:
                opts["password"] = pw
        return opts

    # ------------------------------------------------------------------ connect
    async def connect(self) -> asyncssh.SSHClientConnection:
        """The one asyncssh connection of this target (opened on first use, then reused)."""
        async with self._lock:
            if self.conn is not None:
                return self.conn
            t0 = time.monotonic()
            opts = self.connect_options()
            tunnel = await self._open_jump()
            if tunnel is not None:
                opts["tunnel"] = tunnel
            early = preconnect.take(self.host, self.port) if tunnel is None else None
            with self.map_connect_errors():
                if early is not None:       # a TCP connect started before asyncssh was imported
                    opts["sock"] = await early.connected()
                self.conn = await asyncio.wait_for(asyncssh.connect(self.host, **opts),
                                                   self.settings.connect_timeout + 1)
            self.info.connect_seconds = time.monotonic() - t0
            self.info.opened_at = time.time()
            return self.conn

    async def _open_jump(self) -> asyncssh.SSHClientConnection | None:
        if not self.settings.jump:
            return None
        jt = self._jump_target()
        if jt is not None:
            return await jt.connect()
        user, host, port = parse_jump(self.settings.jump)
        jump_settings = SSHSettings(**{**asdict(self.settings), "host": host, "port": port,
                                       "user": user or self.settings.user, "jump": None})
        core = _SSHCore(f"{self.name} (jump {self.settings.jump})", jump_settings)
        self.jump_conn = await core.connect()
        return self.jump_conn

    @contextlib.contextmanager
    def map_connect_errors(self) -> Any:
        """Turn asyncssh/OS connect failures into UnreachableError, AuthError or HostKeyError."""
        s = self.settings
        fmt: dict[str, Any] = {"host": self.host, "port": self.port, "user": s.user or "USER",
               "known_hosts": _expand(s.known_hosts), "timeout": s.connect_timeout}
        try:
            yield
        except asyncssh.HostKeyNotVerifiable as exc:
            changed = known_hosts_has(fmt["known_hosts"] or "", self.host, self.port)
            what = "changed" if changed else "unknown"
            hint = (HINT_HOST_KEY_CHANGED if changed else HINT_HOST_KEY_UNKNOWN).format(**fmt)
            raise HostKeyError(f"host key of {self.host}:{self.port} is {what}: refused", target=self.name,
                               hint=hint) from exc
        except asyncssh.PermissionDenied as exc:
            raise AuthError(f"authentication failed for {fmt['user']}@{self.host}:{self.port}",
                            target=self.name, hint=HINT_AUTH.format(**fmt)) from exc
        except (asyncio.TimeoutError, TimeoutError) as exc:
            raise UnreachableError(f"timed out connecting to {self.host}:{self.port}", target=self.name,
                                   hint=HINT_TIMEOUT.format(**fmt)) from exc
        except ConnectionRefusedError as exc:
            raise UnreachableError(f"connection refused by {self.host}:{self.port}", target=self.name,
                                   hint=HINT_REFUSED.format(**fmt)) from exc
        except OSError as exc:
            import socket
            if isinstance(exc, socket.gaierror):
                raise UnreachableError(f"unknown host {self.host}", target=self.name,
                                       hint=HINT_DNS.format(**fmt)) from exc
            raise UnreachableError(f"can't connect to {self.host}:{self.port}: {exc.strerror or exc}",
                                   target=self.name) from exc
        except asyncssh.DisconnectError as exc:
            raise UnreachableError(f"{self.host}:{self.port} closed the connection: {exc.reason}",
                                   target=self.name) from exc
        except asyncssh.Error as exc:
            raise TargetError(f"ssh error with {self.host}:{self.port}: {exc}", target=self.name) from exc

    # ------------------------------------------------------------------ the OpenSSH data plane
    def openssh_args(self) -> list[str]:
        """OpenSSH client options equivalent to the settings (strict host keys, fast cipher, batch)."""
        s = self.settings
        args = ["-F", self._ssh_config()[0] if self._ssh_config() else "/dev/null",
                "-o", "BatchMode=yes" if not s.password_env else "BatchMode=no",
                "-o", f"ConnectTimeout={int(max(1, s.connect_timeout))}",
                "-o", "ServerAliveInterval=15", "-c", ",".join(s.ciphers) or FAST_CIPHER]
        if s.insecure_skip_host_key_check:
            args += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                     "-o", "LogLevel=ERROR"]
        else:
            args += ["-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={_expand(s.known_hosts)}"]
        if s.key:
            args += ["-i", _expand(s.key) or "", "-o", "IdentitiesOnly=yes"]
        if s.port:
            args += ["-p", str(s.port)]
        if s.user:
            args += ["-l", s.user]
        args += ["-o", f"Compression={'yes' if s.compression else 'no'}"]
        if s.jump:
            jt = self._jump_target()
            if jt is not None:
                proxy = ["ssh", *jt.openssh_args(), "-W", "%h:%p", jt.host]
                args += ["-o", "ProxyCommand=" + " ".join(shlex.quote(a) for a in proxy)]
            else:
                args += ["-J", s.jump]
        return args

    def _openssh_env(self) -> dict[str, str] | None:
        """SSH_ASKPASS plumbing so the system ssh can use `password_env` without a terminal."""
        s = self.settings
        if not s.password_env:
            return None
        env = dict(os.environ)
        env.update({"SSH_ASKPASS_REQUIRE": "force", "DISPLAY": env.get("DISPLAY", ":0"),
                    "SSH_ASKPASS": _askpass_script(s.password_env)})
        return env

    async def mux_master(self) -> OpenSSHMaster | None:
        """The ControlMaster of this target (started on first bulk segment), or None if unusable."""
        async with self._mux_lock:
            if self.mux is not None and self.mux.alive():
                return self.mux
            if self.mux_error is not None or not OpenSSHMaster.available():
                return None
            m = OpenSSHMaster(self.openssh_args(), self.host, self._openssh_env())
            try:
                await m.start(self.settings.connect_timeout + 2)
            except RuntimeError as exc:
                self.mux_error = str(exc)
                return None
            self.mux = m
            return m

    def wants_mux(self, io: SegmentIO) -> bool:
        """The data-plane policy for one segment (see the module docstring)."""
        plane = self.settings.data_plane
        hint = getattr(io, "bulk", None)        # the engine may say so explicitly
        if plane == "agent" or hint is False:
            return False
        if plane == "openssh" or hint is True:
            return True
        return any(_is_stream_fd(fd) for fd in (io.stdin, io.stdout))

    async def kill_remote_group(self, pgid: int) -> None:
        """SIGKILL a remote process group over the asyncssh connection, else over the mux master."""
        command = f"kill -KILL -{int(pgid)}"
        with contextlib.suppress(Exception):
            if self.conn is not None:
                await asyncio.wait_for(self.conn.run(command, check=False), 5)
            elif self.mux is not None and self.mux.alive():
                proc = await asyncio.create_subprocess_exec(
                    *self.mux.session_argv(command, no_stdin=True), stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL, env=self.mux.env)
                await asyncio.wait_for(proc.wait(), 5)

    async def run_mux(self, master: OpenSSHMaster, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Run a segment as an OpenSSH mux session; record it as an `openssh-mux` stream."""
        stats = StreamStats(path="openssh-mux", bytes_in=_file_size(io.stdin))
        outcomes = await run_over_mux(master, procs, io.stdin, io.stdout, list(io.stderr),
                                      self.kill_remote_group)
        self._record(stats)
        return outcomes

    # ------------------------------------------------------------------ raw exec (no Python)
    async def run_raw(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Run a segment as one remote `sh` script over an asyncssh exec channel."""
        conn = await self.connect()
        nonce = new_nonce()
        router = StderrRouter(list(io.stderr))
        parser = StatusParser(nonce, len(procs), on_line=router.write_to)
        stats = StreamStats(path="raw-exec")
        started = time.time()
        stdin = io.stdin if io.stdin is not None else asyncssh.DEVNULL
        stdout = io.stdout if io.stdout is not None else asyncssh.DEVNULL
        proc = None
        try:
            proc = await conn.create_process(remote_command(segment_script(procs, nonce,
                                                                           tag_stderr=router.wants_split)),
                                             encoding=None, stdin=stdin, stdout=stdout,
                                             stderr=asyncssh.PIPE)
            async for chunk in _iter_reader(proc.stderr):
                router.write(parser.feed(chunk))
            await proc.wait()
        except asyncio.CancelledError:
            if parser.pid:
                await self.kill_remote_group(parser.pid)
            if proc is not None:
                proc.close()
            raise
        except asyncssh.Error as exc:
            raise TargetError(f"exec failed on {self.host}: {exc}", target=self.name) from exc
        finally:
            router.write(parser.flush())
            router.close()
            for fd in (io.stdin, io.stdout):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self._record(stats)
        return parser.outcomes(procs, started, time.time())

    # ------------------------------------------------------------------ records
    def _record(self, stats: StreamStats) -> None:
        self.stream_stats.append(stats)
        tally(self.path_totals, stats)

    def warn_fallback(self, reason: str) -> None:
        """Say once that this target runs without the agent."""
        if not self._warned:
            self._warned = True
            self.info.fallback = reason
            print(f"clipipe: warning: {self.name}: {reason}", file=sys.stderr)

    async def close_connections(self) -> None:
        """Close the mux master, the asyncssh connection and a jump connection we own."""
        if self.mux is not None:
            await self.mux.close()          # kept: its figures stay in describe(); a new use restarts it
        for attr in ("conn", "jump_conn"):
            c = getattr(self, attr)
            if c is not None:
                c.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(c.wait_closed(), 5)
                setattr(self, attr, None)

    def describe_connection(self) -> dict[str, Any]:
        """Settings and measured facts for `context show` and the operation record."""
        s = self.settings
        mux_only = self.mux is not None and not self.info.connect_seconds    # no asyncssh connection
        return {
            "name": self.name, "type": "ssh",
            "address": f"ssh://{s.user + '@' if s.user else ''}{s.host}:{self.port}",
            "connect_seconds": round(self.mux.connect_seconds if self.mux is not None and mux_only
                                     else self.info.connect_seconds, 4),
            "transport": "openssh" if mux_only else self.info.transport,
            "agent": dict(self.info.agent),
            "fallback": self.info.fallback,
            "data_plane": s.data_plane,
            "openssh_mux": None if self.mux is None else {
                "control_path": self.mux.ctl, "connect_seconds": round(self.mux.connect_seconds, 4),
                "sessions": self.mux.sessions},
            "openssh_mux_error": self.mux_error,
            "streams": {k: dict(v) for k, v in self.path_totals.items()},
        }


def _is_stream_fd(fd: int | None) -> bool:
    """True for a controller fd that can carry a bulk stream (pipe, file, socket)."""
    if fd is None:
        return False
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISREG(mode) or stat.S_ISSOCK(mode)


def _file_size(fd: int | None) -> int:
    if fd is None:
        return 0
    try:
        st = os.fstat(fd)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


async def _iter_reader(reader: Any) -> AsyncIterator[bytes]:
    while True:
        chunk = await reader.read(65536)
        if not chunk:
            return
        yield chunk


_ASKPASS_DIR: str | None = None


def _askpass_script(var: str) -> str:
    """A tiny SSH_ASKPASS program printing $var (the password never touches a file)."""
    global _ASKPASS_DIR
    import tempfile
    if _ASKPASS_DIR is None:
        _ASKPASS_DIR = tempfile.mkdtemp(prefix="clipipe-askpass-")
    path = os.path.join(_ASKPASS_DIR, f"askpass-{var}")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f'#!/bin/sh\nprintf "%s\\n" "${var}"\n')
        os.chmod(path, 0o700)
    return path


class _EofOnClose:
    """An asyncssh stdin writer whose close() sends EOF: the agent then shuts down in order."""

    def __init__(self, writer: asyncssh.SSHWriter) -> None:
        self._w = writer

    def write(self, data: bytes) -> None:
        self._w.write(data)

    async def drain(self) -> None:
        await self._w.drain()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._w.write_eof()


_Base: Any = AgentTarget if AgentTarget is not None else object


@register("ssh", SSHSettings)
class SSHTarget(_SSHCore, _Base):
    """Segments on an SSH host: the agent over asyncssh, bulk streams over an OpenSSH mux."""

    kind = "ssh"

    def __init__(self, name: str, settings: SSHSettings) -> None:
        if AgentTarget is not None:
            AgentTarget.__init__(self, name, python=settings.python,
                                 connect_timeout=settings.connect_timeout + 5)
        _SSHCore.__init__(self, name, settings)
        self._boot: Any = None
        self.last_stats: StreamStats | None = None
        self.transport_stderr: bytes = b""

    async def _spawn_transport(self) -> tuple[Any, Any, Any]:
        """Run the agent's boot command over an exec channel of the one asyncssh connection."""
        conn = await self.connect()
        proc = await conn.create_process(self.boot_command(), encoding=None)
        self._boot = proc

        async def collect() -> None:
            async for chunk in _iter_reader(proc.stderr):
                self.transport_stderr = (self.transport_stderr + chunk)[-8192:]

        task = asyncio.create_task(collect())

        async def closer() -> None:
            with contextlib.suppress(Exception):
                proc.stdin.write_eof()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except (asyncio.TimeoutError, asyncssh.Error):
                proc.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 2)

        return proc.stdout, _EofOnClose(proc.stdin), closer

    async def open(self) -> None:
        """Connect (once): unreachable hosts, auth and host keys show here; the agent boots later.

        The agent boots when a segment first needs it (`ensure_agent`): an ad-hoc command takes a plain
        exec channel and a bulk stream the OpenSSH mux, neither of which needs it.
        """
        await self.connect()

    async def ensure_agent(self) -> None:
        """Connect, then boot the agent (once); with no usable Python, fall back to raw exec."""
        await self.connect()
        if self.info.fallback is not None or AgentTarget is None:
            if AgentTarget is None:
                self.warn_fallback("the agent is not available in this build: using plain exec")
            return
        try:
            await AgentTarget.open(self)
        except (TargetError, OSError, EOFError, asyncio.IncompleteReadError):
            status = await self._boot_status()
            err = self.transport_stderr.decode(errors="replace")
            if status in NO_PYTHON_STATUSES or "not found" in err or "No such file" in err:
                self.warn_fallback(HINT_NO_PYTHON.format(python=self.settings.python, host=self.host))
                return
            raise
        if self.connect_info is not None:
            self.info.agent = dict(self.connect_info.agent)
            self.info.transport = "asyncssh+agent"

    async def _boot_status(self) -> int | None:
        proc = self._boot
        if proc is None:
            return None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.wait(), 3)
        return proc.exit_status

    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Run a segment by the OpenSSH mux, the agent or raw exec (see the module docstring).

        A bulk segment needs neither the agent nor the asyncssh connection: when the mux master comes
        up, nothing else is opened for it (the agent boots when a later segment first needs it). When
        the master can't start, the agent path opens the connection and reports why in typed errors.
        """
        if self.wants_plain(procs, io):
            return await self.run_plain(procs[0], io)
        try:
            master = await self.mux_master() if self.wants_mux(io) else None
            if master is None:
                await self.ensure_agent()
        except BaseException:
            io.close()
            raise
        if master is not None:
            outcomes = await self.run_mux(master, procs, io)
            self.last_stats = self.stream_stats[-1]
            return outcomes
        if self.info.fallback is not None:
            outcomes = await self.run_raw(procs, io)
            self.last_stats = self.stream_stats[-1]
            return outcomes
        outcomes, result = await AgentTarget.run_segment_detailed(self, procs, io)
        stats = StreamStats(bytes_in=result.bytes_in, bytes_out=result.bytes_out, path="agent")
        self._record(stats)
        self.last_stats = stats
        return outcomes

    def wants_plain(self, procs: list[ProcSpec], io: SegmentIO) -> bool:
        """One command with no stdin and no stream, the agent not booted yet: a plain exec channel.

        An ad-hoc command on one host (`clipipe run -c web "df -h"`) needs nothing from the agent, whose
        boot costs a remote Python start; the fleet's plain exec runs it on the connection's own channel.
        """
        return (self.settings.data_plane == "auto" and len(procs) == 1 and io.stdin is None
                and io.bulk is False and self.session is None and self.info.fallback is None)

    async def run_plain(self, proc: ProcSpec, io: SegmentIO) -> list[ProcOutcome]:
        """Run one command over a plain exec channel (see `clipipe.targets.plainexec`)."""
        from clipipe.targets import plainexec

        stats = StreamStats(path="exec")
        outcome = ProcOutcome(proc.name, started=time.time())
        dest = {False: io.stdout, True: io.stderr[0] if io.stderr else None}

        def on_data(chunk: bytes, err: bool) -> None:
            if not err:
                stats.bytes_out += len(chunk)
            fd = dest[err]
            if fd is not None:
                write_all(fd, chunk)        # blocking: a slow reader holds the channel's window

        try:
            result = await plainexec.run_plain(self, proc_line(proc), on_data)
        finally:
            io.close()
        outcome.exit_code, outcome.signal, outcome.ended = result.exit_code, result.signal, time.time()
        self._record(stats)
        self.last_stats = stats
        return [outcome]

    def remote_tee_blocker(self, bulk: bool) -> str | None:
        """Why a tee can't run on this host by its agent (None: it can): no agent, or bulk forced onto the mux."""
        if self.info.fallback is not None or AgentTarget is None:
            return f"no agent on {self.host} (plain exec)"
        if bulk and self.settings.data_plane == "openssh":
            return "data_plane: openssh sends bulk streams through `ssh -S`, which runs no agent"
        return AgentTarget.remote_tee_blocker(self, bulk)

    async def run_tee_segment(self, procs: list[ProcSpec], io: SegmentIO, tee: Any,
                              counter: Any = None) -> tuple[list[ProcOutcome], Any]:
        """A segment whose tee runs on this host by the agent; recorded as an `agent-tee` stream."""
        try:
            await self.ensure_agent()
        except BaseException:
            io.close()
            SegmentIO(None, None, [b.fd for b in tee.branches]).close()
            raise
        outcomes, result = await AgentTarget.run_tee_segment(self, procs, io, tee, counter)
        self._record(StreamStats(bytes_in=result.bytes_in, bytes_out=result.bytes_out, path="agent-tee"))
        self.last_stats = self.stream_stats[-1]
        return outcomes, result

    async def close(self) -> None:
        """Stop the agent (it kills what it started), the mux master and the connection."""
        if AgentTarget is not None:
            with contextlib.suppress(Exception):
                await AgentTarget.close(self)
        await self.close_connections()

    def port_forward(self, remote_port: int, local_port: int = 0, *, remote_host: str = "127.0.0.1",
                     **options: Any) -> Any:
        """A probed, self-healing forward from a local port to remote_host:remote_port (seen from the host)."""
        from clipipe.targets.portforward import Forward, SSHTunnel

        return Forward(SSHTunnel(self, remote_host, remote_port), local_port=local_port, **options)

    def describe(self) -> dict[str, Any]:
        """Connect time, transport, agent HELLO, fallback and bytes per stream path."""
        d = self.describe_connection()
        d["python"] = self.settings.python
        return d


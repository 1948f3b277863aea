"""Segments over plain SSH exec: the OpenSSH ControlMaster data plane and the no-Python fallback.

Both run a whole segment as one remote `sh` script (`segment_script`) that
- joins the procs with the remote kernel's pipes and reports each proc's exit status as a marker line
  `<nonce>:<index>:<status>` on stderr (no PIPESTATUS: each proc runs in its own brace group);
- reports its own pid (= its process group: sshd starts each session in a new session) as
  `<nonce>:pid:<pid>`, so a cancelled segment can be killed with `kill -KILL -PGID`;
- runs a watchdog that SIGKILLs the whole group once the script is reparented, i.e. when the sshd
  session that started it is gone (controller killed, network dropped). sshd itself does not kill the
  commands of a session without a pty when the connection drops; this guard is what leaves no orphans.

The mux path hands the controller's fds to `ssh -S CTL host SCRIPT` as its stdin/stdout, so bulk bytes
move between kernel and OpenSSH only (measured 1.0x plain `ssh`); only stderr passes through Python.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from clipipe.aiopipe import read_chunks
from clipipe.targets.base import ProcOutcome, ProcSpec

#: Seconds between watchdog checks of the script's parent: how long a remote orphan can outlive its
#: controller; each check is a `sleep` fork, negligible at this rate.
WATCHDOG_PERIOD = 1

#: linux/prctl.h: deliver a signal to the ssh master when the controller that started it dies.
PR_SET_PDEATHSIG = 1

#: The cipher OpenSSH and asyncssh both do fastest here (AES-NI); asyncssh's chacha20 runs at 0.19x.
FAST_CIPHER = "aes128-gcm@openssh.com"

# The guard: remember who started us; poll until our parent changes; then kill our process group.
# /proc read avoids a fork per check; `ps` is the portable fallback.
_GUARD = """\
p=$PPID
( trap '' HUP
  while sleep {period}; do
    if [ -r /proc/$$/stat ]; then read -r _ _ _ pp _ < /proc/$$/stat; else pp=$(ps -o ppid= -p $$); fi
    [ $pp -eq $p ] 2>/dev/null || break
  done
  kill -KILL 0 ) </dev/null >/dev/null 2>&1 9>&- &
w=$!
"""


def proc_line(p: ProcSpec) -> str:
    """One proc as a subshell: its cwd and env, then its command under a fresh `sh -c`."""
    parts = []
    if p.cwd:
        parts.append(f"cd {shlex.quote(p.cwd)} || exit 126")
    for k, v in p.env.items():
        parts.append(f"export {k}={shlex.quote(v)}")
    parts.append(f"exec sh -c {shlex.quote(p.command)}")
    return "(" + "; ".join(parts) + ")"


def _tagged_stage(i: int, p: ProcSpec, nonce: str) -> str:
    """A stage whose stderr lines reach fd 9 as `<nonce>:e<i>:<line>` (its stdout goes on, via fd 3)."""
    tagger = f"awk -v p={nonce}:e{i}: '{{ print p $0; fflush() }}' >&9"
    return f"{{ {{ {proc_line(p)} 2>&1 >&3 3>&-; echo {nonce}:{i}:$? >&9; }} | {tagger}; }} 3>&1"


def segment_script(procs: list[ProcSpec], nonce: str, guard: bool = True, tag_stderr: bool = False) -> str:
    """The remote `sh` script that runs `procs` joined by pipes and reports statuses on fd 9 (stderr).

    With `tag_stderr`, each proc's stderr lines are tagged with its index so the one merged SSH stderr
    can be split back per step (see StatusParser.on_line); where the host has no awk the stderrs
    arrive merged, as without tagging. A last stderr line without newline gets one.
    """
    lines = ["exec 9>&2", f"echo {nonce}:pid:$$ >&9"]
    if guard:
        lines.append(_GUARD.format(period=WATCHDOG_PERIOD))
    plain = " | ".join(f"{{ {proc_line(p)}; echo {nonce}:{i}:$? >&9; }}" for i, p in enumerate(procs))
    if tag_stderr:
        tagged = " | ".join(_tagged_stage(i, p, nonce) for i, p in enumerate(procs))
        lines.append(f"if command -v awk >/dev/null 2>&1; then\n{tagged}\nelse\n{plain}\nfi")
    else:
        lines.append(plain)
    if guard:
        lines.append("kill $w 2>/dev/null")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def remote_command(script: str) -> str:
    """What to send as the SSH exec command: the login shell execs a POSIX sh running `script`.

    `exec` makes sh the direct child of the sshd session, which the guard watches.
    """
    return f"exec sh -c {shlex.quote(script)}"


def new_nonce() -> str:
    """A marker prefix that can't plausibly appear in a command's own stderr."""
    return "CLIPIPE-" + secrets.token_hex(8)


@dataclass
class StatusParser:
    """Splits a remote stderr stream into proc output and `<nonce>:<what>:<value>` marker lines."""

    nonce: str
    n: int
    statuses: dict[int, int] = field(default_factory=dict)
    pid: int | None = None
    on_line: Callable[[int, bytes], None] | None = None   #: receives proc i's tagged stderr lines
    _buf: bytes = b""

    def feed(self, data: bytes) -> bytes:
        """Consume stderr bytes; return the bytes that are the procs' own stderr."""
        token = self.nonce.encode() + b":"
        self._buf += data
        out = bytearray()
        while True:
            i = self._buf.find(token)
            if i < 0:
                # keep a tail that could be the start of a token
                keep = len(token) - 1
                cut = max(0, len(self._buf) - keep)
                tail = self._buf[cut:]
                if not any(token.startswith(tail[j:]) for j in range(len(tail))):
                    cut = len(self._buf)
                out += self._buf[:cut]
                self._buf = self._buf[cut:]
                return bytes(out)
            j = self._buf.find(b"\n", i)
            if j < 0:
                out += self._buf[:i]
                self._buf = self._buf[i:]
                return bytes(out)
            out += self._buf[:i]
            body = self._buf[i + len(token):j]
            self._buf = self._buf[j + 1:]
            index, sep, line = body[1:].partition(b":")
            if body.startswith(b"e") and sep and index.isdigit() and int(index) < self.n:
                if self.on_line is not None:
                    self.on_line(int(index), line + b"\n")
                continue
            self._marker(body.decode(errors="replace"))

    def flush(self) -> bytes:
        """Whatever is left at EOF (a partial line that was not a marker)."""
        rest, self._buf = self._buf, b""
        return rest

    def _marker(self, body: str) -> None:
        what, _, value = body.partition(":")
        try:
            num = int(value.strip())
        except ValueError:
            return
        if what == "pid":
            self.pid = num
        elif what.isdigit() and int(what) < self.n:
            self.statuses[int(what)] = num

    def outcomes(self, procs: list[ProcSpec], started: float, ended: float) -> list[ProcOutcome]:
        """One ProcOutcome per proc from the statuses seen (a shell's 128+N means signal N)."""
        result = []
        for i, p in enumerate(procs):
            o = ProcOutcome(p.name, started=started, ended=ended)
            st = self.statuses.get(i)
            if st is None:
                o.error = "no exit status reported (connection lost or segment killed)"
            elif 128 < st <= 128 + 64:
                o.signal = st - 128
            else:
                o.exit_code = st
            result.append(o)
        return result


def write_all(fd: int, data: bytes) -> None:
    """Write all of `data` to a (blocking) fd, ignoring a reader that has gone."""
    try:
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
    except (BrokenPipeError, OSError):
        pass


class StderrRouter:
    """Sends the procs' merged remote stderr to their controller fds.

    Over one SSH channel the procs' stderrs arrive merged: lines the segment script tagged with a
    proc's index (`write_to`) go to that proc's fd; untagged bytes go to the first proc's fd that is
    not None (with one proc, exactly where they belong).
    """

    def __init__(self, fds: list[int | None]) -> None:
        self.fds = fds
        self.dest = next((fd for fd in fds if fd is not None), None)

    def write(self, data: bytes) -> None:
        """Forward proc stderr bytes."""
        if data and self.dest is not None:
            write_all(self.dest, data)

    def write_to(self, i: int, data: bytes) -> None:
        """Forward a line known to be proc i's stderr to proc i's fd (None: discarded)."""
        fd = self.fds[i] if i < len(self.fds) else None
        if fd is not None:
            write_all(fd, data)

    @property
    def wants_split(self) -> bool:
        """True when the procs' stderrs go to different places (worth tagging them remotely)."""
        return self.dest is not None and len(set(self.fds)) > 1

    def close(self) -> None:
        """Close every stderr fd (the target owns them)."""
        for fd in self.fds:
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)


def _pdeathsig() -> None:
    """preexec_fn: the ssh master gets SIGTERM when the controller (its parent thread) dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


DIR_PREFIX = "clipipe-ssh-"


def remove_stale_dirs() -> None:
    """Delete control dirs left by controllers that were killed (their owner pid is gone)."""
    base = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(base) if n.startswith(DIR_PREFIX)]
    except OSError:
        return
    for n in names:
        d = os.path.join(base, n)
        try:
            with open(os.path.join(d, "owner")) as f:
                pid = int(f.read().strip())
            if os.stat(d).st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(d, ignore_errors=True)
        except (OSError, ValueError):
            continue


class OpenSSHMaster:
    """An OpenSSH ControlMaster (`ssh -M -N`) owned by this controller, and sessions through it."""

    def __init__(self, base_args: list[str], dest: str, env: dict[str, str] | None = None) -> None:
        self.base_args = base_args          #: every option but -S/-M and the destination
        self.dest = dest
        self.env = env
        remove_stale_dirs()
        self.dir = tempfile.mkdtemp(prefix=DIR_PREFIX)
        with open(os.path.join(self.dir, "owner"), "w") as f:
            f.write(str(os.getpid()))
        self.ctl = os.path.join(self.dir, "ctl")
        self.proc: subprocess.Popen[bytes] | None = None
        self.connect_seconds = 0.0
        self.sessions = 0

    @staticmethod
    def available() -> str | None:
        """The system ssh client's path, or None."""
        return shutil.which("ssh")

    async def start(self, timeout: float) -> None:
        """Start the master and wait for its control socket; raise RuntimeError(stderr) on failure."""
        t0 = time.monotonic()
        err_path = os.path.join(self.dir, "master.err")
        argv = ["ssh", "-M", "-N", "-S", self.ctl, "-o", "ControlPersist=no", *self.base_args, self.dest]
        with open(err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True, env=self.env,
                                         preexec_fn=_pdeathsig)
        deadline = t0 + timeout
        while not os.path.exists(self.ctl):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                await self.close()
                with open(err_path, "rb") as f:
                    msg = f.read().decode(errors="replace").strip()
                raise RuntimeError(msg or "ssh master did not start in time")
            await asyncio.sleep(0.01)
        self.connect_seconds = time.monotonic() - t0

    def alive(self) -> bool:
        """True while the master runs."""
        return self.proc is not None and self.proc.poll() is None

    def session_argv(self, command: str, no_stdin: bool) -> list[str]:
        """`ssh -S CTL host COMMAND` (plus the full options, in case the socket vanished)."""
        return ["ssh", "-S", self.ctl, "-o", "ControlMaster=no", "-T", "-e", "none",
                *(["-n"] if no_stdin else []), *self.base_args, self.dest, command]

    async def close(self) -> None:
        """Stop the master (its sessions end; remote guards kill what is left) and remove CTL."""
        p = self.proc
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            for _ in range(100):
                if p.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


async def run_over_mux(master: OpenSSHMaster, procs: list[ProcSpec], stdin: int | None,
                       stdout: int | None, stderr: list[int | None],
                       kill_remote: Callable[[int], object]) -> list[ProcOutcome]:
    """Run a segment as one `ssh -S` session whose stdin/stdout are the controller's own fds."""
    nonce = new_nonce()
    router = StderrRouter(stderr)
    parser = StatusParser(nonce, len(procs), on_line=router.write_to)
    devnull = os.open(os.devnull, os.O_RDWR)
    r_err, w_err = os.pipe()
    started = time.time()
    proc = None
    try:
        script = segment_script(procs, nonce, tag_stderr=router.wants_split)
        argv = master.session_argv(remote_command(script), stdin is None)
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=stdin if stdin is not None else devnull,
            stdout=stdout if stdout is not None else devnull, stderr=w_err, env=master.env,
            start_new_session=True)
        master.sessions += 1
    finally:
        os.close(w_err)
        for fd in (stdin, stdout, devnull):     # the ssh client holds them now; we must not
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
    try:
        await _pump_stderr(r_err, parser, router)
        await proc.wait()
    except asyncio.CancelledError:
        if parser.pid:
            await _quietly(kill_remote(parser.pid))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    finally:
        with contextlib.suppress(OSError):
            os.close(r_err)
        router.write(parser.flush())
        router.close()
    outcomes = parser.outcomes(procs, started, time.time())
    if proc.returncode == 255 and not parser.statuses:
        for o in outcomes:
            o.error = "ssh session failed (exit 255)"
    return outcomes


async def _quietly(aw: object) -> None:
    if asyncio.iscoroutine(aw) or isinstance(aw, asyncio.Future):
        with contextlib.suppress(Exception):
            await asyncio.wait_for(aw, 5)


async def _pump_stderr(fd: int, parser: StatusParser, router: StderrRouter) -> None:
    """Read stderr from a pipe until EOF without blocking the loop; route output, parse markers."""
    async for data in read_chunks(fd):
        router.write(parser.feed(data))

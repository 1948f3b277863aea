"""The local target: segments run as child processes joined by kernel pipes."""
from __future__ import annotations

import asyncio
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from clipipe.targets.base import ProcOutcome, ProcSpec, SegmentIO, register

#: Seconds a process group gets between SIGTERM and SIGKILL when a run is cancelled.
KILL_GRACE = 2.0


@dataclass
class LocalSettings:
    """Settings of a `type: local` context."""

    shell: str = "/bin/sh"      #: the shell that runs each command (`-c`)
    cwd: str | None = None      #: working directory of the commands (default: clipipe's own)


def _close(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def kill_group(pid: int, sig: int) -> None:
    """Send `sig` to the process group led by `pid`, ignoring groups that are gone."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def terminate(proc: asyncio.subprocess.Process, grace: float = KILL_GRACE) -> None:
    """SIGTERM the process's group, then SIGKILL it after `grace` seconds; reap it."""
    if proc.returncode is not None:
        kill_group(proc.pid, signal.SIGKILL)  # the leader is gone; its children may not be
        return
    kill_group(proc.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    except asyncio.TimeoutError:
        pass
    kill_group(proc.pid, signal.SIGKILL)
    try:
        await asyncio.wait_for(asyncio.shield(proc.wait()), grace)
    except asyncio.TimeoutError:
        pass


class LocalTarget:
    """Runs segments on this machine; Python stays off the byte path."""

    kind = "local"

    def __init__(self, name: str = "local", settings: LocalSettings | None = None) -> None:
        self.name = name
        self.settings = settings or LocalSettings()
        self.connect_seconds = 0.0

    async def open(self) -> None:
        """Nothing to connect."""

    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Start the procs joined by pipes, each in its own process group; wait for all."""
        outcomes = [ProcOutcome(name=p.name) for p in procs]
        started: list[asyncio.subprocess.Process | None] = [None] * len(procs)
        fds_to_close: list[int | None] = [io.stdin, io.stdout, *io.stderr]
        devnull = os.open(os.devnull, os.O_RDWR)
        fds_to_close.append(devnull)
        try:
            prev_read: int | None = io.stdin if io.stdin is not None else devnull
            for i, spec in enumerate(procs):
                last = i == len(procs) - 1
                if last:
                    out_fd = io.stdout if io.stdout is not None else devnull
                    next_read = None
                else:
                    next_read, out_fd = os.pipe()
                    fds_to_close.extend([next_read, out_fd])
                err = io.stderr[i] if i < len(io.stderr) and io.stderr[i] is not None else devnull
                env = {**os.environ, **spec.env} if spec.env else None
                outcomes[i].started = time.time()
                try:
                    started[i] = await asyncio.create_subprocess_exec(
                        self.settings.shell, "-c", spec.command, stdin=prev_read, stdout=out_fd,
                        stderr=err, env=env, cwd=spec.cwd or self.settings.cwd, start_new_session=True)
                except OSError as exc:
                    outcomes[i].error = f"can't start: {exc}"
                    outcomes[i].ended = time.time()
                if not last:
                    _close(out_fd)
                    fds_to_close.remove(out_fd)
                if prev_read is not None and prev_read not in (io.stdin, devnull):
                    _close(prev_read)
                    fds_to_close.remove(prev_read)
                prev_read = next_read
            # The children hold their own copies now: close ours so EOF and EPIPE propagate.
            for fd in list(fds_to_close):
                _close(fd)
            fds_to_close.clear()

            async def wait_one(i: int, proc: asyncio.subprocess.Process) -> None:
                rc = await proc.wait()
                outcomes[i].ended = time.time()
                if rc < 0:
                    outcomes[i].signal = -rc
                else:
                    outcomes[i].exit_code = rc

            await asyncio.gather(*(wait_one(i, p) for i, p in enumerate(started) if p is not None))
            for p in started:  # a finished leader may leave background children in its group
                if p is not None:
                    kill_group(p.pid, signal.SIGKILL)
            return outcomes
        except asyncio.CancelledError:
            await asyncio.gather(*(terminate(p) for p in started if p is not None))
            raise
        finally:
            for fd in fds_to_close:
                _close(fd)

    async def close(self) -> None:
        """Nothing to release."""

    def describe(self) -> dict[str, Any]:
        """Type and shell."""
        return {"name": self.name, "type": "local", "shell": self.settings.shell, "connection_time_ms": 0}


@register("local", LocalSettings)
def _make(name: str, settings: Any) -> LocalTarget:
    return LocalTarget(name, settings)

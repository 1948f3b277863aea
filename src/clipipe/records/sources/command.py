"""The `command` source: a command's stdout, parsed as a JSON message stream, through a bounded buffer.

The command runs on a target (this machine by default, or a `context:` of contexts.yaml: SSH or
Kubernetes, through the same `run_segment` as shell steps, in its own process group). Two threads
read its stdout and stderr pipes: the stdout reader parses (records/jsonstream.py) and `put`s the
messages into the buffer (records/buffer.py), so the buffer's policy acts on the producer: with
`block` the reader stops reading and the pipe fills; with the drop policies the reader keeps the
pipe drained however slow the steps are. The pipeline takes batches from the buffer on the loop.

Ends: the run fails when the command exits non-zero or is killed — after every message read
before was handled (the output then aborts, so no partial result looks complete), with the tail of
its stderr. When the pipeline stops early (a step fails, Ctrl-C) the process group is killed.

Latency is per message, from the read that brought it to the moment the pipeline asks for the next
batch (it has then written this one: the engine keeps one batch in flight).
"""
from __future__ import annotations

import asyncio
import fcntl
import os
import shlex
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncGenerator, Literal

from clipipe.errors import RecordError, SpecError, TargetError, UserError
from clipipe.records.buffer import MessageBuffer
from clipipe.records.core import Batch, Source
from clipipe.records.jsonstream import ParseError, StreamParser
from clipipe.records.registry import option, register
from clipipe.records.streamstats import LatencyHistogram, parse_size, status_line
from clipipe.spec.parse import parse_duration

#: bytes per read of the command's stdout: a few thousand events, few enough to keep latency low
READ_SIZE = 256 << 10
#: the stdout pipe is enlarged to this (Linux F_SETPIPE_SZ): fewer wake-ups of producer and reader
PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = 1031
#: stderr kept for the error message of a failed command
STDERR_TAIL = 8 << 10
#: parse errors printed as warnings; the rest are counted (and sampled in the metrics)
MAX_PRINTED = 20
MAX_SAMPLES = 20
#: seconds the reading threads get to finish once the process is gone
JOIN_S = 5.0


@dataclass
class BufferConfig:
    size: int = option("Messages held between the reader and the steps.", 1000)
    policy: Literal["block", "drop_oldest", "drop_newest"] = option(
        "When it is full: block (stop reading: the producer waits on its pipe, nothing is lost), "
        "drop_oldest (drop the oldest held messages) or drop_newest (drop the incoming ones).", "block")
    max_size: int | None = option("Adaptive: a buffer that fills while the consumer keeps up on average "
                                  "doubles up to this many messages (a burst), and halves back each "
                                  "time it is emptied. Default: no growth.", None)
    max_bytes: int | str = option("Bound on the message text held (bytes, or 64MiB style).", "64MiB")
    high_water: float = option("Fraction of the capacity above which the buffer counts as high.", 0.8)
    slow_consumer_after: float | str = option(
        "A buffer high for this long flags a slow consumer (a warning and a metric).", "5s")


@dataclass
class CommandConfig:
    command: str | list[str] = option(
        "The command whose stdout is the JSON stream: a shell command line (`{{.param}}` values are "
        "shell-quoted), or a list of arguments run as is.", examples=["my-cli --output-format stream-json"])
    context: str | None = option("Run it on this context of contexts.yaml (ssh, kubernetes); "
                                 "default: this machine.", None, examples=["build-host"])
    buffer: BufferConfig = option("The buffer between the reader and the steps.", factory=BufferConfig)
    max_message_bytes: int | str = option("A longer message is skipped (an error is counted); bounds memory.",
                                          "8MiB")
    batch_size: int = option("Most messages handed to the steps at once.", 1000)
    env: dict[str, str] = option("Extra environment variables for the command.", factory=dict)
    cwd: str | None = option("Working directory of the command; relative paths and the default are the "
                             "pipeline file's directory (on a remote context: the login directory).", None)
    stderr: Literal["tail", "show"] = option(
        "tail: keep the end of its stderr for the error message; show: also copy it to clipipe's "
        "stderr as it comes.", "tail")
    on_parse_error: Literal["skip", "stop"] = option(
        "skip: count bad input (garbage lines, oversized or truncated messages) and go on; stop: fail.",
        "skip")
    progress: float | str = option("Print a status line this often while it runs (0: never; never with -q).",
                                   "10s")
    summary: bool = option("Print one line of stream figures at the end (not with -q).", True)


@register("source", "command")
class CommandSource(Source):
    """Runs a command and turns its stdout (NDJSON, pretty-printed or back-to-back JSON) into records."""

    summary = "Run a command and read its stdout as a JSON message stream, through a bounded buffer."
    Config = CommandConfig
    shell_keys = ("command",)  # pipeline.load quotes {{.param}} values in these for the shell
    examples = [
        """source:
  type: command
  command: "my-cli --output-format stream-json"
  buffer: {size: 1000, policy: block}
  max_message_bytes: 8MiB
""",
        """source:
  type: command
  command: [python3, gen.py, --count, "1000"]
  buffer: {size: 500, policy: drop_oldest, max_size: 8000, slow_consumer_after: 2s}
  on_parse_error: stop
  stderr: show
""",
        """source:
  type: command
  context: build-host
  command: "journalctl -o json -f -n 100"
  progress: 30s
""",
    ]

    def __init__(self, config: CommandConfig, ctx: Any, mark: Any) -> None:
        super().__init__(config, ctx, mark)
        b = config.buffer
        where = "command source"
        if isinstance(config.command, list):
            if not config.command:
                raise SpecError(f"{where}: command: an empty list", mark=mark)
            self.cmdline = shlex.join(config.command)
        else:
            if not config.command.strip():
                raise SpecError(f"{where}: command is empty", mark=mark)
            self.cmdline = config.command
        if b.size < 1 or config.batch_size < 1:
            raise SpecError(f"{where}: buffer.size and batch_size must be at least 1", mark=mark)
        if b.max_size is not None and b.max_size < b.size:
            raise SpecError(f"{where}: buffer.max_size must be at least buffer.size", mark=mark)
        if not 0 < b.high_water <= 1:
            raise SpecError(f"{where}: buffer.high_water must be a fraction in (0, 1]", mark=mark)
        self.max_message = parse_size(config.max_message_bytes, mark, f"{where}: max_message_bytes")
        self.max_bytes = parse_size(b.max_bytes, mark, f"{where}: buffer.max_bytes")
        self.slow_after = parse_duration(b.slow_consumer_after, mark, f"{where}: buffer.slow_consumer_after")
        self.progress_s = parse_duration(config.progress, mark, f"{where}: progress")
        self._reset()

    def _reset(self) -> None:
        self.parser = StreamParser(self.max_message)
        self.buffer = MessageBuffer(
            self.config.buffer.size, self.config.buffer.policy, max_size=self.config.buffer.max_size,
            max_bytes=self.max_bytes, high_water=self.config.buffer.high_water, slow_after=self.slow_after)
        self.latency = LatencyHistogram()
        self.delivered = 0
        self.processing_s = 0.0
        self.started = self.ended = 0.0
        self.outcome: Any = None
        self.samples: list[dict[str, Any]] = []
        self._errors: deque[ParseError] = deque(maxlen=1000)  # for printing; all are counted
        self._printed = 0
        self._stderr_tail = bytearray()
        self._threads: list[threading.Thread] = []
        self._task: asyncio.Task[Any] | None = None
        self._target: Any = None
        self._pool: Any = None

    # -- running --------------------------------------------------------------------------------

    async def batches(self) -> AsyncGenerator[Batch, None]:
        self._reset()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            fcntl.fcntl(out_r, _F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:  # not Linux, or above /proc/sys/fs/pipe-max-size: the default is fine
            pass
        try:
            await self._start(out_w, err_w)
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        self._spawn(self._read_stdout, out_r)
        self._spawn(self._read_stderr, err_r)
        try:
            async for batch in self._drain():
                yield batch
            await self._finish()
        finally:
            await self._stop()

    async def _start(self, out_w: int, err_w: int) -> None:
        """Open the target and start the command writing into our pipes (the target owns them)."""
        from clipipe.targets.base import ProcSpec, SegmentIO

        cfg = self.config
        io = SegmentIO(stdin=None, stdout=out_w, stderr=[err_w], bulk=False)
        try:
            self._target = await self._open_target()
        except BaseException:
            io.close()
            raise
        spec = ProcSpec(name="command", command=self.cmdline, env=dict(cfg.env), cwd=self._cwd())
        self.started = time.monotonic()
        self._task = asyncio.ensure_future(self._target.run_segment([spec], io))

    def _cwd(self) -> str | None:
        """Like the file source's paths: relative to the pipeline file (locally)."""
        cwd = self.config.cwd
        if self.config.context not in (None, "local"):
            return cwd
        base = os.path.dirname(os.path.abspath(self.ctx.path)) if self.ctx.path else None
        if cwd is None:
            return base
        cwd = os.path.expanduser(cwd)
        return os.path.join(base, cwd) if base and not os.path.isabs(cwd) else cwd

    async def _open_target(self) -> Any:
        name = self.config.context
        if name in (None, "local"):
            from clipipe.targets.local import LocalTarget

            return LocalTarget("local")
        from clipipe.engine.operation import TargetPool

        # --contexts, else contexts.yaml found the usual way ($CLIPIPE_CONTEXTS, ./, ...)
        self._pool = TargetPool(self.ctx.extra.get("contexts_path"))
        try:
            self._pool.check(name)
            return await self._pool.get(name)
        except (TargetError, UserError) as exc:
            raise RecordError(f"command source: context {name!r}: {exc}", hint=exc.hint,
                              mark=self.mark) from exc

    def _spawn(self, fn: Any, fd: int) -> None:
        t = threading.Thread(target=fn, args=(fd,), name=f"clipipe-command-{fn.__name__}", daemon=True)
        t.start()
        self._threads.append(t)

    def _read_stdout(self, fd: int) -> None:
        """Reader thread: stdout -> parser -> buffer (blocks in `put` when the policy says so)."""
        buf, parser = self.buffer, self.parser
        stop = self.config.on_parse_error == "stop"
        try:
            while True:
                data = os.read(fd, READ_SIZE)
                now = time.monotonic()
                r = parser.feed(data) if data else parser.finish()
                if r.errors:
                    self._errors.extend(r.errors)
                    for e in r.errors:
                        if len(self.samples) < MAX_SAMPLES:
                            self.samples.append(e.as_dict())
                if not buf.put(r.values, r.texts, r.nbytes, now):
                    return  # the pipeline has gone
                if r.errors and stop:
                    buf.close(RecordError(f"command source: bad input at {r.errors[0]}",
                                          hint="set on_parse_error: skip to count and skip bad input"))
                    return
                if not data:
                    buf.close()
                    return
        except BaseException as exc:  # a bug or a read error: the run must fail, not hang
            buf.close(exc)
        finally:
            os.close(fd)

    def _read_stderr(self, fd: int) -> None:
        """Stderr thread: keep the tail (and copy it out with stderr: show)."""
        err = self.ctx.stderr if self.config.stderr == "show" and not self.ctx.quiet else None
        tail = self._stderr_tail
        try:
            while True:
                data = os.read(fd, 65536)
                if not data:
                    return
                tail += data
                if len(tail) > STDERR_TAIL:
                    del tail[:len(tail) - STDERR_TAIL]
                if err is not None:
                    err.write(data.decode("utf-8", "replace"))
                    err.flush()
        except (OSError, ValueError):  # our stderr closed under us: keep reading is pointless
            return
        finally:
            os.close(fd)

    async def _drain(self) -> AsyncGenerator[Batch, None]:
        """Batches out of the buffer; the time between yields is the pipeline's (steps + output)."""
        buf = self.buffer
        size = self.config.batch_size
        live = self.progress_s if self.progress_s > 0 and not self.ctx.quiet else None
        next_live = time.monotonic() + live if live else 0.0
        while True:
            timeout = max(0.05, next_live - time.monotonic()) if live else None
            taken = await buf.get(size, timeout)
            self._report()
            if live and time.monotonic() >= next_live:
                self._say(status_line(self._figures(), final=False))
                next_live = time.monotonic() + live
            if taken is None:
                break
            if not taken.values:
                continue
            n = len(taken.values)
            batch = Batch(taken.values, taken.texts, index=range(self.delivered, self.delivered + n),
                          meta={"source": "command"}, born=min(b for _, b in taken.born))
            self.delivered += n
            t0 = time.monotonic()
            yield batch
            t1 = time.monotonic()  # the pipeline wants the next batch: this one is written
            self.processing_s += t1 - t0
            for count, born in taken.born:
                self.latency.add(t1 - born, count)
        self._report()
        if buf.error is not None:
            raise buf.error

    async def _finish(self) -> None:
        """The stream ended: the command's exit status decides whether the run succeeded."""
        assert self._task is not None
        outcomes = await self._task
        self.ended = time.monotonic()
        self.outcome = outcomes[0]
        self._join()
        if self.config.summary and not self.ctx.quiet:
            self._say(status_line(self._figures(), final=True))
        o = self.outcome
        if o.ok:
            return
        if o.error:
            why = o.error
        elif o.signal:
            why = f"was killed by {_signame(o.signal)}"
        else:
            why = f"exited with status {o.exit_code}"
            if o.exit_code > 128:  # a shell's way of saying its command died of signal N
                why += f" (killed by {_signame(o.exit_code - 128)})"
        tail = self._stderr_text()
        raise RecordError(f"command source: the command {why} after {self.parser.messages} messages"
                          + (f"; its stderr ended with:\n{tail}" if tail else " (no stderr)"),
                          hint="the records read before it failed were processed; the output was not "
                               "made final")

    async def _stop(self) -> None:
        """Stop everything we started: refuse further messages, kill the process group, join."""
        self.buffer.cancel()
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, Exception):  # it was stopped on purpose
                pass
        if self.ended == 0.0:
            self.ended = time.monotonic()
        await asyncio.get_running_loop().run_in_executor(None, self._join)
        await self._close_target()

    def _join(self) -> None:
        for t in self._threads:
            t.join(JOIN_S)

    async def _close_target(self) -> None:
        target, self._target = self._target, None
        if target is not None and self._pool is not None:
            try:
                await target.close()
            except Exception:  # the run's own outcome is what matters
                pass

    async def aclose(self) -> None:
        if self._task is not None or self._target is not None:
            await self._stop()

    # -- reporting ------------------------------------------------------------------------------

    def _stderr_text(self, lines: int = 10) -> str:
        text = bytes(self._stderr_tail).decode("utf-8", "replace").rstrip()
        return "\n".join(text.splitlines()[-lines:])

    def _say(self, line: str) -> None:
        if self.ctx.stderr is not None:
            self.ctx.stderr.write(line + "\n")
            self.ctx.stderr.flush()

    def _report(self) -> None:
        """Print new parse errors (the first few) and the buffer's warnings."""
        for w in self.buffer.warnings():
            self.ctx.warn(f"command source: {w}")
        while self._errors:
            e = self._errors.popleft()
            self._printed += 1
            if self.ctx.quiet:
                continue
            if self._printed <= MAX_PRINTED:
                self._say(f"warning: command source: skipped {e}")
            elif self._printed == MAX_PRINTED + 1:
                self._say("warning: command source: more bad input; counted in the metrics, not printed")

    def _figures(self) -> dict[str, Any]:
        end = self.ended or time.monotonic()
        took = max(end - self.started, 1e-9) if self.started else 0.0
        p = self.parser
        bufm = self.buffer.metrics.as_dict()
        bufm["held"] = len(self.buffer)
        return {
            "type": "command", "context": self.config.context or "local",
            "messages": p.messages, "bytes": p.bytes, "parse_errors": p.errors,
            "parse_error_samples": list(self.samples), "delivered": self.delivered,
            "duration_s": round(took, 6), "processing_s": round(self.processing_s, 6),
            "msgs_per_s": round(p.messages / took, 1) if took else 0.0,
            "mb_per_s": round(p.bytes / took / 1e6, 3) if took else 0.0,
            "latency_ms": self.latency.as_dict("message read to output written"),
            "buffer": bufm,
        }

    def stats(self) -> dict[str, Any]:
        out = self._figures()
        o = self.outcome
        if o is not None:
            out["exit_code"], out["signal"] = o.exit_code, o.signal
        return out


def _signame(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"

"""The Kubernetes target: segments run in a pod through the clipipe agent booted over a pod exec.

    contexts:
      k8s-prod: {type: kubernetes, context: production, namespace: default, pod: web-0}
      k8s-apps: {type: kubernetes, context: staging, namespace: apps, selector: app=web, container: app}

- The API client comes from the kubeconfig (`kubeconfig:`, $KUBECONFIG or ~/.kube/config) and the
  kube `context:`, built once and shared (`clipipe.targets.kubeclient`). The pod is `pod:`, or the
  first Running pod matching `selector:` (by name), looked up once per run; describe() says which.
- `open()` execs `python3 -c LOADER` in the pod (`clipipe.targets.kubeexec`, the official client's
  websocket in two threads) and ships the agent over its stdin, as over SSH; every segment then runs
  through that one agent (path "agent"). On v5.channel.k8s.io stdin EOF reaches the agent as a close
  message; on v4 there is no such message and none is needed: the agent shuts down on SHUTDOWN.
- A pod without Python ("executable file not found") falls back to raw exec, said once: each segment
  is one `sh -c` script (the marker scheme of `clipipe.targets.sshmux`: exit statuses and the script's
  pid on stderr). A fallback segment that reads stdin needs v5 (v4 can't say "end of input"); on v4
  it is refused with a hint instead of hanging.
- No orphans: when the controller dies, its TCP connection closes, the kubelet closes the exec's stdin
  and the agent kills every process group it started. A raw-exec segment without stdin carries a
  guard that does the same when its stdin closes.
- `port_forward(remote_port, local_port=0, pod=|service=)`: see `clipipe.targets.portforward`.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from clipipe.errors import TargetError
from clipipe.targets.agent import STDERR_TAIL, AgentTarget, Closer
from clipipe.targets.base import ConnectInfo, ProcOutcome, ProcSpec, SegmentIO, StreamStats, register, tally
from clipipe.targets.kubeclient import KubeAPI, PodRef, call_blocking, load_api, resolve_pod
from clipipe.targets.kubeexec import V4, V5, ExecStream
from clipipe.targets.sshmux import StatusParser, StderrRouter, new_nonce, proc_line
from clipipe.wire.session import AsyncFd, StreamReaderLike, StreamWriterLike

HINT_NO_PYTHON = ("{python!r} is not runnable in pod {pod}: running segments with plain exec (no agent: "
                  "no per-step stderr, no remote checksums); set `python:` to a Python 3.8+ in the image")
HINT_V4_STDIN = ("the API server speaks only {protocol}, which can't signal the end of stdin, and pod {pod} "
                 "has no Python for the agent: a step reading a stream can't run there. Use an image with "
                 "python3, or a Kubernetes 1.30+ API server (v5.channel.k8s.io)")
HINT_NO_POD = "set `pod: NAME` or `selector: LABELS` on the context"

#: Subprotocols offered for `exec_protocol:`; "auto" offers the client's default (v5, then v4).
PROTOCOLS = {"auto": None, "v5": f"{V5},{V4}", "v4": V4}

#: Seconds a cancelled raw-exec segment's processes get between SIGTERM and SIGKILL.
KILL_GRACE = 2

#: A no-Python pod's exec fails at once; this bounds the wait for its status after HELLO failed.
STATUS_WAIT = 5.0


def _d(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class KubernetesSettings:
    """Settings of a `type: kubernetes` context."""

    context: str | None = field(default=None, metadata=_d("kubeconfig context (default: current)"))
    namespace: str = field(default="default", metadata=_d("namespace of the pod"))
    pod: str | None = field(default=None, metadata=_d("pod name (or use `selector`)"))
    selector: str | None = field(default=None, metadata=_d("label selector; the first Running match is used"))
    container: str | None = field(default=None, metadata=_d("container in the pod (default: first)"))
    kubeconfig: str | None = field(default=None, metadata=_d("kubeconfig path (default: $KUBECONFIG, ~/.kube/config)"))
    python: str = field(default="python3", metadata=_d("python on the pod that runs the agent"))
    connect_timeout: float = field(default=10.0, metadata=_d("seconds for each API call and the exec handshake"))
    exec_protocol: Literal["auto", "v5", "v4"] = field(default="auto", metadata=_d(
        "exec subprotocol to offer: auto (v5, then v4), v5, or v4 (for proxies that mishandle v5)"))

    def __post_init__(self) -> None:
        if self.pod and self.selector:
            raise ValueError("set `pod:` or `selector:`, not both")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")


def raw_script(procs: list[ProcSpec], nonce: str, stdin: bool) -> str:
    """The `sh` script of a raw-exec segment: procs joined by pipes, statuses and pid as marker lines.

    Without a stdin stream, the exec's stdin serves as a lifeline: a guard blocks reading it and kills
    the script's process group when it closes (the controller is gone), and the first proc reads
    /dev/null instead. The group is the script's own because container runtimes start an exec'd
    process in a new session (runc's nsexec calls setsid()); `-$$` names exactly that group, and
    where the script is not a group leader the kill fails instead of hitting someone else's group.
    """
    lines = ["exec 9>&2", f"echo {nonce}:pid:$$ >&9"]
    if not stdin:
        lines += ["exec 3<&0",
                  "( read -r _ <&3; kill -KILL -$$ 2>/dev/null || kill -KILL $$ ) >/dev/null 2>&1 9>&- &",
                  "w=$!", "exec 3<&-"]
    stages = [f"{{ {proc_line(p)}; echo {nonce}:{i}:$? >&9; }}" for i, p in enumerate(procs)]
    if not stdin:
        stages[0] = stages[0] + " </dev/null"
    lines.append(" | ".join(stages))
    if not stdin:
        lines.append("kill $w 2>/dev/null")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


@register("kubernetes", KubernetesSettings)
class KubernetesTarget(AgentTarget):
    """Segments in a pod: the agent over a pod exec, raw exec when the pod has no Python."""

    kind = "kubernetes"

    def __init__(self, name: str, settings: KubernetesSettings) -> None:
        super().__init__(name, python=settings.python, connect_timeout=settings.connect_timeout + 5)
        self.settings = settings
        self.info = ConnectInfo(transport="kubernetes-exec")
        self.api: KubeAPI | None = None
        self.pod: PodRef | None = None
        self.exec_protocol: str | None = None
        self.path_totals: dict[str, dict[str, int]] = {}
        self._boot: ExecStream | None = None
        self._resolve_seconds = 0.0
        self._connect_lock = asyncio.Lock()
        self._warned = False

    # ------------------------------------------------------------------ API and pod
    async def kube_api(self) -> KubeAPI:
        """The cached API client of this context's kube context."""
        if self.api is None:
            s = self.settings
            self.api = await call_blocking(lambda: load_api(s.kubeconfig, s.context, self.name),
                                           s.connect_timeout, "load kubeconfig", self.name)
        return self.api

    def forget_api(self) -> None:
        """Drop the client so the next call builds one again (after the API server restarted)."""
        from clipipe.targets import kubeclient

        kubeclient.clear_cache()
        self.api = None

    async def resolve(self, refresh: bool = False) -> PodRef:
        """The pod of this context; refresh=True looks it up again without changing the cached one."""
        if self.pod is not None and not refresh:
            return self.pod
        s = self.settings
        if not s.pod and not s.selector:
            raise TargetError("the context names no pod", target=self.name, hint=HINT_NO_POD)
        api = await self.kube_api()
        return await resolve_pod(api, namespace=s.namespace, pod=s.pod, selector=s.selector,
                                 container=s.container, target=self.name, timeout=s.connect_timeout)

    async def connect(self) -> PodRef:
        """Reach the API server and find the pod (no exec): what `context list` checks."""
        async with self._connect_lock:
            if self.pod is None:
                t0 = time.monotonic()
                self.pod = await self.resolve()
                self._resolve_seconds = time.monotonic() - t0
            return self.pod

    def status_detail(self) -> str:
        """Which pod (and container) a connected context found: for `context list`."""
        if self.pod is None:
            return ""
        s = self.settings
        where = self.pod.name + (f"/{s.container}" if s.container else "")
        return f"pod {where}" + (f" via selector {s.selector}" if s.selector else "")

    # ------------------------------------------------------------------ agent transport
    async def _spawn_transport(self) -> tuple[StreamReaderLike, StreamWriterLike, Closer]:
        """Exec the agent's loader in the pod; its stdout/stdin are the transport."""
        api, pod = await self.kube_api(), await self.connect()
        self.transport_stderr = b""
        self._boot = None                   # a failure before the exec must not read an old status

        def on_stderr(chunk: bytes) -> None:
            self.transport_stderr = (self.transport_stderr + chunk)[-STDERR_TAIL:]

        stream = await ExecStream.open(api, pod, self.boot_argv(), target=self.name,
                                       timeout=self.settings.connect_timeout,
                                       protocol=PROTOCOLS[self.settings.exec_protocol], on_stderr=on_stderr)
        self._boot = stream
        self.exec_protocol = stream.protocol

        async def closer() -> None:
            stream.discard_output()         # the session reads no more: let the status through
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stream.wait(), STATUS_WAIT)
            await stream.aclose()

        return stream, stream, closer

    async def open(self) -> None:
        """Find the pod, boot the agent in it; with no usable Python, fall back to raw exec (said once)."""
        await self.connect()
        t0 = time.monotonic()
        if self.info.fallback is not None:
            return
        if self.session is not None and not self.session.closed:
            return
        try:
            await AgentTarget.open(self)
        except (TargetError, OSError, EOFError, asyncio.IncompleteReadError):
            if await self._python_missing():
                assert self.pod is not None
                self.warn_fallback(HINT_NO_PYTHON.format(python=self.settings.python, pod=self.pod.name))
                self.info.transport = "kubernetes-exec (raw)"
                self.info.connect_seconds = self._resolve_seconds + (time.monotonic() - t0)
                return
            raise
        if self.connect_info is not None:
            self.info.agent = dict(self.connect_info.agent)
            self.info.transport = "kubernetes-exec+agent"
            self.info.connect_seconds = self._resolve_seconds + self.connect_info.connect_seconds
            self.info.opened_at = time.time()

    async def _python_missing(self) -> bool:
        boot = self._boot
        if boot is None:
            return False
        try:
            status = await asyncio.wait_for(boot.wait(), STATUS_WAIT)
        except asyncio.TimeoutError:
            return False
        if status.not_found:
            return True
        err = self.transport_stderr.decode(errors="replace")
        return "not found" in err or "No such file" in err

    def warn_fallback(self, reason: str) -> None:
        """Say once that this target runs without the agent."""
        if not self._warned:
            self._warned = True
            self.info.fallback = reason
            print(f"clipipe: warning: {self.name}: {reason}", file=sys.stderr)

    # ------------------------------------------------------------------ segments
    async def run_segment(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """Run the procs joined by pipes in the pod: through the agent, or one raw `sh` exec."""
        try:
            await self.open()
        except BaseException:
            io.close()
            raise
        if self.info.fallback is not None:
            return await self._run_raw(procs, io)
        outcomes, result = await AgentTarget.run_segment_detailed(self, procs, io)
        self._record(StreamStats(bytes_in=result.bytes_in, bytes_out=result.bytes_out, path="agent"))
        return outcomes

    async def _run_raw(self, procs: list[ProcSpec], io: SegmentIO) -> list[ProcOutcome]:
        """The no-Python path: one exec of `sh -c SCRIPT`, stdout/stderr/status from the channels."""
        nonce = new_nonce()
        parser = StatusParser(nonce, len(procs))
        router = StderrRouter(list(io.stderr))
        started = time.time()
        stream: ExecStream | None = None
        pump: asyncio.Task[None] | None = None
        try:
            api, pod = await self.kube_api(), await self.connect()
            stream = await ExecStream.open(api, pod, ["sh", "-c", raw_script(procs, nonce, io.stdin is not None)],
                                           target=self.name, timeout=self.settings.connect_timeout,
                                           protocol=PROTOCOLS[self.settings.exec_protocol])
            self.exec_protocol = stream.protocol
            if io.stdin is not None and not stream.can_close_stdin:
                raise TargetError(f"can't feed a stream to pod {pod.name} without Python over {stream.protocol}",
                                  target=self.name, hint=HINT_V4_STDIN.format(protocol=stream.protocol, pod=pod.name))
            if io.stdin is not None:
                pump = asyncio.create_task(_feed(io.stdin, stream))
            await self._drain_output(stream, io.stdout, parser, router)
            status = await stream.wait()
            if pump is not None:
                pump.cancel()
        except asyncio.CancelledError:
            if parser.pid:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.kill_remote_group(parser.pid), 5)
            raise
        finally:
            if pump is not None:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            if stream is not None:
                await stream.aclose()
            router.write(parser.flush())
            router.close()
            for fd in (io.stdin, io.stdout):
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        self._record(StreamStats(bytes_in=stream.bytes_in, bytes_out=stream.bytes_out, path="raw-exec"))
        outcomes = parser.outcomes(procs, started, time.time())
        if status.reason == "lost" and len(parser.statuses) < len(procs):
            for o in outcomes:
                if o.exit_code is None and o.signal is None:
                    o.error = f"exec ended early: {status.message}"
        return outcomes

    async def _drain_output(self, stream: ExecStream, stdout: int | None, parser: StatusParser,
                            router: StderrRouter) -> None:
        """stdout chunks -> the stdout fd (awaited: back-pressure), stderr -> markers and stderr fds."""
        out = AsyncFd(stdout) if stdout is not None else None
        reader_gone = False
        while True:
            item = await stream.read_item()
            if item is None:
                return
            ch, data = item
            if ch == 2:
                router.write(parser.feed(data))
            elif out is not None and not reader_gone:
                try:
                    await out.write_all(data)
                except (BrokenPipeError, ConnectionResetError):
                    reader_gone = True      # as SIGPIPE would: stop the producers
                    if parser.pid:
                        await self.kill_remote_group(parser.pid, "PIPE")

    async def kill_remote_group(self, pid: int, sig: str = "TERM") -> None:
        """Signal a raw-exec script's process group through a second exec (SIGKILL follows)."""
        api, pod = await self.kube_api(), await self.connect()
        script = (f"kill -{sig} -{pid} 2>/dev/null || kill -{sig} {pid} 2>/dev/null\n"
                  f"( sleep {KILL_GRACE}; kill -KILL -{pid} ) >/dev/null 2>&1 &\n")
        if sig == "PIPE":
            script = f"kill -PIPE -{pid} 2>/dev/null || kill -PIPE {pid} 2>/dev/null\n"
        stream = await ExecStream.open(api, pod, ["sh", "-c", script], target=self.name,
                                       timeout=self.settings.connect_timeout,
                                       protocol=PROTOCOLS[self.settings.exec_protocol])
        try:
            await asyncio.wait_for(stream.wait(), self.settings.connect_timeout)
        finally:
            await stream.aclose()

    # ------------------------------------------------------------------ forwards, records
    def port_forward(self, remote_port: int, local_port: int = 0, *, pod: str | None = None,
                     service: str | None = None, **options: Any) -> Any:
        """A probed, self-healing forward from a local port to the pod's (or a service's) port."""
        from clipipe.targets.kubeforward import KubeTunnel
        from clipipe.targets.portforward import Forward

        return Forward(KubeTunnel(self, remote_port, pod=pod, service=service), local_port=local_port, **options)

    def _record(self, stats: StreamStats) -> None:
        self.last_stats = stats
        tally(self.path_totals, stats)

    async def close(self) -> None:
        """Stop the agent (it kills what it started) and close the exec."""
        with contextlib.suppress(Exception):
            await AgentTarget.close(self)

    def describe(self) -> dict[str, Any]:
        """Pod, container, how the pod was chosen, kube context, transport, connect time, agent."""
        s = self.settings
        pod = self.pod
        kube_ctx = self.api.context if self.api else s.context
        container = pod.container if pod else s.container
        name = pod.name if pod else s.pod
        return {
            "name": self.name, "type": self.kind,
            "address": f"k8s://{kube_ctx or '(current)'}/{s.namespace}/{name or s.selector or '?'}"
                       + (f"/{container}" if container else ""),
            "kube_context": kube_ctx, "server": self.api.server if self.api else None,
            "namespace": s.namespace, "pod": name, "container": container,
            "selector": s.selector, "pod_from": pod.chosen_by if pod else None,
            "transport": self.info.transport, "exec_protocol": self.exec_protocol,
            "connect_seconds": round(self.info.connect_seconds, 4),
            "connection_time_ms": int(self.info.connect_seconds * 1000),
            "agent": dict(self.info.agent), "fallback": self.info.fallback, "python": s.python,
            "streams": {k: dict(v) for k, v in self.path_totals.items()},
        }


async def _feed(fd: int, stream: ExecStream) -> None:
    """A controller fd -> the exec's stdin, then end of stdin (v5 close)."""
    src = AsyncFd(fd)
    try:
        while True:
            data = await src.read(1024 * 1024)
            if not data:
                break
            stream.write(data)
            await stream.drain()
    except (ConnectionError, OSError):
        return
    stream.close()


__all__ = ["KubernetesSettings", "KubernetesTarget", "raw_script"]

"""The Kubernetes tunnel of a port-forward: one port-forward websocket per connection.

`kubernetes.stream.portforward(connect_get_namespaced_pod_portforward, pod, ns, ports=P)` opens the
websocket (two channels for the port: data and error; the server's first message on each carries the
port, 2 bytes little-endian) and runs a proxy thread that joins it to one end of a socketpair. We take
that socket's fd and run the connection's bytes through asyncio.

The pod is the context's own, `pod:`, or a Running pod behind `service:` (its targetPort, as
`kubectl port-forward svc/NAME` does). A reconnect looks the pod up again, so a forward through a
selector or a service follows the pod to its replacement after a restart.

Limits of the official client's proxy (not of the protocol): a local half-close (shutdown(SHUT_WR))
ends the whole connection, and an error from the pod side (nothing listening) shows as the
connection closing; the probe turns that into an error by reading the error channel.
"""
from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from clipipe.errors import TargetError
from clipipe.targets.kubeclient import PodRef, api_error, call_blocking, resolve_pod, resolve_service

#: Seconds the probe waits for the error channel after the websocket opened. The kubelet dials the
#: pod's port as the stream opens and reports a refusal within milliseconds; silence means it worked.
PROBE_WAIT = 0.3

HINT_REFUSED = "is something listening on port {port} in pod {pod}?"


class KubeTunnel:
    """Port-forward websockets to a pod port (see the module docstring)."""

    def __init__(self, target: Any, remote_port: int, *, pod: str | None = None,
                 service: str | None = None) -> None:
        if pod and service:
            raise TargetError("port_forward takes pod= or service=, not both", target=target.name)
        self.target = target
        self.name = str(target.name)
        self.remote_port = remote_port
        self.pod = pod
        self.service = service
        self.ref: PodRef | None = None
        self.pod_port = remote_port

    async def _resolve(self) -> PodRef:
        t = self.target
        api = await t.kube_api()
        timeout = t.settings.connect_timeout
        if self.service:
            self.ref, self.pod_port = await resolve_service(api, namespace=t.settings.namespace,
                                                            service=self.service, port=self.remote_port,
                                                            target=self.name, timeout=timeout)
        elif self.pod:
            self.ref = await resolve_pod(api, namespace=t.settings.namespace, pod=self.pod, selector=None,
                                         container=None, target=self.name, timeout=timeout)
        else:
            self.ref = await t.resolve(refresh=True)
        return self.ref

    async def open_stream(self, probe: bool = False) -> tuple[Any, Any]:
        """A new port-forward websocket to the pod port, as an asyncio (reader, writer)."""
        from kubernetes.stream import portforward

        ref = self.ref or await self._resolve()
        api = await self.target.kube_api()
        port = self.pod_port

        def connect() -> Any:
            return portforward(api.core.connect_get_namespaced_pod_portforward, ref.name, ref.namespace,
                               ports=str(port))

        try:
            pf = await call_blocking(connect, self.target.settings.connect_timeout, "port-forward", self.name)
        except Exception as exc:
            raise api_error(exc, target=self.name, api=api, what=f"port-forward to pod {ref.namespace}/{ref.name}",
                            namespace=ref.namespace) from exc
        sock = socket.socket(fileno=pf.socket(port).detach())
        sock.setblocking(False)
        if probe:
            await self._probe(pf, sock, ref, port)
        reader, writer = await asyncio.open_connection(sock=sock)
        return reader, writer

    async def _probe(self, pf: Any, sock: socket.socket, ref: PodRef, port: int) -> None:
        """Fail when the error channel says the pod refused the connection."""
        loop = asyncio.get_running_loop()
        try:
            first = await asyncio.wait_for(loop.sock_recv(sock, 1), PROBE_WAIT)
        except asyncio.TimeoutError:
            return                          # connected and silent: the usual server that waits for us
        except OSError:
            first = b""
        if first:
            return                          # the server spoke first: connected
        err = pf.error(port)
        sock.close()
        raise TargetError(f"port-forward to pod {ref.name} port {port}: "
                          f"{(err or 'the connection closed at once').strip()}", target=self.name,
                          hint=HINT_REFUSED.format(port=port, pod=ref.name))

    async def check(self) -> None:
        """The pod is still there and Running (looked up again through its selector/service)."""
        old = self.ref
        ref = await self._resolve()
        if old is not None and ref.name != old.name:
            raise TargetError(f"port-forward: pod {old.name} was replaced by {ref.name}", target=self.name)

    async def reconnect(self) -> None:
        """Look the pod up again (a fresh API client if the server restarted)."""
        self.ref = None
        with contextlib.suppress(Exception):
            self.target.forget_api()
        await self._resolve()

    def describe(self) -> dict[str, Any]:
        """Pod, pod port, and how the pod was chosen."""
        return {"via": "kubernetes", "context": self.name,
                "pod": self.ref.name if self.ref else self.pod, "namespace": self.target.settings.namespace,
                "port": self.pod_port, "service": self.service,
                "chosen_by": self.ref.chosen_by if self.ref else None}

    async def close(self) -> None:
        """Nothing of its own: each connection's websocket closes with the connection."""

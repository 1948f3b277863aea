"""Port-forwards on kubernetes (the stand-in's port-forward websocket) and ssh (a real sshd) to a TCP echo server."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipipe.errors import TargetError
from clipipe.targets import kubeclient
from clipipe.targets.kubernetes import KubernetesSettings, KubernetesTarget
from clipipe.targets.portforward import Forward, open_forward
from tests.peers.kubeapi import KubeAPIServer, free_port


class EchoServer:
    """A TCP server on 127.0.0.1 that sends back every byte it gets (the forwarded-to service)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture
def kube(tmp_path: Path, echo: EchoServer) -> Iterator[KubeAPIServer]:
    server = KubeAPIServer().start()
    server.add_pod("echo-a", labels={"app": "echo"}, ports={8080: ("127.0.0.1", echo.port)})
    server.kubeconfig(tmp_path / "kubeconfig")
    yield server
    server.stop()
    kubeclient.clear_cache()


def k8s_target(tmp_path: Path, **settings: object) -> KubernetesTarget:
    return KubernetesTarget("k8s", KubernetesSettings(kubeconfig=str(tmp_path / "kubeconfig"), **settings))  # type: ignore[arg-type]


async def round_trip(fwd: Forward, size: int) -> bool:
    """Send `size` random bytes through the forward; True when the same bytes come back."""
    data = os.urandom(size)
    reader, writer = await asyncio.open_connection(fwd.host, fwd.port)
    try:
        async def send() -> None:
            for i in range(0, size, 1 << 16):
                writer.write(data[i:i + (1 << 16)])
                await writer.drain()

        sender = asyncio.create_task(send())
        got = await reader.readexactly(size)
        await sender
        return hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    finally:
        writer.close()


# ---------------------------------------------------------------------------------- kubernetes
def test_kubernetes_forward_carries_bytes_both_ways(tmp_path, kube, echo):
    async def go() -> dict:
        t = k8s_target(tmp_path, selector="app=echo")
        async with t.port_forward(8080) as fwd:
            assert fwd.host == "127.0.0.1" and fwd.port > 0 and fwd.status == "up"
            results = await asyncio.gather(*(round_trip(fwd, 1024 * 1024 + i) for i in range(3)))
            assert all(results)
            return fwd.describe()

    d = asyncio.run(go())
    assert d["connections"] == 3 and d["bytes_up"] == d["bytes_down"] == 3 * (1024 * 1024) + 3
    assert d["remote"]["pod"] == "echo-a" and d["remote"]["port"] == 8080
    assert ("echo-a", 8080) in kube.forwards and echo.accepted >= 4    # 3 connections and the probe


def test_kubernetes_forward_to_a_service_uses_its_target_port(tmp_path, kube, echo):
    kube.add_service("echo-svc", {"app": "echo"}, {80: 8080})

    async def go() -> dict:
        t = k8s_target(tmp_path, pod="echo-a")
        async with open_forward(t, 80, service="echo-svc") as fwd:
            assert await round_trip(fwd, 200_000)
            return fwd.describe()

    d = asyncio.run(go())
    assert d["remote"]["port"] == 8080 and d["remote"]["service"] == "echo-svc"
    assert d["remote"]["chosen_by"].startswith("service echo-svc -> selector app=echo")


def test_kubernetes_forward_to_a_closed_port_fails_at_start(tmp_path, kube):
    async def go() -> None:
        async with k8s_target(tmp_path, pod="echo-a").port_forward(9999):
            pass

    with pytest.raises(TargetError, match="port-forward to pod echo-a port 9999: .*connection refused") as ei:
        asyncio.run(go())
    assert "is something listening on port 9999" in (ei.value.hint or "")


def test_kubernetes_forward_follows_a_replaced_pod(tmp_path, kube, echo):
    async def go() -> tuple[int, bool]:
        t = k8s_target(tmp_path, selector="app=echo")
        async with t.port_forward(8080, check_interval=3600) as fwd:
            assert await round_trip(fwd, 10_000)
            kube.remove_pod("echo-a")        # the deployment replaced its pod
            kube.add_pod("echo-b", labels={"app": "echo"}, ports={8080: ("127.0.0.1", echo.port)})
            assert await fwd.check_now()
            return fwd.reconnects, await round_trip(fwd, 10_000)

    reconnects, ok = asyncio.run(go())
    assert reconnects == 1 and ok
    assert kube.forwards[-1] == ("echo-b", 8080)


def test_kubernetes_forward_waits_out_an_api_server_outage(tmp_path, kube, echo):
    async def go() -> tuple[bool, int, str]:
        t = k8s_target(tmp_path, pod="echo-a")
        async with t.port_forward(8080, check_interval=3600) as fwd:
            kube._shutdown()                 # the control plane goes away...
            pending = asyncio.create_task(round_trip(fwd, 50_000))
            while fwd.status != "reconnecting":     # ...the new connection notices and waits
                await asyncio.sleep(0.05)
            kube.start()                     # ...and comes back on the same address
            ok = await asyncio.wait_for(pending, 60)
            return ok, fwd.reconnects, fwd.status

    ok, reconnects, status = asyncio.run(go())
    assert ok and reconnects >= 1 and status == "up"


# ---------------------------------------------------------------------------------- ssh
@pytest.mark.ssh
def test_ssh_forward_carries_bytes_and_reconnects(sshd, echo):
    from clipipe.targets.contexts import parse_contexts

    contexts = parse_contexts("contexts:\n" + sshd.contexts_yaml("h"), "c.yaml")
    t = contexts.make_target("h")

    async def go() -> tuple[bool, bool, dict]:
        try:
            async with t.port_forward(echo.port, check_interval=3600) as fwd:   # type: ignore[attr-defined]
                first = await round_trip(fwd, 2 * 1024 * 1024)
                t.conn.close()                                          # type: ignore[attr-defined]
                await t.conn.wait_closed()                              # type: ignore[attr-defined]
                assert await fwd.check_now()
                return first, await round_trip(fwd, 100_000), fwd.describe()
        finally:
            await t.close()

    first, second, d = asyncio.run(go())
    assert first and second
    assert d["reconnects"] == 1 and d["remote"]["via"] == "ssh"
    assert d["remote"]["to"] == f"127.0.0.1:{echo.port}"


@pytest.mark.ssh
def test_ssh_forward_to_a_closed_port_fails_at_start(sshd):
    from clipipe.targets.contexts import parse_contexts

    t = parse_contexts("contexts:\n" + sshd.contexts_yaml("h"), "c.yaml").make_target("h")
    port = free_port()

    async def go() -> None:
        try:
            async with open_forward(t, port):
                pass
        finally:
            await t.close()

    with pytest.raises(TargetError, match=f"could not connect to 127.0.0.1:{port}"):
        asyncio.run(go())


def test_local_target_cannot_forward():
    from clipipe.targets.local import LocalTarget

    with pytest.raises(TargetError, match="can't forward ports"):
        open_forward(LocalTarget(), 80)

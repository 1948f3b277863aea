"""The exec bridge: status parsing, the bounded thread->loop inbox, and O(buffer) memory on a real exec."""
from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from clipipe.targets import kubeclient
from clipipe.targets.kubeclient import load_api, resolve_pod
from clipipe.targets.kubeexec import INBOX_BYTES, V4, V5, ExecStream, _Inbox, parse_status
from tests.peers.kubeapi import PUMP_READ, KubeAPIServer


def test_status_success_and_exit_codes():
    assert parse_status(b'{"metadata":{},"status":"Success"}', V5).exit_code == 0
    failed = json.dumps({"status": "Failure", "reason": "NonZeroExitCode", "message": "exit code 3",
                         "details": {"causes": [{"reason": "ExitCode", "message": "3"}]}}).encode()
    st = parse_status(failed, V4)
    assert st.exit_code == 3 and st.reason == "NonZeroExitCode" and not st.not_found


def test_status_exec_failures_and_old_protocol():
    oci = json.dumps({"status": "Failure", "reason": "InternalError", "message": 'OCI runtime exec failed: '
                      'exec: "python3": executable file not found in $PATH: unknown'}).encode()
    st = parse_status(oci, V5)
    assert st.exit_code is None and st.not_found and st.reason == "InternalError"
    assert parse_status(b"", "channel.k8s.io").exit_code == 0          # v1: silence is success
    assert parse_status(b"command terminated with non-zero exit code: exit code 2",
                        "channel.k8s.io").exit_code == 2
    assert parse_status(b"not json", V5).reason == "unparsable"


def test_inbox_blocks_its_producer_at_the_bound_and_keeps_order():
    async def go() -> tuple[list[bytes], int, int]:
        loop = asyncio.get_running_loop()
        inbox = _Inbox(loop, limit=10)
        chunks = [bytes([i]) * 8 for i in range(6)]

        def produce() -> None:
            for c in chunks:
                inbox.put(1, c)
            inbox.end()

        t = threading.Thread(target=produce, daemon=True)
        t.start()
        while len(inbox._items) < 2:               # 0 -> 8 -> 16 bytes queued, then the bound holds
            await asyncio.sleep(0.01)
        t.join(0.2)
        queued_while_blocked = len(inbox._items)
        alive = int(t.is_alive())
        got = []
        while (item := await inbox.get()) is not None:
            assert inbox._size <= 10 + 8           # never more than the bound plus one chunk
            got.append(item[1])
        return got, queued_while_blocked, alive

    got, queued, alive = asyncio.run(go())
    assert got == [bytes([i]) * 8 for i in range(6)]
    assert queued == 2 and alive == 1


def test_inbox_discard_releases_a_blocked_producer():
    async def go() -> bool:
        inbox = _Inbox(asyncio.get_running_loop(), limit=1)
        t = threading.Thread(target=lambda: [inbox.put(1, b"xx") for _ in range(100)], daemon=True)
        t.start()
        while not inbox._items:
            await asyncio.sleep(0.01)
        inbox.discard()
        t.join(10)
        return t.is_alive()

    assert asyncio.run(go()) is False


@pytest.fixture
def kube(tmp_path: Path):  # type: ignore[no-untyped-def]
    server = KubeAPIServer().start()
    server.add_pod("p")
    server.kubeconfig(tmp_path / "kc")
    yield server
    server.stop()
    kubeclient.clear_cache()


def test_a_stream_nobody_reads_stays_within_the_buffer(tmp_path, kube):
    """64 MiB produced in the pod, nothing read: the controller holds at most the inbox's bound."""
    async def go() -> tuple[int, int]:
        api = load_api(str(tmp_path / "kc"), None, "t")
        pod = await resolve_pod(api, namespace="default", pod="p", selector=None, container=None,
                                target="t", timeout=10)
        s = await ExecStream.open(api, pod, ["sh", "-c", "head -c 67108864 /dev/zero"], target="t", timeout=10)
        while s._inbox._size < INBOX_BYTES:          # the reader thread fills the inbox ...
            await asyncio.sleep(0.02)
        s._reader.join(0.3)                           # ... and then stays blocked
        held = s._inbox._size
        total = 0
        while (item := await s.read_item()) is not None:   # reading drains it all, in order
            total += len(item[1])
        status = await s.wait()
        await s.aclose()
        assert status.exit_code == 0
        return held, total

    held, total = asyncio.run(go())
    assert held <= INBOX_BYTES + PUMP_READ
    assert total == 64 * 1024 * 1024


def test_readexactly_splits_and_joins_messages_and_routes_stderr(tmp_path, kube):
    async def go() -> tuple[list[bytes], bytes]:
        api = load_api(str(tmp_path / "kc"), None, "t")
        pod = await resolve_pod(api, namespace="default", pod="p", selector=None, container=None,
                                target="t", timeout=10)
        err = bytearray()
        s = await ExecStream.open(api, pod, ["sh", "-c", "printf abc; echo E >&2; printf defgh"],
                                  target="t", timeout=10, on_stderr=err.extend)
        parts = [await s.readexactly(2), await s.readexactly(5)]
        with pytest.raises(asyncio.IncompleteReadError) as ei:
            await s.readexactly(4)
        parts.append(ei.value.partial)
        await s.aclose()
        return parts, bytes(err)

    parts, err = asyncio.run(go())
    assert parts == [b"ab", b"cdefg", b"h"] and err == b"E\n"

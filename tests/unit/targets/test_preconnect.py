"""Early TCP connects: which hosts qualify, what a target gets, and failures surfacing as at connect."""
from __future__ import annotations

import asyncio
import socket
import threading

import pytest

from clipipe.errors import UnreachableError
from clipipe.targets import preconnect
from clipipe.targets.contexts import parse_contexts
from clipipe.targets.sshsettings import SSHSettings


@pytest.fixture(autouse=True)
def _clean() -> None:
    preconnect.discard_all()


def listener() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    return srv, srv.getsockname()[1]


@pytest.mark.parametrize("config, host, redirect", [
    ("", "web1", False),
    ("Host db*\n  Port 2222\n", "web1", False),
    ("Host web*\n  Port 2222\n", "web1", True),
    ("Host *\n  ServerAliveInterval 5\n", "10.0.0.1", True),
    ("Host=web1\n", "web1", True),
    ("Host !web1 web*\n", "web2", True),
    ("Host !web1\n", "web1", False),
    ("# Host web1\nUser x\n", "web1", False),
    ("Match host web1\n", "db", True),
    ("Include ~/.ssh/conf.d/*\n", "db", True),
])
def test_ssh_config_that_may_redirect_a_host_disables_the_preconnect(tmp_path, config, host, redirect) -> None:
    path = tmp_path / "config"
    path.write_text(config)
    assert preconnect.config_may_redirect(str(path), host) is redirect
    assert preconnect.eligible(SSHSettings(host=host, ssh_config=str(path))) is not redirect


def test_missing_config_and_jump_hosts() -> None:
    assert preconnect.config_may_redirect("/nonexistent/ssh_config", "web1") is False
    assert preconnect.eligible(SSHSettings(host="web1", ssh_config=None))
    assert not preconnect.eligible(SSHSettings(host="web1", ssh_config=None, jump="bastion"))


def test_start_connects_and_take_hands_the_socket_over_once() -> None:
    srv, port = listener()
    try:
        settings = [SSHSettings(host="127.0.0.1", port=port, ssh_config=None)] * 2
        assert preconnect.start(settings) == 1            # one per host:port
        early = preconnect.take("127.0.0.1", port)
        assert early is not None
        sock = asyncio.run(early.connected())
        sock.setblocking(True)
        conn, _ = srv.accept()
        sock.sendall(b"x")
        assert conn.recv(1) == b"x"
        sock.close()
        conn.close()
        assert preconnect.take("127.0.0.1", port) is None
    finally:
        srv.close()


def test_untaken_sockets_are_closed() -> None:
    srv, port = listener()
    try:
        preconnect.start([SSHSettings(host="127.0.0.1", port=port, ssh_config=None)])
        conn, _ = srv.accept()
        preconnect.discard_all()
        conn.settimeout(5)
        assert conn.recv(1) == b""                        # the controller's end was closed
        conn.close()
    finally:
        srv.close()


def test_a_refused_preconnect_is_the_targets_refused_connect() -> None:
    srv, port = listener()
    srv.close()                                           # nothing listens on `port` any more
    text = f"contexts:\n  dead: {{type: ssh, host: 127.0.0.1, port: {port}, ssh_config: null}}\n"
    contexts = parse_contexts(text)
    preconnect.start([contexts.get("dead").settings])

    async def connect() -> None:
        target = contexts.make_target("dead")
        try:
            await target.connect()
        finally:
            await contexts.close_all()

    with pytest.raises(UnreachableError, match="connection refused"):
        asyncio.run(connect())
    assert preconnect.take("127.0.0.1", port) is None     # consumed by the failed connect


def test_a_host_name_is_resolved_in_the_background_and_an_unknown_one_fails_at_connect() -> None:
    srv, port = listener()
    try:
        assert preconnect.start([SSHSettings(host="localhost", port=port, ssh_config=None),
                                 SSHSettings(host="no-such-host.invalid", port=22, ssh_config=None)]) == 2
        sock = asyncio.run(preconnect.take("localhost", port).connected())     # type: ignore[union-attr]
        conn, _ = srv.accept()
        conn.close()
        sock.close()
        with pytest.raises(socket.gaierror):
            asyncio.run(preconnect.take("no-such-host.invalid", 22).connected())  # type: ignore[union-attr]
    finally:
        srv.close()


def test_start_is_thread_safe_per_key() -> None:
    srv, port = listener()
    try:
        settings = SSHSettings(host="127.0.0.1", port=port, ssh_config=None)
        counts: list[int] = []
        threads = [threading.Thread(target=lambda: counts.append(preconnect.start([settings])))
                   for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(counts) == 1
    finally:
        preconnect.discard_all()
        srv.close()

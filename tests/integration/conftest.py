"""Fixtures for tests against real peers: OpenSSH sshd on loopback (see tests/peers/sshd.py)."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from peers.sshd import (
    KeySet,
    SSHServer,
    new_keyset,
    remove_keyset,
    sshd_available,
    start_fleet,
    start_sshd,
)


def _need_sshd() -> None:
    """Skip with the reason when sshd is missing; in CI (CI=true) that is a failure instead."""
    reason = sshd_available()
    if reason:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"sshd is required in CI: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def ssh_keys() -> Iterator[KeySet]:
    """Host and client keys shared by every sshd of the session."""
    _need_sshd()
    keys = new_keyset()
    yield keys
    remove_keyset(keys)


@pytest.fixture(scope="session")
def sshd(ssh_keys: KeySet) -> Iterator[SSHServer]:
    """One sshd on 127.0.0.2 for the whole session, logging in as the dedicated test user."""
    server = start_sshd(ssh_keys, "127.0.0.2")
    yield server
    server.stop()


@pytest.fixture
def sshd_fresh(ssh_keys: KeySet) -> Iterator[SSHServer]:
    """An sshd of the test's own (on 127.0.0.3), for tests that disturb the server."""
    server = start_sshd(ssh_keys, "127.0.0.3")
    yield server
    server.stop()


@pytest.fixture
def sshd_fleet(ssh_keys: KeySet, request: pytest.FixtureRequest) -> Iterator[list[SSHServer]]:
    """`n` servers on 127.0.0.2.. (parametrize indirectly with n; default 3)."""
    n = getattr(request, "param", 3)
    servers = start_fleet(n, ssh_keys)
    yield servers
    for s in servers:
        s.stop()

"""`password_env:` against a real sshd that only takes passwords: both data planes, the CLI, no leaks."""
from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
from collections.abc import Iterator

import pytest

from clipipe.errors import AuthError
from clipipe.targets.base import ProcSpec, SegmentIO
from peers.sshd import SSHServer, ensure_password_user, start_sshd
from tests.conftest import write
from tests.integration.test_ssh_target import Collector, contexts_for

pytestmark = pytest.mark.ssh

PW_USER = "clipipe-pw"
PW_VAR = "CLIPIPE_TEST_SSH_PASSWORD"


@pytest.fixture(scope="module")
def pw_sshd(ssh_keys) -> Iterator[tuple[SSHServer, str]]:
    """An sshd on 127.0.0.4 where keys are refused and only the password logs in."""
    if os.getuid() != 0:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("the password-auth tests need root (to create their login user) in CI")
        pytest.skip("creating the password login user needs root")
    if shutil.which("openssl") is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("openssl is required in CI (it hashes the test password)")
        pytest.skip("openssl is needed to hash the test password")
    password = "pw-" + secrets.token_urlsafe(12)
    user = ensure_password_user(PW_USER, password)
    server = start_sshd(ssh_keys, "127.0.0.4", user=user,
                        options={"PasswordAuthentication": "yes", "AuthorizedKeysFile": "/dev/null",
                                 "PubkeyAuthentication": "no"})
    yield server, password
    server.stop()


def entry(server: SSHServer, name: str, plane: str) -> str:
    """A context that logs in with the password from $PW_VAR (no key)."""
    return (f"  {name}:\n    type: ssh\n    host: {server.host}\n    port: {server.port}\n"
            f"    user: {server.user}\n    known_hosts: {server.known_hosts}\n"
            f"    password_env: {PW_VAR}\n    data_plane: {plane}\n    ssh_config: null\n")


@pytest.mark.parametrize("plane", ["agent", "openssh"])
def test_password_login_on_both_data_planes(pw_sshd, monkeypatch, plane):
    server, password = pw_sshd
    monkeypatch.setenv(PW_VAR, password)
    c = contexts_for(entry(server, "pw", plane))

    async def go():
        t = c.make_target("pw")
        r_in, w_in = os.pipe()
        r_out, w_out = os.pipe()
        os.write(w_in, b"through the " + plane.encode())
        os.close(w_in)
        col = Collector(r_out)
        try:
            outcomes = await t.run_segment([ProcSpec("s", "cat; echo; id -un")], SegmentIO(r_in, w_out, [None]))
            col.join(10)
            return outcomes, col.data, t.describe()
        finally:
            await c.close_all()

    outcomes, out, desc = asyncio.run(go())
    assert outcomes[0].ok, outcomes
    assert out == f"through the {plane}\n{PW_USER}\n".encode()
    assert ("openssh-mux" if plane == "openssh" else "agent") in desc["streams"]
    assert password not in json.dumps(desc, default=str)


def test_wrong_password_is_an_auth_error_with_the_hint(pw_sshd, monkeypatch):
    server, _ = pw_sshd
    monkeypatch.setenv(PW_VAR, "not-the-password")
    c = contexts_for(entry(server, "pw", "agent"))
    with pytest.raises(AuthError) as ei:
        asyncio.run(c.make_target("pw").open())
    assert f"authentication failed for {PW_USER}@{server.host}" in str(ei.value)
    assert "password_env" in (ei.value.hint or "")


def test_cli_run_with_password_env_leaves_the_password_nowhere(pw_sshd, clipipe, tmp_path):
    server, password = pw_sshd
    ctx = write(tmp_path / "contexts.yaml", "contexts:\n" + entry(server, "pw", "auto"))
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: make, command: 'head -c 300000 /dev/zero', output: stream}
  - {name: count, context: pw, command: 'wc -c', input: pipe}
""")
    env = {PW_VAR: password}
    res = clipipe("--contexts", str(ctx), "run", "-c", "pw", "echo hello from $(id -un)", env=env)
    assert res.code == 0, res
    assert f"hello from {PW_USER}" in res.out
    res = clipipe("--contexts", str(ctx), "run", "--json", str(pipe), env=env)
    assert res.code == 0, res
    assert "300000" in res.out
    shown = clipipe("ops", "list", "--json", "-n", "5", env=env)
    for text in (res.out, res.err, shown.out, shown.err):
        assert password not in text
    rec = json.loads(shown.out.splitlines()[0])
    used = {c["name"]: c for c in rec["contexts_used"]}
    assert used["pw"]["streams"]                          # the bulk stream crossed to the host

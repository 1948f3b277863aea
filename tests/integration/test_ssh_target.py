"""The SSH target against a real OpenSSH sshd on loopback (no mocks)."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipipe.cli.context import context as context_cli
from clipipe.errors import AuthError, HostKeyError, UnreachableError
from clipipe.targets.base import ProcSpec, SegmentIO
from clipipe.targets.contexts import Contexts, parse_contexts

pytestmark = pytest.mark.ssh

SRC = str(Path(__file__).resolve().parents[2] / "src")


def contexts_for(*entries: str) -> Contexts:
    """Contexts from `SSHServer.contexts_yaml` entries."""
    return parse_contexts("contexts:\n" + "".join(entries), "test-contexts.yaml")


def run(coro):
    """Run a coroutine to completion."""
    return asyncio.run(coro)


def read_all(fd: int) -> bytes:
    """Read a pipe to EOF and close it."""
    out = bytearray()
    while chunk := os.read(fd, 1 << 20):
        out += chunk
    os.close(fd)
    return bytes(out)


class Collector(threading.Thread):
    """Drains a pipe in the background (so a segment never blocks on a full pipe)."""

    def __init__(self, fd: int) -> None:
        super().__init__(daemon=True)
        self.fd, self.data = fd, b""
        self.start()

    def run(self) -> None:
        self.data = read_all(self.fd)


async def segment(target, commands: list[str], stdin: bytes | None = None):
    """Run commands as one segment; return (outcomes, stdout, [stderr per proc])."""
    out_r, out_w = os.pipe()
    errs = [os.pipe() for _ in commands]
    in_r = None
    if stdin is not None:
        in_r, in_w = os.pipe()
        threading.Thread(target=lambda: (os.write(in_w, stdin), os.close(in_w)), daemon=True).start()
    collectors = [Collector(out_r)] + [Collector(r) for r, _ in errs]
    procs = [ProcSpec(f"p{i}", c) for i, c in enumerate(commands)]
    outcomes = await target.run_segment(procs, SegmentIO(in_r, out_w, [w for _, w in errs]))
    for c in collectors:
        c.join(10)
    return outcomes, collectors[0].data, [c.data for c in collectors[1:]]


@pytest.mark.parametrize("plane", ["agent", "openssh"])
def test_ad_hoc_command(sshd, plane):
    c = contexts_for(sshd.contexts_yaml("h", data_plane=plane))

    async def go():
        t = c.make_target("h")
        try:
            outcomes, out, errs = await segment(t, ["echo hello from $(whoami); echo oops >&2; exit 4"])
            return outcomes, out, errs, t.describe()
        finally:
            await c.close_all()

    outcomes, out, errs, desc = run(go())
    assert out == f"hello from {sshd.user}\n".encode()
    assert errs == [b"oops\n"]
    assert outcomes[0].exit_code == 4
    path = "agent" if plane == "agent" else "openssh-mux"
    assert desc["streams"][path]["segments"] == 1
    if plane == "agent":
        assert desc["agent"]["hostname"] and desc["agent"]["protocol"] >= 1
    else:   # a bulk segment needs neither the agent nor an asyncssh connection: none was opened
        assert desc["agent"] == {} and desc["transport"] == "openssh"
        assert desc["openssh_mux"]["sessions"] == 1
    assert desc["connect_seconds"] > 0


@pytest.mark.parametrize("plane", ["agent", "openssh"])
def test_three_proc_segment_and_reused_connection(sshd, plane):
    c = contexts_for(sshd.contexts_yaml("h", data_plane=plane))

    async def go():
        t = c.make_target("h")
        try:
            first = await segment(t, ["printf 'b\\na\\nc\\n'", "sort", "tr a-z A-Z; exit 2"])
            conn = t.conn
            second = await segment(t, ["echo again"])
            return first, second, conn is t.conn
        finally:
            await c.close_all()

    (outcomes, out, errs), (_, again, _), reused = run(go())
    assert out == b"A\nB\nC\n"
    assert [o.exit_code for o in outcomes] == [0, 0, 2]
    assert again == b"again\n"
    assert reused


@pytest.mark.parametrize("plane", ["agent", "openssh"])
def test_each_proc_of_a_segment_keeps_its_own_stderr(sshd, plane):
    c = contexts_for(sshd.contexts_yaml("h", data_plane=plane))

    async def go():
        try:
            return await segment(c.make_target("h"), ["echo first-err >&2; echo data",
                                                       "cat; echo second-err >&2; echo more >&2"],
                                 stdin=b"")
        finally:
            await c.close_all()

    outcomes, out, errs = run(go())
    assert all(o.ok for o in outcomes)
    assert out == b"data\n"
    assert errs == [b"first-err\n", b"second-err\nmore\n"]


def test_signal_is_reported(sshd):
    c = contexts_for(sshd.contexts_yaml("h", data_plane="openssh"))

    async def go():
        try:
            return await segment(c.make_target("h"), ["kill -TERM $$"])
        finally:
            await c.close_all()

    outcomes, _, _ = run(go())
    assert outcomes[0].signal == signal.SIGTERM


@pytest.mark.parametrize("plane", ["openssh", "agent"])
def test_stream_local_to_ssh_to_ssh_sha256(sshd, sshd_fresh, plane):
    """bytes -> host A `cat` -> host B `sha256sum`: the digest matches the local one."""
    data = secrets.token_bytes(8 << 20)
    c = contexts_for(sshd.contexts_yaml("a", data_plane=plane), sshd_fresh.contexts_yaml("b", data_plane=plane))

    async def go():
        a, b = c.make_target("a"), c.make_target("b")
        r1, w1 = os.pipe()
        r2, w2 = os.pipe()
        r3, w3 = os.pipe()
        threading.Thread(target=lambda: (os.write(w1, data), os.close(w1)), daemon=True).start()
        col = Collector(r3)
        try:
            res = await asyncio.gather(
                a.run_segment([ProcSpec("relay", "cat")], SegmentIO(r1, w2, [None])),
                b.run_segment([ProcSpec("sum", "sha256sum")], SegmentIO(r2, w3, [None])))
            col.join(10)
            return res, col.data, a.describe(), b.describe()
        finally:
            await c.close_all()

    (oa, ob), out, da, db = run(go())
    assert oa[0].ok and ob[0].ok
    assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
    path = "openssh-mux" if plane == "openssh" else "agent"
    assert path in da["streams"] and path in db["streams"]
    if plane == "agent":
        assert da["streams"]["agent"]["bytes_in"] == len(data)


def test_unknown_host_key_refused(sshd, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    c = contexts_for(sshd.contexts_yaml("h", known_hosts=str(empty)))
    with pytest.raises(HostKeyError) as ei:
        run(c.make_target("h").open())
    assert "unknown" in str(ei.value)
    assert f"ssh-keyscan -p {sshd.port} {sshd.host}" in ei.value.hint
    assert "insecure_skip_host_key_check" in ei.value.hint


def test_changed_host_key_refused(sshd, tmp_path):
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kh = tmp_path / "known_hosts"
    kh.write_text(f"[{sshd.host}]:{sshd.port} {(tmp_path / 'other_key.pub').read_text()}")
    c = contexts_for(sshd.contexts_yaml("h", known_hosts=str(kh)))
    with pytest.raises(HostKeyError) as ei:
        run(c.make_target("h").open())
    assert "changed" in str(ei.value)
    assert "ssh-keygen -R" in ei.value.hint


def test_insecure_skip_accepts_unknown_key(sshd, tmp_path):
    c = contexts_for(sshd.contexts_yaml("h", known_hosts=str(tmp_path / "none"),
                                        insecure_skip_host_key_check=True, data_plane="openssh"))

    async def go():
        try:
            return await segment(c.make_target("h"), ["echo ok"])
        finally:
            await c.close_all()

    assert run(go())[1] == b"ok\n"


def test_auth_failure(sshd, tmp_path):
    wrong = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    c = contexts_for(sshd.contexts_yaml("h", key=str(wrong)))
    with pytest.raises(AuthError) as ei:
        run(c.make_target("h").open())
    assert ei.value.hint and "key" in ei.value.hint


def test_unreachable_port(sshd):
    from peers.sshd import free_port
    c = contexts_for(sshd.contexts_yaml("h", port=free_port(sshd.host)))
    with pytest.raises(UnreachableError) as ei:
        run(c.make_target("h").open())
    assert "refused" in str(ei.value)


def test_unknown_dns_name(sshd):
    c = contexts_for(sshd.contexts_yaml("h", host="no-such-host.invalid", connect_timeout=3))
    with pytest.raises(UnreachableError):
        run(c.make_target("h").open())


def test_no_python_falls_back_to_raw_exec(sshd, capfd):
    c = contexts_for(sshd.contexts_yaml("h", python="/nonexistent/python3", data_plane="agent"))

    async def go():
        t = c.make_target("h")
        try:
            r1 = await segment(t, ["echo one; echo e1 >&2", "tr a-z A-Z; exit 5"])
            r2 = await segment(t, ["cat"], stdin=b"two\n")
            return r1, r2, t.describe()
        finally:
            await c.close_all()

    (o1, out1, errs1), (o2, out2, _), desc = run(go())
    assert out1 == b"ONE\n" and b"e1" in errs1[0]
    assert [o.exit_code for o in o1] == [0, 5]
    assert out2 == b"two\n" and o2[0].ok
    assert "/nonexistent/python3" in desc["fallback"]
    assert desc["streams"]["raw-exec"]["segments"] == 2
    warnings = [ln for ln in capfd.readouterr().err.splitlines() if "warning" in ln]
    assert len(warnings) == 1          # said once


def test_jump_through_another_context(sshd, sshd_fresh):
    c = contexts_for(sshd.contexts_yaml("bastion"), sshd_fresh.contexts_yaml("inner", jump="bastion"))

    async def go():
        t = c.make_target("inner")
        try:
            agent = await segment(t, ["echo via-agent"])          # stdout pipe: auto -> mux
            return agent, t.describe()
        finally:
            await c.close_all()

    (o, out, _), desc = run(go())
    assert out == b"via-agent\n" and o[0].ok
    assert desc["openssh_mux_error"] is None


CONTROLLER = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, {src!r})
    from clipipe.targets.contexts import parse_contexts
    from clipipe.targets.base import ProcSpec, SegmentIO
    c = parse_contexts({yaml!r})
    async def main():
        t = c.make_target("h")
        await t.open()
        r, w = os.pipe()          # a pipe on stdin: the mux path in auto mode
        task = asyncio.create_task(t.run_segment([ProcSpec("s", {cmd!r})], SegmentIO(r, None, [None])))
        await asyncio.sleep(1.5)
        print("started", flush=True)
        await task
    asyncio.run(main())
""")


def remote_matches(server, marker: str) -> list[str]:
    """Processes of the login user whose command line holds `marker` (seen by a fresh ssh)."""
    ps = server.run(f"ps -u {server.user} -o pid=,args=")
    return [ln for ln in ps.stdout.splitlines() if marker in ln and "ps -u" not in ln]


@pytest.mark.parametrize("plane, python", [("agent", "python3"), ("openssh", "python3"),
                                           ("agent", "/nonexistent/python3")])
def test_sigkilled_controller_leaves_nothing_on_target(sshd, plane, python):
    """Agent path, OpenSSH mux path, and the no-Python raw-exec path."""
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    yaml = "contexts:\n" + sshd.contexts_yaml("h", data_plane=plane, python=python)
    script = CONTROLLER.format(src=SRC, yaml=yaml, cmd=f"sleep {marker}")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == b"started"
        assert remote_matches(sshd, f"sleep {marker}"), "the remote sleep should be running"
        proc.kill()                     # SIGKILL: no cleanup code runs in the controller
        proc.wait()
        deadline = time.monotonic() + 8
        while remote_matches(sshd, f"sleep {marker}") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert remote_matches(sshd, f"sleep {marker}") == []
    finally:
        if proc.poll() is None:
            proc.kill()


def test_cancelled_mux_segment_kills_remote(sshd):
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    c = contexts_for(sshd.contexts_yaml("h", data_plane="openssh"))

    async def go():
        t = c.make_target("h")
        try:
            task = asyncio.create_task(segment(t, [f"sleep {marker}"]))
            await asyncio.sleep(1.5)
            running = bool(remote_matches(sshd, marker))
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return running
        finally:
            await c.close_all()

    assert run(go())
    assert remote_matches(sshd, marker) == []


def test_mux_master_closed_with_target(sshd):
    c = contexts_for(sshd.contexts_yaml("h", data_plane="openssh"))

    async def go():
        t = c.make_target("h")
        await segment(t, ["true"])
        m = t.mux
        await c.close_all()
        return m

    m = run(go())
    assert m.proc.poll() is not None and not os.path.exists(m.ctl)


# ------------------------------------------------------------------------------- the CLI


def write_contexts(tmp_path, *entries: str) -> str:
    """A contexts.yaml with a local context and `entries`."""
    p = tmp_path / "contexts.yaml"
    p.write_text("contexts:\n  local:\n    type: local\n    default: true\n" + "".join(entries))
    return str(p)


def test_cli_list_statuses(sshd, tmp_path):
    from peers.sshd import free_port
    path = write_contexts(tmp_path, sshd.contexts_yaml("good"),
                          sshd.contexts_yaml("dead", port=free_port(sshd.host)),
                          sshd.contexts_yaml("nokey", known_hosts=str(tmp_path / "empty")),
                          sshd.contexts_yaml("badkey", key=str(tmp_path / "missing-key")))
    (tmp_path / "empty").write_text("")
    env = {"CLIPIPE_CONTEXTS": path}
    res = CliRunner().invoke(context_cli, ["list", "--json"], env=env)
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)["contexts"]}
    assert rows["local"]["status"] == "ready" and rows["local"]["default"]
    assert rows["good"]["status"] == "ready"
    assert rows["dead"]["status"].startswith("unreachable")
    assert rows["nokey"]["status"] == "host key unknown"
    assert rows["badkey"]["status"] in ("auth failed",) or rows["badkey"]["status"].startswith("error")
    table = CliRunner().invoke(context_cli, ["list"], env=env)
    assert table.output.splitlines()[0].split() == ["NAME", "TYPE", "DEFAULT", "STATUS"]


def test_cli_show_and_test(sshd, tmp_path, monkeypatch):
    monkeypatch.setenv("SECRET_PW", "hunter2")
    path = write_contexts(tmp_path, sshd.contexts_yaml("good", password_env="SECRET_PW"))
    env = {"CLIPIPE_CONTEXTS": path}
    show = CliRunner().invoke(context_cli, ["show", "good", "--json"], env=env)
    assert show.exit_code == 0, show.output
    info = json.loads(show.output)
    assert info["settings"]["host"] == sshd.host and "hunter2" not in show.output
    assert info["source"].startswith(path + ":")
    ok = CliRunner().invoke(context_cli, ["test", "good"], env=env)
    assert ok.exit_code == 0, ok.output
    assert "agent.hostname" in ok.output and "connect:" in ok.output
    dead = write_contexts(tmp_path, sshd.contexts_yaml("gone", port=1, connect_timeout=2))
    bad = CliRunner().invoke(context_cli, ["test", "gone"], env={"CLIPIPE_CONTEXTS": dead})
    assert bad.exit_code == 3
    unknown = CliRunner().invoke(context_cli, ["show", "nope"], env=env)
    assert unknown.exit_code == 2


@pytest.mark.parametrize("plane", ["agent", "openssh"])
def test_ssh_config_alias_is_honoured(sshd, tmp_path, plane):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host clipipe-alias\n  HostName {sshd.host}\n  Port {sshd.port}\n  User {sshd.user}\n"
                   f"  IdentityFile {sshd.key}\n")
    c = parse_contexts("contexts:\n  a:\n    type: ssh\n    host: clipipe-alias\n"
                       f"    ssh_config: {cfg}\n    known_hosts: {sshd.known_hosts}\n    data_plane: {plane}\n")

    async def go():
        try:
            return await segment(c.make_target("a"), ["whoami"])
        finally:
            await c.close_all()

    outcomes, out, _ = run(go())
    assert out == f"{sshd.user}\n".encode() and outcomes[0].ok

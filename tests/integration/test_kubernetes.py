"""The kubernetes target against the API stand-in (tests/peers/kubeapi.py), driven by the real client.

Nothing is mocked: the official `kubernetes` client reads a generated kubeconfig, lists and reads pods
over HTTP(S), and execs over the real websocket channel protocol (v5 and v4) into "pods" whose
commands the stand-in runs as local processes in a per-pod directory.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clipipe.errors import AuthError, ContextError, TargetError, UnreachableError
from clipipe.targets import kubeclient
from clipipe.targets.base import ProcSpec, SegmentIO
from clipipe.targets.contexts import parse_contexts
from clipipe.targets.kubernetes import KubernetesSettings, KubernetesTarget
from tests.conftest import write
from tests.peers.kubeapi import V4, V5, KubeAPIServer, free_port, wait_gone

SRC = str(Path(__file__).resolve().parents[2] / "src")
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def kube(tmp_path: Path) -> Iterator[KubeAPIServer]:
    """A stand-in with pods web-0 (app=web), web-1 (app=web, Pending), db-0 (two containers)."""
    server = KubeAPIServer().start()
    server.add_pod("web-0", labels={"app": "web", "tier": "front"})
    server.add_pod("web-1", labels={"app": "web"}, phase="Pending")
    server.add_pod("db-0", labels={"app": "db"}, containers=["db", "backup"])
    server.kubeconfig(tmp_path / "kubeconfig", extra_contexts=("staging",))
    yield server
    server.stop()
    kubeclient.clear_cache()


def ctx_yaml(tmp_path: Path, **entries: dict[str, object]) -> Path:
    """contexts.yaml with `local` and the given kubernetes contexts (kubeconfig defaults to the stand-in's)."""
    body = "contexts:\n  local: {type: local, default: true}\n"
    for name, settings in entries.items():
        fields = {"type": "kubernetes", "kubeconfig": str(tmp_path / "kubeconfig"), **settings}
        body += f"  {name}:\n" + "".join(f"    {k}: {json.dumps(v)}\n" for k, v in fields.items())
    return write(tmp_path / "contexts.yaml", body)


def target(tmp_path: Path, **settings: object) -> KubernetesTarget:
    """A KubernetesTarget on the stand-in's kubeconfig."""
    settings.setdefault("kubeconfig", str(tmp_path / "kubeconfig"))
    return KubernetesTarget("k8s", KubernetesSettings(**settings))  # type: ignore[arg-type]


def last_record(clipipe) -> dict:  # type: ignore[no-untyped-def]
    """The newest operation record."""
    return json.loads(clipipe("ops", "list", "--json", "-n", "1").out.splitlines()[0])


def read_all(fd: int) -> bytes:
    """A pipe to EOF (then closed)."""
    out = bytearray()
    while chunk := os.read(fd, 1 << 20):
        out += chunk
    os.close(fd)
    return bytes(out)


# ---------------------------------------------------------------------------------- through the CLI
def test_adhoc_command_on_a_pod_through_the_cli(clipipe, tmp_path, kube):
    ctx = ctx_yaml(tmp_path, web={"pod": "web-0"})
    res = clipipe("--contexts", str(ctx), "run", "-c", "web", "echo hello from $KUBE_STANDIN_POD; pwd")
    assert res.code == 0, res
    assert "hello from web-0" in res.out
    assert str(kube.pod_dir(kube.pods[("default", "web-0")])) in res.out
    used = {c["name"]: c for c in last_record(clipipe)["contexts_used"]}["web"]
    assert used["pod"] == "web-0" and used["transport"] == "kubernetes-exec+agent"
    assert used["exec_protocol"] == V5 and used["connection_time_ms"] > 0
    assert used["agent"]["python"].startswith("3.")
    assert [e.command[0] for e in kube.execs] == ["python3"]       # one exec: the agent
    assert clipipe("--contexts", str(ctx), "run", "-c", "web", "exit 7").code == 1


def test_piped_steps_on_one_pod_run_as_one_segment(clipipe, tmp_path, kube):
    ctx = ctx_yaml(tmp_path, web={"selector": "app=web"})
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: gen, context: web, command: "seq 1 200000", output: stream}
  - {name: filter, context: web, command: "grep 7", input: pipe, output: stream}
  - {name: count, context: web, command: "wc -l", input: pipe, output: "variable:n"}
  - {name: show, command: "echo n={{.n}}"}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0, res
    assert f"n={sum(1 for i in range(1, 200001) if '7' in str(i))}" in res.out
    rec = last_record(clipipe)
    assert [s["type"] for s in rec["streams"]] == ["remote-pipe", "remote-pipe"]
    web = {c["name"]: c for c in rec["contexts_used"]}["web"]
    assert web["pod"] == "web-0" and "selector app=web" in web["pod_from"]


def test_cross_context_stream_pod_to_local_to_pod_keeps_every_byte(clipipe, tmp_path, kube):
    kube.add_pod("backup-0", labels={"app": "backup"})
    src_dir = kube.pod_dir(kube.pods[("default", "web-0")])
    data = os.urandom(6 * 1024 * 1024 + 11)
    (src_dir / "data.bin").write_bytes(data)
    ctx = ctx_yaml(tmp_path, web={"pod": "web-0"}, backup={"selector": "app=backup"})
    pipe = write(tmp_path / "p.yaml", """
name: cross-context-backup
steps:
  - {name: extract, context: web, command: "cat data.bin", output: stream}
  - {name: compress, context: local, command: "gzip -1", input: pipe, output: stream}
  - {name: save, context: backup, command: "cat > data.bin.gz", input: pipe}
  - {name: verify, context: backup, command: "gzip -dc data.bin.gz | sha256sum", depends_on: save,
     output: "variable:remote_sum"}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0, res
    rec = last_record(clipipe)
    want = hashlib.sha256(data).hexdigest()
    assert rec["variables"]["remote_sum"].split()[0] == want
    import gzip
    saved = kube.pod_dir(kube.pods[("default", "backup-0")]) / "data.bin.gz"
    assert hashlib.sha256(gzip.decompress(saved.read_bytes())).hexdigest() == want
    assert {c["name"] for c in rec["contexts_used"]} == {"web", "local", "backup"}


# ---------------------------------------------------------------------------------- pods, selectors
def test_selector_picks_the_first_running_pod_and_describe_says_so(tmp_path, kube):
    kube.add_pod("web-a", labels={"app": "web"}, phase="Pending")    # sorts first, not Running
    t = target(tmp_path, selector="app=web")
    ref = asyncio.run(t.connect())
    assert ref.name == "web-0"
    d = t.describe()
    assert d["pod"] == "web-0" and d["pod_from"] == "selector app=web (first Running of 1, by name)"
    assert d["address"] == "k8s://standin/default/web-0"
    kube.add_pod("web-00", labels={"app": "web"})                    # two Running: by name
    t2 = target(tmp_path, selector="app=web,tier!=back")
    assert asyncio.run(t2.connect()).name == "web-0"
    assert "first Running of 2" in t2.describe()["pod_from"]


def test_multi_container_pod_uses_the_named_container(tmp_path, kube):
    async def go(container: str | None) -> bytes:
        t = target(tmp_path, pod="db-0", **({"container": container} if container else {}))
        r, w = os.pipe()
        try:
            outs = await t.run_segment([ProcSpec("c", "echo $KUBE_STANDIN_CONTAINER")], SegmentIO(None, w, [None]))
            assert outs[0].ok
            return read_all(r)
        finally:
            await t.close()

    assert asyncio.run(go("backup")) == b"backup\n"
    assert asyncio.run(go(None)) == b"db\n"          # the first container, as kubectl picks


# ---------------------------------------------------------------------------------- errors
ERROR_CASES = {
    "no kubeconfig": ({"pod": "web-0", "kubeconfig": "/nonexistent/kubeconfig"}, 3, "no kubeconfig found"),
    "unknown context": ({"pod": "web-0", "context": "stagin"}, 3,
                        "kube context 'stagin' is not in"),
    "pod not found": ({"pod": "web-9"}, 3, "pod 'web-9' not found in namespace 'default' (did you mean"),
    "pod not running": ({"pod": "web-1"}, 3, "pod 'web-1' is Pending, not Running"),
    "no pod matches": ({"selector": "app=nothing"}, 3, "no Running pod matches selector 'app=nothing'"),
    "container not found": ({"pod": "db-0", "container": "bakup"}, 3,
                            "container 'bakup' not found in pod 'db-0' (did you mean 'backup'?)"),
    "no pod or selector": ({}, 3, "the context names no pod"),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_each_error_is_one_clear_message(clipipe, tmp_path, kube, case):
    settings, code, message = ERROR_CASES[case]
    ctx = ctx_yaml(tmp_path, k=settings)
    res = clipipe("--contexts", str(ctx), "run", "-c", "k", "true")
    assert res.code == code, res
    assert message in res.err, res
    assert "Traceback" not in res.err and len(res.err.strip().splitlines()) == 1, res
    if code == 3:                           # the same error from `context test`, with its hint
        res = clipipe("--contexts", str(ctx), "context", "test", "k")
        assert res.code == 3 and message in res.err and "hint: " in res.err, res


def test_auth_errors_401_and_403(clipipe, tmp_path, kube):
    kube.tokens["viewer"] = "view"
    kube.kubeconfig(tmp_path / "bad", token="wrong-token")
    kube.kubeconfig(tmp_path / "view", token="viewer")
    ctx = ctx_yaml(tmp_path, bad={"pod": "web-0", "kubeconfig": str(tmp_path / "bad")},
                   view={"pod": "web-0", "kubeconfig": str(tmp_path / "view")})
    res = clipipe("--contexts", str(ctx), "run", "-c", "bad", "true")
    assert res.code == 3 and "401 Unauthorized" in res.err and "Traceback" not in res.err, res
    res = clipipe("--contexts", str(ctx), "run", "-c", "view", "true")   # may read pods, not exec
    assert res.code == 3 and 'cannot create resource "pods/exec"' in res.err, res
    res = clipipe("--contexts", str(ctx), "context", "test", "view")
    assert res.code == 3 and "hint: " in res.err and "RBAC permission" in res.err, res
    with pytest.raises(AuthError):
        asyncio.run(target(tmp_path, pod="web-0", kubeconfig=str(tmp_path / "bad")).connect())


def test_unreachable_api_server(tmp_path, kube, clipipe):
    port = free_port()                      # nothing listens there
    doc = json.loads((tmp_path / "kubeconfig").read_text())
    doc["clusters"][0]["cluster"]["server"] = f"http://127.0.0.1:{port}"
    (tmp_path / "dead").write_text(json.dumps(doc))
    with pytest.raises(UnreachableError, match="connection refused"):
        asyncio.run(target(tmp_path, pod="web-0", kubeconfig=str(tmp_path / "dead")).connect())
    ctx = ctx_yaml(tmp_path, dead={"pod": "web-0", "kubeconfig": str(tmp_path / "dead")})
    res = clipipe("--contexts", str(ctx), "run", "-c", "dead", "true")
    assert res.code == 3 and "connection refused" in res.err and "Traceback" not in res.err, res


def test_both_pod_and_selector_is_a_contexts_file_error(tmp_path):
    with pytest.raises(ContextError, match="not both"):
        parse_contexts("contexts:\n  k: {type: kubernetes, pod: a, selector: app=b}\n", "c.yaml")


# ---------------------------------------------------------------------------------- protocols
@pytest.mark.parametrize("protocols, expect, stdin_end", [((V5, V4), V5, "v5-close"), ((V4,), V4, "disconnect")])
def test_agent_over_v5_and_v4(tmp_path, protocols, expect, stdin_end):
    server = KubeAPIServer(protocols=protocols).start()
    try:
        server.add_pod("web-0")
        server.kubeconfig(tmp_path / "kubeconfig")
        data = os.urandom(3 * 1024 * 1024)

        async def go() -> tuple[list, bytes]:
            t = target(tmp_path, pod="web-0")
            ir, iw = os.pipe()
            orr, ow = os.pipe()
            loop = asyncio.get_running_loop()
            feed = loop.run_in_executor(None, _write_all, iw, data)
            got = loop.run_in_executor(None, read_all, orr)
            try:
                outs = await t.run_segment([ProcSpec("a", "cat"), ProcSpec("b", "sha256sum")],
                                           SegmentIO(ir, ow, [None, None]))
                await feed
                return outs, await got
            finally:
                await t.close()

        outs, out = asyncio.run(go())
        assert all(o.ok for o in outs)
        assert out.split()[0].decode() == hashlib.sha256(data).hexdigest()
        assert server.execs[0].protocol == expect
        assert server.execs[0].stdin_closed_by == stdin_end     # v4: no close message exists
        assert wait_gone([server.execs[0].pid], 10) == []       # the agent exited
    finally:
        server.stop()
        kubeclient.clear_cache()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view[:1 << 20]):]
    os.close(fd)


def test_exec_protocol_setting_offers_only_v4(tmp_path, kube):
    async def go() -> str | None:
        t = target(tmp_path, pod="web-0", exec_protocol="v4")
        try:
            await t.open()
            return t.describe()["exec_protocol"]
        finally:
            await t.close()

    assert asyncio.run(go()) == V4


def test_tls_api_server_with_ca_data(tmp_path):
    server = KubeAPIServer(tls=True).start()
    try:
        server.add_pod("web-0")
        server.kubeconfig(tmp_path / "kubeconfig")

        async def go() -> bytes:
            t = target(tmp_path, pod="web-0")
            r, w = os.pipe()
            try:
                outs = await t.run_segment([ProcSpec("a", "echo over tls")], SegmentIO(None, w, [None]))
                assert outs[0].ok
                return read_all(r)
            finally:
                await t.close()

        assert asyncio.run(go()) == b"over tls\n"
        assert server.url.startswith("https://")
    finally:
        server.stop()
        kubeclient.clear_cache()


# ---------------------------------------------------------------------------------- no Python
def test_pod_without_python_falls_back_to_raw_exec_said_once(clipipe, tmp_path, kube):
    kube.add_pod("slim-0", python=False)
    ctx = ctx_yaml(tmp_path, slim={"pod": "slim-0"})
    pipe = write(tmp_path / "p.yaml", """
steps:
  - {name: gen, context: slim, command: "seq 1 1000; echo to-stderr >&2", output: stream}
  - {name: sum, context: slim, command: "awk '{s+=$1} END {print s}'", input: pipe, output: "variable:s"}
  - {name: again, context: slim, command: "echo second-segment", depends_on: sum}
  - {name: show, command: "echo s={{.s}}", depends_on: again}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0, res
    assert "s=500500" in res.out and "second-segment" in res.out
    assert res.err.count("is not runnable in pod slim-0") == 1, res.err
    assert "to-stderr" in res.err
    used = {c["name"]: c for c in last_record(clipipe)["contexts_used"]}["slim"]
    assert used["transport"] == "kubernetes-exec (raw)" and used["fallback"]
    res = clipipe("--contexts", str(ctx), "run", "-c", "slim", "exit 4")
    assert res.code == 1, res


def test_raw_exec_feeds_stdin_over_v5_and_refuses_over_v4(tmp_path):
    for protocols in ((V5, V4), (V4,)):
        server = KubeAPIServer(protocols=protocols).start()
        try:
            server.add_pod("slim-0", python=False)
            server.kubeconfig(tmp_path / "kubeconfig")
            data = os.urandom(2 * 1024 * 1024)

            async def go() -> bytes:
                t = target(tmp_path, pod="slim-0")
                ir, iw = os.pipe()
                orr, ow = os.pipe()
                loop = asyncio.get_running_loop()
                feed = loop.run_in_executor(None, _write_all_quiet, iw, data)
                got = loop.run_in_executor(None, read_all, orr)
                try:
                    outs = await t.run_segment([ProcSpec("a", "sha256sum")], SegmentIO(ir, ow, [None]))
                    assert outs[0].ok
                    return await got
                finally:
                    await feed
                    await t.close()

            if protocols == (V4,):
                with pytest.raises(TargetError, match="can't feed a stream to pod slim-0"):
                    asyncio.run(go())
            else:
                assert asyncio.run(go()).split()[0].decode() == hashlib.sha256(data).hexdigest()
        finally:
            server.stop()
            kubeclient.clear_cache()


def _write_all_quiet(fd: int, data: bytes) -> None:
    try:
        _write_all(fd, data)
    except BrokenPipeError:
        os.close(fd)


# ---------------------------------------------------------------------------------- no orphans
CONTROLLER = textwrap.dedent("""
    import asyncio, os, sys
    sys.path.insert(0, {src!r})
    from clipipe.targets.contexts import parse_contexts
    from clipipe.targets.base import ProcSpec, SegmentIO
    c = parse_contexts({yaml!r})
    async def main():
        t = c.make_target("k")
        await t.open()
        task = asyncio.create_task(t.run_segment([ProcSpec("s", {cmd!r}), ProcSpec("t", "cat")],
                                                 SegmentIO(None, None, [None, None])))
        await task
    asyncio.run(main())
""")


def _marked(marker: str) -> list[int]:
    """pids of local processes whose command line holds `marker` (the stand-in's pods run here)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(pid))
        except OSError:
            continue
    return [p for p in out if p != os.getpid()]


@pytest.mark.parametrize("python", [True, False], ids=["agent", "raw-exec"])
def test_sigkilled_controller_leaves_no_process_in_the_pod(tmp_path, kube, python):
    kube.add_pod("p-0", python=python)
    marker = f"1000.{secrets.randbelow(10**6):06d}"
    yaml = (f"contexts:\n  k: {{type: kubernetes, pod: p-0, kubeconfig: {tmp_path / 'kubeconfig'}}}\n")
    script = CONTROLLER.format(src=SRC, yaml=yaml, cmd=f"sleep {marker}")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not _marked(f"sleep {marker}"):
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the pod's sleep should be running"
            time.sleep(0.1)
        segment = [e.pid for e in kube.execs if e.pid] + _marked(marker)
        proc.kill()                         # SIGKILL: no cleanup code runs in the controller
        proc.wait()
        assert wait_gone(_marked(marker), 10) == []
        assert wait_gone(segment, 10) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------- context commands
def test_context_list_show_and_test_for_kubernetes(clipipe, tmp_path, kube):
    kube.kubeconfig(tmp_path / "bad", token="nope")
    ctx = ctx_yaml(tmp_path, web={"selector": "app=web"}, gone={"pod": "web-9"},
                   bad={"pod": "web-0", "kubeconfig": str(tmp_path / "bad")})
    res = clipipe("--contexts", str(ctx), "context", "list", "--json", "--timeout", "20")
    assert res.code == 0, res
    status = {r["name"]: r["status"] for r in json.loads(res.out)["contexts"]}
    assert status["web"] == "ready (pod web-0 via selector app=web)"
    assert status["bad"] == "auth failed"
    assert status["gone"].startswith("error: pod 'web-9' not found")
    assert not any(e for e in kube.execs)               # list connects, never execs
    res = clipipe("--contexts", str(ctx), "context", "test", "web")
    assert res.code == 0, res
    assert "address: k8s://standin/default/web-0" in res.out and "agent.python: 3." in res.out
    assert "pod_from: selector app=web" in res.out
    res = clipipe("--contexts", str(ctx), "context", "test", "gone")
    assert res.code == 3 and "pod 'web-9' not found" in res.err
    res = clipipe("--contexts", str(ctx), "context", "show", "web")
    assert res.code == 0 and "selector: app=web" in res.out, res


def test_fleet_over_kubernetes_contexts(clipipe, tmp_path, kube):
    kube.add_pod("web-2", labels={"app": "web2"}, python=False)
    ctx = ctx_yaml(tmp_path, k1={"pod": "web-0"}, k2={"selector": "app=web2"}, k3={"pod": "missing"})
    res = clipipe("--contexts", str(ctx), "run", "-c", "k*", "echo pod=$KUBE_STANDIN_POD")
    assert res.code == 3, res                   # k3 is unreachable, the others ran
    assert "k1 | pod=web-0" in res.out and "k2 | pod=web-2" in res.out, res
    assert "Traceback" not in res.err


def test_a_server_without_v4_or_v5_is_one_clear_error(tmp_path):
    server = KubeAPIServer(protocols=("channel.k8s.io",)).start()
    try:
        server.add_pod("web-0")
        server.kubeconfig(tmp_path / "kubeconfig")
        with pytest.raises(TargetError, match="exec in pod default/web-0: unable to upgrade: no supported subprotocol"):
            asyncio.run(target(tmp_path, pod="web-0").open())
    finally:
        server.stop()
        kubeclient.clear_cache()


@pytest.mark.parametrize("python", [True, False], ids=["agent", "raw-exec"])
def test_cancelled_segment_is_killed_in_the_pod(tmp_path, kube, python):
    kube.add_pod("p-0", python=python)
    marker = f"1000.{secrets.randbelow(10**6):06d}"

    async def go() -> None:
        t = target(tmp_path, pod="p-0")
        try:
            task = asyncio.create_task(t.run_segment([ProcSpec("s", f"sleep {marker}")], SegmentIO(None, None, [None])))
            while not _marked(f"sleep {marker}"):
                await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert wait_gone(_marked(marker), 10) == []
            r, w = os.pipe()                # the target is still usable afterwards
            outs = await t.run_segment([ProcSpec("e", "echo after")], SegmentIO(None, w, [None]))
            assert outs[0].ok and read_all(r) == b"after\n"
        finally:
            await t.close()

    asyncio.run(go())


def test_a_dropped_exec_connection_fails_the_segment_and_leaves_nothing(tmp_path, kube):
    marker = f"1000.{secrets.randbelow(10**6):06d}"

    async def go() -> BaseException | list:
        t = target(tmp_path, pod="web-0")
        try:
            task = asyncio.create_task(t.run_segment([ProcSpec("s", f"sleep {marker}")], SegmentIO(None, None, [None])))
            while not _marked(f"sleep {marker}"):
                await asyncio.sleep(0.05)
            kube.drop_connections()          # the network between us and the API server breaks
            try:
                return await task
            except UnreachableError as exc:
                return exc
        finally:
            await t.close()

    result = asyncio.run(go())
    assert isinstance(result, UnreachableError) and "agent connection" in str(result)
    assert wait_gone(_marked(marker), 10) == []

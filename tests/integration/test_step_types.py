"""`type: port-forward`, `cleanup` and `transfer` steps through the CLI, against real sshd and the
Kubernetes API stand-in (the seed's MinIO example, with an echo server as the service)."""
from __future__ import annotations

import hashlib
import json
import os
import socket

import pytest

from tests.conftest import write
from tests.integration.test_port_forward import EchoServer, echo  # noqa: F401 - the fixture
from tests.peers.kubeapi import KubeAPIServer

#: A local "client" of the forwarded service: sends a word, prints what comes back.
CLIENT = ("python3 -c 'import socket,sys; s=socket.create_connection((sys.argv[1], int(sys.argv[2])));"
          " s.sendall(sys.argv[3].encode()); print(s.recv(100).decode())'")


def last_record(clipipe) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(clipipe("ops", "list", "--json", "-n", "1").out.splitlines()[0])


def closed(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return True
    return False


@pytest.mark.ssh
def test_ssh_port_forward_used_then_cleaned_up(clipipe, tmp_path, sshd, echo):  # noqa: F811
    ctx = write(tmp_path / "contexts.yaml", "contexts:\n" + sshd.contexts_yaml("box"))
    pipe = write(tmp_path / "p.yaml", f"""
name: through-a-tunnel
steps:
  - {{name: tunnel, context: box, type: port-forward, ports: "0:{echo.port}"}}
  - name: use
    command: "{CLIENT} {{{{.tunnel.host}}}} {{{{.tunnel.port}}}} ping-through-ssh"
    depends_on: tunnel
  - name: done
    type: cleanup
    stop: tunnel
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 0, res
    assert "ping-through-ssh" in res.out
    rec = last_record(clipipe)
    steps = {s["name"]: s for s in rec["steps"]}
    assert all(s["status"] == "ok" for s in steps.values())
    assert steps["done"]["started"] >= steps["use"]["ended"]        # the cleanup waited for its user
    assert "stopped tunnel" in (steps["done"].get("note") or "")
    fwd = rec["port_forwards"][0]
    assert fwd["step"] == "tunnel" and fwd["connections"] == 1 and fwd["bytes_up"] == len("ping-through-ssh")
    assert closed(int(fwd["local"].rsplit(":", 1)[1]))
    assert echo.accepted == 2                                        # the start-up probe, then the client


@pytest.mark.ssh
def test_cleanup_runs_after_a_failure_and_forwards_end_with_the_run(clipipe, tmp_path, sshd, echo):  # noqa: F811
    ctx = write(tmp_path / "contexts.yaml", "contexts:\n" + sshd.contexts_yaml("box"))
    pipe = write(tmp_path / "p.yaml", f"""
steps:
  - {{name: a, context: box, type: port-forward, ports: "0:{echo.port}"}}
  - {{name: b, context: box, type: port-forward, ports: ["0:{echo.port}"]}}
  - {{name: fails, command: "exit 4", depends_on: [a, b]}}
  - {{name: tidy, type: cleanup, stop: a}}
""")
    res = clipipe("--contexts", str(ctx), "run", str(pipe))
    assert res.code == 1
    rec = last_record(clipipe)
    steps = {s["name"]: s for s in rec["steps"]}
    assert steps["fails"]["status"] == "failed" and steps["tidy"]["status"] == "ok"
    stopped = {f["step"]: f for f in rec["port_forwards"]}
    assert set(stopped) == {"a", "b"}                                # b ended with the run
    assert all(closed(int(f["local"].rsplit(":", 1)[1])) for f in stopped.values())


def test_kubernetes_service_forward_the_seeds_minio_shape(clipipe, tmp_path, echo):  # noqa: F811
    kube = KubeAPIServer().start()
    try:
        kube.add_pod("minio-0", labels={"app": "minio"}, ports={9000: ("127.0.0.1", echo.port)})
        kube.add_service("minio", {"app": "minio"}, {9000: 9000})
        kube.kubeconfig(tmp_path / "kubeconfig")
        ctx = write(tmp_path / "contexts.yaml", "contexts:\n  k8s-prod:\n    type: kubernetes\n"
                    f"    kubeconfig: {tmp_path / 'kubeconfig'}\n    namespace: default\n")
        pipe = write(tmp_path / "minio.yaml", f"""
pipeline:
  name: minio-backup
  params:
    bucket: {{type: string, default: photos}}
  steps:
    - name: setup-portforward
      context: k8s-prod
      type: port-forward
      service: minio
      ports: "0:9000"
      background: true
    - name: mirror-bucket
      context: local
      command: "{CLIENT} {{{{.setup-portforward.host}}}} {{{{.setup-portforward.port}}}} {{{{.bucket}}}}"
      depends_on: setup-portforward
    - name: cleanup
      type: cleanup
      stop: setup-portforward
""")
        res = clipipe("--contexts", str(ctx), "run", str(pipe), "--bucket", "mirrored")
        assert res.code == 0, res.err
        assert "mirrored" in res.out
        rec = last_record(clipipe)
        assert [s["status"] for s in rec["steps"]] == ["ok", "ok", "ok"]
        assert rec["port_forwards"][0]["bytes_down"] == len("mirrored")
    finally:
        kube.stop()


@pytest.mark.ssh
def test_transfer_step_with_templates(clipipe, tmp_path, sshd):
    ctx = write(tmp_path / "contexts.yaml", "contexts:\n" + sshd.contexts_yaml("backup-server"))
    data = os.urandom(1 << 20)
    (tmp_path / "archive.tar").write_bytes(data)
    dest = f"/tmp/clipipe-step-transfer-{os.getpid()}"
    pipe = write(tmp_path / "p.yaml", f"""
params:
  dest: {{type: path, default: {dest}}}
steps:
  - {{name: upload, type: transfer, source: archive.tar, destination: "backup-server:{{{{.dest}}}}/in/"}}
  - {{name: check, context: backup-server, command: "sha256sum < {{{{.dest}}}}/in/archive.tar", depends_on: upload}}
""")
    try:
        res = clipipe("--contexts", str(ctx), "run", str(pipe), cwd=tmp_path)
        assert res.code == 0, res
        assert hashlib.sha256(data).hexdigest() in res.out
        t = last_record(clipipe)["transfers"][0]
        assert t["step"] == "upload" and t["bytes"] == len(data) and t["to"] == f"backup-server:{dest}/in/archive.tar"
        bad = write(tmp_path / "bad.yaml", "steps:\n  - {name: up, type: transfer, source: nothing-here, "
                    "destination: 'backup-server:/tmp/'}\n")
        res = clipipe("--contexts", str(ctx), "run", str(bad), cwd=tmp_path)
        assert res.code == 1 and "no such file or directory" in res.err
    finally:
        sshd.run(f"rm -rf {dest}")


@pytest.mark.parametrize("body, message", [
    ("- {name: f, type: port-forward}", "needs `ports:`"),
    ("- {name: f, type: port-forward, ports: 'x:80'}", "is not LOCAL:REMOTE"),
    ("- {name: f, type: port-forward, ports: '80', background: false}", "background: false"),
    ("- {name: f, type: port-forward, ports: '80', pod: a, service: b}", "not both"),
    ("- {name: c, type: cleanup}", "needs `stop:`"),
    ("- {name: c, type: cleanup, stop: nothing}", "stop: 'nothing' is not a step"),
    ("- {name: t, type: transfer, source: a}", "needs `destination:`"),
])
def test_bad_step_settings_are_one_error_with_file_and_line(clipipe, tmp_path, body, message):
    pipe = write(tmp_path / "p.yaml", "steps:\n  - {name: first, command: 'true'}\n  " + body + "\n")
    for args in (("validate", str(pipe)), ("run", str(pipe))):
        res = clipipe(*args)
        assert res.code == 2, res
        assert message in res.err and f"{pipe}:3" in res.err and "Traceback" not in res.err

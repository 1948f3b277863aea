"""`clipipe transfer` with `CONTEXT:POD:PATH` endpoints, against the Kubernetes API stand-in."""
from __future__ import annotations

import hashlib
import json
import os

from tests.integration.test_kubernetes import ctx_yaml, kube, last_record  # noqa: F401 - the fixture


def test_file_into_and_out_of_a_named_pod_of_a_podless_context(clipipe, tmp_path, kube):  # noqa: F811
    ctx = ctx_yaml(tmp_path, cluster={"namespace": "default"})        # the seed's form: no pod
    data = os.urandom(3 << 20) + b"end"
    (tmp_path / "up.bin").write_bytes(data)
    res = clipipe("--contexts", str(ctx), "transfer", "--progress", "quiet", "up.bin", "cluster:db-0:inbox/")
    assert res.code == 0, res
    assert (kube.pod_dir(kube.pods[("default", "db-0")]) / "inbox" / "up.bin").read_bytes() == data
    t = last_record(clipipe)["transfers"][0]
    assert t["to"] == "cluster:db-0:inbox/up.bin" and t["sha256"] == hashlib.sha256(data).hexdigest()

    logs = kube.pod_dir(kube.pods[("default", "web-0")]) / "logs"
    (logs / "nginx").mkdir(parents=True)
    for i in range(23):
        (logs / "nginx" / f"access-{i}.log").write_text(f"line {i}\n" * (i + 1))
    res = clipipe("--contexts", str(ctx), "transfer", "--progress", "quiet", "--json",
                  "cluster:web-0:logs/nginx/", "local:./got/")
    assert res.code == 0, res
    rec = json.loads(res.out)
    assert rec["transfers"][0]["kind"] == "dir" and rec["transfers"][0]["files"] == 23
    assert sorted(p.name for p in (tmp_path / "got" / "nginx").iterdir()) == sorted(
        f"access-{i}.log" for i in range(23))
    assert (tmp_path / "got" / "nginx" / "access-22.log").read_text() == "line 22\n" * 23


def test_unknown_pod_is_one_clear_error(clipipe, tmp_path, kube):  # noqa: F811
    ctx = ctx_yaml(tmp_path, cluster={"namespace": "default"})
    (tmp_path / "f").write_text("x")
    res = clipipe("--contexts", str(ctx), "transfer", "--progress", "quiet", "f", "cluster:nope-0:/tmp/")
    assert res.code == 3, res
    assert "nope-0" in res.err and "Traceback" not in res.err

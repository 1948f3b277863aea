"""Kubeconfig lookup, the client cache, and the mapping of client failures to typed errors."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from clipipe.errors import AuthError, ContextError, TargetError, UnreachableError
from clipipe.targets import kubeclient
from clipipe.targets.contexts import parse_contexts
from clipipe.targets.kubeclient import api_error, kubeconfig_paths, load_api, status_of


def kubeconfig(path: Path, *contexts: str, current: str | None = None) -> Path:
    doc = {"apiVersion": "v1", "kind": "Config", "current-context": current or contexts[0],
           "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:1"}}],
           "users": [{"name": "u", "user": {"token": "t"}}],
           "contexts": [{"name": n, "context": {"cluster": "c", "user": "u", "namespace": "ns-" + n}}
                        for n in contexts]}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(autouse=True)
def _fresh_cache():
    kubeclient.clear_cache()
    yield
    kubeclient.clear_cache()


def test_kubeconfig_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", f"{tmp_path}/a{os.pathsep}{tmp_path}/b")
    assert kubeconfig_paths("/x/kc") == ["/x/kc"]
    assert kubeconfig_paths(None) == [f"{tmp_path}/a", f"{tmp_path}/b"]
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert kubeconfig_paths(None) == [f"{tmp_path}/.kube/config"]


def test_client_is_cached_per_file_and_context_and_rebuilt_when_the_file_changes(tmp_path):
    kc = kubeconfig(tmp_path / "kc", "prod", "staging")
    a = load_api(str(kc), None, "t")
    assert a is load_api(str(kc), None, "t") and a.context == "prod" and a.namespace == "ns-prod"
    b = load_api(str(kc), "staging", "t")
    assert b is not a and b.context == "staging"
    st = kc.stat()
    os.utime(kc, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert load_api(str(kc), None, "t") is not a


def test_kubeconfig_errors(tmp_path):
    with pytest.raises(TargetError, match="no kubeconfig found") as ei:
        load_api(str(tmp_path / "missing"), None, "t")
    assert "KUBECONFIG" in (ei.value.hint or "")
    (tmp_path / "junk").write_text("::: [")
    with pytest.raises(TargetError, match="can't read kubeconfig"):
        load_api(str(tmp_path / "junk"), None, "t")
    kc = kubeconfig(tmp_path / "kc", "production", "staging")
    with pytest.raises(TargetError, match="'prodution' is not in .*did you mean 'production'") as ei:
        load_api(str(kc), "prodution", "t")
    assert "production, staging" in (ei.value.hint or "")


class _Api:
    context, server, namespace = "prod", "https://k8s.example:6443", "apps"


def test_http_statuses_map_to_typed_errors():
    from kubernetes.client.exceptions import ApiException

    assert isinstance(api_error(ApiException(status=401, reason="Unauthorized"), target="t", api=_Api(),  # type: ignore[arg-type]
                                what="get pod"), AuthError)
    e = ApiException(status=0, reason='Handshake status 403 Forbidden -+-+- {} -+-+- b\'{"message": '
                                      '"pods \\"p\\" is forbidden: no"}\'')
    assert status_of(e) == (403, 'pods "p" is forbidden: no')
    mapped = api_error(e, target="t", api=_Api(), what="exec")  # type: ignore[arg-type]
    assert isinstance(mapped, AuthError) and "RBAC" in (mapped.hint or "") and "apps" in (mapped.hint or "")
    other = api_error(ApiException(status=500, reason="boom"), target="t", api=_Api(), what="x")  # type: ignore[arg-type]
    assert type(other) is TargetError


def test_transport_failures_map_to_unreachable():
    import urllib3

    refused = urllib3.exceptions.MaxRetryError(None, "/api", urllib3.exceptions.NewConnectionError(  # type: ignore[arg-type]
        None, "Failed to establish a new connection: [Errno 111] Connection refused"))
    for exc, text in [(ConnectionRefusedError(111, "Connection refused"), "connection refused"),
                      (refused, "connection refused"),
                      (socket.gaierror(-2, "Name or service not known"), "does not resolve"),
                      (TimeoutError("timed out"), "timed out")]:
        mapped = api_error(exc, target="t", api=_Api(), what="list pods")  # type: ignore[arg-type]
        assert isinstance(mapped, UnreachableError), exc
        assert text in mapped.message and "reachable" in (mapped.hint or "")


def test_kubernetes_context_settings_are_validated_with_marks():
    c = parse_contexts("contexts:\n  k: {type: kubernetes, context: prod, namespace: apps, selector: app=web,"
                       " container: app, exec_protocol: v4, connect_timeout: 3}\n", "c.yaml")
    s = c.get("k").settings
    assert (s.context, s.namespace, s.selector, s.container, s.exec_protocol) == ("prod", "apps", "app=web", "app", "v4")
    with pytest.raises(ContextError, match="exec_protocol.*one of: auto, v5, v4") as ei:
        parse_contexts("contexts:\n  k:\n    type: kubernetes\n    exec_protocol: v9\n", "c.yaml")
    assert str(ei.value.mark) == "c.yaml:4:20"

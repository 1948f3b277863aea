"""Kubernetes API access for the kubernetes target: kubeconfig, one cached API client, pod lookup, errors.

- The kubeconfig is `kubeconfig:` of the context, else `$KUBECONFIG` (a `:`-separated list, merged as
  kubectl does), else `~/.kube/config`. One `ApiClient` per (files, their mtimes, kube context) is
  built and reused by every target of the process (a CLI run is one process), so ten contexts on one
  cluster share one client and one connection pool.
- The official client is blocking (urllib3, websocket-client): every call runs in a daemon thread with
  a deadline (`call_blocking`), so a black-holed API server can't hang the run, nor its exit.
- Every failure of the client is mapped once, here (`api_error`), to UnreachableError, AuthError or
  TargetError with a hint kept as a constant below.
"""
from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from clipipe.errors import AuthError, TargetError, UnreachableError, did_you_mean

T = TypeVar("T")

HINT_NO_KUBECONFIG = ("set `kubeconfig:` on the context, or $KUBECONFIG, or create ~/.kube/config "
                      "(e.g. with your cloud's `get-credentials` command)")
HINT_CONTEXT = "kube contexts in {path}: {names}; set `context:` to one of them (or omit it for the current one)"
HINT_AUTH = ("the credentials of kube context {context} were refused by {server}: refresh them "
             "(`kubectl config view --minify`; an expired token or client certificate is the usual cause)")
HINT_FORBIDDEN = ("the user of kube context {context} lacks RBAC permission for this; ask for "
                  "`create` on pods/exec (and pods/portforward) in namespace {namespace}")
HINT_UNREACHABLE = "is the cluster up and {server} reachable from here (VPN, proxy, firewall)?"
HINT_TLS = ("the API server's certificate did not verify: check certificate-authority(-data) of the "
            "cluster in the kubeconfig")
HINT_POD = "pods in namespace {namespace}: {names}; set `pod:` or `selector:` on the context"
HINT_SELECTOR = "check `selector:` and `namespace:`; `kubectl get pods -n {namespace} -l '{selector}'` lists them"
HINT_CONTAINER = "containers of pod {pod}: {names}; set `container:` to one of them"

#: urllib3 retries per API call: one retry covers a keep-alive connection the server closed while
#: idle; more would only delay the "unreachable" answer.
API_RETRIES = 1

_HANDSHAKE_RE = re.compile(r"Handshake status (\d{3})")
_MESSAGE_RE = re.compile(r'"message":\s*"((?:[^"\\]|\\.)*)"')


@dataclass
class KubeAPI:
    """One API client for one kube context, shared by the targets that use that context."""

    client: Any                        #: kubernetes.client.ApiClient
    core: Any                          #: kubernetes.client.CoreV1Api
    context: str                       #: the kube context's name (resolved when the setting is empty)
    server: str                        #: the API server URL
    namespace: str | None              #: the kube context's default namespace
    paths: list[str] = field(default_factory=list)


@dataclass
class PodRef:
    """The pod (and container) a kubernetes target execs into, and how it was chosen."""

    name: str
    namespace: str
    container: str | None              #: None: the pod's only container
    containers: list[str]
    chosen_by: str                     #: "pod: web-0" or "selector app=web (first Running of 3)"


_CACHE: dict[tuple[Any, ...], KubeAPI] = {}
_CACHE_LOCK = threading.Lock()


def kubeconfig_paths(setting: str | None) -> list[str]:
    """The kubeconfig files to read, in kubectl's order of precedence."""
    if setting:
        return [os.path.expanduser(setting)]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [os.path.expanduser(p) for p in env.split(os.pathsep) if p]
    return [os.path.expanduser("~/.kube/config")]


def load_api(setting: str | None, context: str | None, target: str) -> KubeAPI:
    """The (cached) API client of kube `context` from the kubeconfig; TargetError when it can't be built."""
    import yaml
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    paths = kubeconfig_paths(setting)
    present = [p for p in paths if os.path.isfile(p)]
    if not present:
        raise TargetError(f"no kubeconfig found (looked at {', '.join(paths)})", target=target,
                          hint=HINT_NO_KUBECONFIG)
    key = (tuple((p, os.stat(p).st_mtime_ns) for p in present), context)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        config_file: Any = present[0] if len(present) == 1 else os.pathsep.join(present)
        try:
            contexts, active = config.list_kube_config_contexts(config_file)
        except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError, AttributeError) as exc:
            raise TargetError(f"can't read kubeconfig {config_file}: {_config_why(exc)}", target=target,
                              hint=HINT_NO_KUBECONFIG) from exc
        names = [c.get("name") for c in contexts or []]
        chosen = context or (active or {}).get("name")
        if not chosen:
            raise TargetError(f"kubeconfig {config_file} has no current-context and the context sets no "
                              "`context:`", target=target,
                              hint=HINT_CONTEXT.format(path=config_file, names=", ".join(map(str, names))))
        if chosen not in names:
            raise TargetError(f"kube context {chosen!r} is not in {config_file}" + did_you_mean(chosen, names),
                              target=target,
                              hint=HINT_CONTEXT.format(path=config_file, names=", ".join(map(str, names)) or "none"))
        conf = type.__call__(client.Configuration)
        try:
            config.load_kube_config(config_file=config_file, context=chosen, client_configuration=conf,
                                    persist_config=False)
        except (ConfigException, yaml.YAMLError, OSError, ValueError, TypeError) as exc:
            raise TargetError(f"can't use kube context {chosen!r} of {config_file}: {_config_why(exc)}",
                              target=target) from exc
        conf.retries = API_RETRIES
        api_client = client.ApiClient(configuration=conf)
        ns = next((c.get("context", {}).get("namespace") for c in contexts if c.get("name") == chosen), None)
        api = KubeAPI(api_client, client.CoreV1Api(api_client), chosen, str(conf.host), ns, present)
        _CACHE[key] = api
        return api


def _config_why(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.replace("Invalid kube-config file. ", "")


def clear_cache() -> None:
    """Forget every cached API client (tests that restart a stand-in on the same files)."""
    with _CACHE_LOCK:
        for api in _CACHE.values():
            try:
                api.client.close()
            except Exception:  # noqa: BLE001 - best effort: a pool that fails to close is gone anyway
                pass
        _CACHE.clear()


async def call_blocking(fn: Callable[[], T], timeout: float, what: str, target: str) -> T:
    """Run a blocking client call in a daemon thread; UnreachableError when it overruns `timeout`.

    A daemon thread (not the default executor) so a call stuck on a dead server is abandoned for real:
    the executor's threads would be joined at interpreter exit.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[T] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if not fut.done():
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, False, exc)
        else:
            loop.call_soon_threadsafe(settle, True, result)

    threading.Thread(target=work, name=f"clipipe-k8s-{what}", daemon=True).start()
    try:
        return await asyncio.wait_for(fut, timeout)
    except asyncio.TimeoutError as exc:
        raise UnreachableError(f"no answer from the Kubernetes API within {timeout:g}s ({what})",
                               target=target, hint="is the API server reachable?") from exc


def status_of(exc: BaseException) -> tuple[int | None, str]:
    """The HTTP status and the metav1.Status message in a client exception, when there are some."""
    status = getattr(exc, "status", None)
    body = getattr(exc, "body", None)
    text = str(getattr(exc, "reason", "") or "")
    if not status:
        m = _HANDSHAKE_RE.search(text)     # a websocket upgrade refused: "Handshake status 403 ..."
        status = int(m[1]) if m else None
    message = ""
    if body:
        try:
            message = str(json.loads(body).get("message") or "")
        except (ValueError, AttributeError, TypeError):
            message = ""
    if not message:
        m = _MESSAGE_RE.search(text)
        if m:
            message = m[1].encode().decode("unicode_escape", "replace")
    return (int(status) if status else None), message


def api_error(exc: BaseException, *, target: str, api: KubeAPI, what: str,
              namespace: str | None = None) -> BaseException:
    """One typed error for any failure of a client call (`what` says what we were doing)."""
    if isinstance(exc, (TargetError, asyncio.CancelledError)):
        return exc
    fmt = {"context": api.context, "server": api.server, "namespace": namespace or api.namespace or "default"}
    status, message = status_of(exc)
    if status == 401:
        return AuthError(f"{what}: {api.server} answered 401 Unauthorized", target=target,
                         hint=HINT_AUTH.format(**fmt))
    if status == 403:
        return AuthError(f"{what}: forbidden: {message or '403 Forbidden'}", target=target,
                         hint=HINT_FORBIDDEN.format(**fmt))
    if status is not None and status not in (0,):
        return TargetError(f"{what}: {message or f'HTTP {status}'}", target=target)
    return _transport_error(exc, target=target, what=what, fmt=fmt)


def _transport_error(exc: BaseException, *, target: str, what: str, fmt: dict[str, str]) -> BaseException:
    """Connection-level failures: refused, DNS, timeout, TLS."""
    cause: BaseException | None = exc
    for _ in range(6):                      # MaxRetryError.reason, ApiException's text, __cause__ ...
        if cause is None:
            break
        if isinstance(cause, ssl.SSLError) or "CERTIFICATE_VERIFY_FAILED" in str(cause):
            return UnreachableError(f"{what}: TLS with {fmt['server']} failed: {_short(cause)}", target=target,
                                    hint=HINT_TLS)
        if isinstance(cause, socket.gaierror) or "Name or service not known" in str(cause) \
                or "Temporary failure in name resolution" in str(cause):
            return UnreachableError(f"{what}: the API server's name does not resolve ({fmt['server']})",
                                    target=target, hint=HINT_UNREACHABLE.format(**fmt))
        if isinstance(cause, ConnectionRefusedError) or "Connection refused" in str(cause):
            return UnreachableError(f"{what}: connection refused by {fmt['server']}", target=target,
                                    hint=HINT_UNREACHABLE.format(**fmt))
        if isinstance(cause, (TimeoutError, socket.timeout)) or "timed out" in str(cause).lower():
            return UnreachableError(f"{what}: {fmt['server']} timed out", target=target,
                                    hint=HINT_UNREACHABLE.format(**fmt))
        cause = getattr(cause, "reason", None) if isinstance(getattr(cause, "reason", None), BaseException) \
            else cause.__cause__ or cause.__context__
    if isinstance(exc, (OSError, EOFError)) or type(exc).__module__.startswith(("urllib3", "websocket")):
        return UnreachableError(f"{what}: {fmt['server']}: {_short(exc)}", target=target,
                                hint=HINT_UNREACHABLE.format(**fmt))
    return TargetError(f"{what}: {_short(exc)}", target=target)


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "reason", "") or exc) or type(exc).__name__
    return text.split(" -+-+- ")[0].strip()[:300]


# ------------------------------------------------------------------------------------------ pods
async def resolve_pod(api: KubeAPI, *, namespace: str, pod: str | None, selector: str | None,
                      container: str | None, target: str, timeout: float) -> PodRef:
    """The pod to exec into: `pod`, else the first Running pod matching `selector` (by name)."""
    core = api.core
    if pod:
        try:
            obj = await call_blocking(lambda: core.read_namespaced_pod(pod, namespace, _request_timeout=timeout),
                                      timeout + 1, "get pod", target)
        except Exception as exc:
            if status_of(exc)[0] == 404:
                names = await _pod_names(api, namespace, timeout, target)
                raise TargetError(f"pod {pod!r} not found in namespace {namespace!r}" + did_you_mean(pod, names),
                                  target=target,
                                  hint=HINT_POD.format(namespace=namespace, names=_listing(names))) from exc
            raise api_error(exc, target=target, api=api, what=f"get pod {namespace}/{pod}",
                            namespace=namespace) from exc
        phase = getattr(obj.status, "phase", None)
        if phase != "Running":
            raise TargetError(f"pod {pod!r} is {phase or 'in an unknown phase'}, not Running", target=target,
                              hint=f"`kubectl describe pod -n {namespace} {pod}` says why")
        chosen, how = obj, f"pod: {pod}"
    else:
        assert selector
        try:
            listing = await call_blocking(
                lambda: core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=timeout),
                timeout + 1, "list pods", target)
        except Exception as exc:
            raise api_error(exc, target=target, api=api, what=f"list pods matching {selector!r}",
                            namespace=namespace) from exc
        items = sorted(listing.items or [], key=lambda p: p.metadata.name)
        running = [p for p in items if getattr(p.status, "phase", None) == "Running"
                   and not getattr(p.metadata, "deletion_timestamp", None)]
        if not running:
            others = ", ".join(f"{p.metadata.name} ({p.status.phase})" for p in items)
            raise TargetError(f"no Running pod matches selector {selector!r} in namespace {namespace!r}"
                              + (f" (matching but not Running: {others})" if others else ""),
                              target=target, hint=HINT_SELECTOR.format(namespace=namespace, selector=selector))
        chosen = running[0]
        how = f"selector {selector} (first Running of {len(running)}, by name)"
    containers = [c.name for c in (chosen.spec.containers or [])]
    if container is not None and container not in containers:
        raise TargetError(f"container {container!r} not found in pod {chosen.metadata.name!r}"
                          + did_you_mean(container, containers), target=target,
                          hint=HINT_CONTAINER.format(pod=chosen.metadata.name, names=_listing(containers)))
    if container is None and len(containers) > 1:
        container = containers[0]          # what kubectl picks without a default-container annotation
    return PodRef(chosen.metadata.name, namespace, container, containers, how)


async def _pod_names(api: KubeAPI, namespace: str, timeout: float, target: str) -> list[str]:
    try:
        listing = await call_blocking(lambda: api.core.list_namespaced_pod(namespace, _request_timeout=timeout),
                                      timeout + 1, "list pods", target)
    except Exception:  # noqa: BLE001 - only for a suggestion
        return []
    return [p.metadata.name for p in listing.items or []]


def _listing(names: list[str], most: int = 10) -> str:
    if not names:
        return "none"
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


async def resolve_service(api: KubeAPI, *, namespace: str, service: str, port: int, target: str,
                          timeout: float) -> tuple[PodRef, int]:
    """A service's port -> (a Running pod behind it, the pod port), as `kubectl port-forward svc/X` does."""
    try:
        svc = await call_blocking(
            lambda: api.core.read_namespaced_service(service, namespace, _request_timeout=timeout),
            timeout + 1, "get service", target)
    except Exception as exc:
        if status_of(exc)[0] == 404:
            raise TargetError(f"service {service!r} not found in namespace {namespace!r}", target=target) from exc
        raise api_error(exc, target=target, api=api, what=f"get service {namespace}/{service}",
                        namespace=namespace) from exc
    selector = ",".join(f"{k}={v}" for k, v in sorted((svc.spec.selector or {}).items()))
    if not selector:
        raise TargetError(f"service {service!r} has no selector (an external or headless-manual service): "
                          "forward to a pod instead", target=target)
    ports = list(svc.spec.ports or [])
    match = next((p for p in ports if p.port == port), None)
    if match is None:
        raise TargetError(f"service {service!r} has no port {port} (ports: "
                          f"{', '.join(str(p.port) for p in ports) or 'none'})", target=target)
    ref = await resolve_pod(api, namespace=namespace, pod=None, selector=selector, container=None,
                            target=target, timeout=timeout)
    ref.chosen_by = f"service {service} -> {ref.chosen_by}"
    tp = match.target_port if match.target_port is not None else port
    if isinstance(tp, str) and not tp.isdigit():
        tp = await _named_port(api, ref, tp, target, timeout)
    return ref, int(tp)


async def _named_port(api: KubeAPI, ref: PodRef, name: str, target: str, timeout: float) -> int:
    obj = await call_blocking(lambda: api.core.read_namespaced_pod(ref.name, ref.namespace,
                                                                   _request_timeout=timeout),
                              timeout + 1, "get pod", target)
    for c in obj.spec.containers or []:
        for p in c.ports or []:
            if p.name == name:
                return int(p.container_port)
    raise TargetError(f"pod {ref.name!r} has no container port named {name!r}", target=target)

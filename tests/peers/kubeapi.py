"""A Kubernetes API stand-in for tests: the real REST, exec and port-forward wire protocols on loopback.

No cluster runs here, so the tests start this server instead and drive it with the real `kubernetes`
client through a generated kubeconfig, exactly as clipipe drives a real API server:

- `GET /version`, `GET /api/v1/namespaces/NS/pods[?labelSelector=...]`, `GET .../pods/NAME`,
  `GET .../services/NAME`, answered with real v1 JSON objects and metav1.Status errors;
- bearer-token auth: a wrong or missing token gets 401, a token with role "view" gets 403 on exec and
  port-forward (as RBAC would);
- exec (`.../pods/NAME/exec?command=..&stdin=..`) over RFC 6455 with the subprotocols
  `v5.channel.k8s.io`, `v4.channel.k8s.io` and `channel.k8s.io` (the first one the client offers that
  the server is configured to speak): binary messages whose first byte is the channel (0 stdin,
  1 stdout, 2 stderr, 3 status: a metav1.Status from v4 on, 4 resize, 255 close-a-channel in v5).
  The command runs as a local process in a per-pod, per-container directory; a pod made with
  `python=False` refuses to exec python the way containerd does ("executable file not found");
- port-forward (`.../pods/NAME/portforward?ports=P`): two channels per port (data 2i, error 2i+1),
  the first message on each carrying the port as 2 bytes little-endian, then bytes relayed to a local
  TCP address of the test's choosing (`pod.ports[P]`), errors on the error channel.

Like a kubelet, the stand-in closes an exec'd process's stdin when the client's connection ends but
never kills the process: whatever cleans up after a dead controller must be clipipe's own doing.
"""
from __future__ import annotations

import datetime
import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from . import wsproto
from .kubeobjects import Pod, Service, matches, parse_selector, status

V5, V4, V1 = "v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"
PF_PROTOCOLS = ("portforward.k8s.io", V4, V1)   #: what a kubelet's websocket port-forward accepts
STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255

#: Read size of the pumps from an exec'd process's stdout/stderr into websocket messages.
PUMP_READ = 256 * 1024

_PATH_RE = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|services)(?:/([^/]+))?(?:/(exec|portforward))?$")
_PYTHON_RE = re.compile(r"^python[0-9.]*$")


@dataclass
class ExecRecord:
    """One exec the stand-in served (for assertions)."""

    pod: str
    container: str
    command: list[str]
    protocol: str
    pid: int | None = None
    stdin_closed_by: str = ""                   #: "v5-close", "disconnect" or "" (still open)


class KubeAPIServer:
    """The stand-in API server; see the module docstring. `start()` it, `stop()` it."""

    def __init__(self, *, token: str = "standin-token", tls: bool = False,
                 protocols: tuple[str, ...] = (V5, V4, V1), root: Path | None = None) -> None:
        self.tokens: dict[str, str] = {token: "admin"}   #: token -> "admin" or "view"
        self.token = token
        self.tls = tls
        self.protocols = protocols
        self.pods: dict[tuple[str, str], Pod] = {}
        self.services: dict[tuple[str, str], Service] = {}
        self.execs: list[ExecRecord] = []
        self.forwards: list[tuple[str, int]] = []        #: (pod, port) of every port-forward served
        self.requests: list[str] = []                    #: "METHOD path" of every request
        self._own_root = root is None
        self.root = root or Path(tempfile.mkdtemp(prefix="kubeapi-standin-"))
        self.ca_pem = b""
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.port = 0

    # ------------------------------------------------------------------ setup
    def add_pod(self, name: str, **kw: Any) -> Pod:
        """Add (or replace) a pod; its directories are created under the server's root."""
        pod = Pod(name, **kw)
        self.pods[(pod.namespace, name)] = pod
        for c in pod.containers:
            self.pod_dir(pod, c).mkdir(parents=True, exist_ok=True)
        return pod

    def remove_pod(self, name: str, namespace: str = "default") -> None:
        """Delete a pod (its directory stays, as a volume would)."""
        self.pods.pop((namespace, name), None)

    def add_service(self, name: str, selector: dict[str, str], ports: dict[int, int | str],
                    namespace: str = "default") -> Service:
        """Add a service."""
        svc = Service(name, selector, ports, namespace)
        self.services[(namespace, name)] = svc
        return svc

    def pod_dir(self, pod: Pod, container: str | None = None) -> Path:
        """Where commands exec'd in the pod's container run."""
        return self.root / pod.namespace / pod.name / (container or pod.containers[0])

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, *, context: str = "standin", token: str | None = None,
                   namespace: str = "default", extra_contexts: tuple[str, ...] = ()) -> Path:
        """Write a kubeconfig (YAML is a superset of JSON) reaching this server as `context`."""
        import base64

        cluster: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(self.ca_pem).decode()
        names = (context, *extra_contexts)
        doc = {"apiVersion": "v1", "kind": "Config", "current-context": context,
               "clusters": [{"name": "standin", "cluster": cluster}],
               "users": [{"name": "tester", "user": {"token": token if token is not None else self.token}}],
               "contexts": [{"name": n, "context": {"cluster": "standin", "user": "tester",
                                                    "namespace": namespace}} for n in names]}
        path.write_text(json.dumps(doc, indent=1))
        return path

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> KubeAPIServer:
        """Listen on 127.0.0.1, a free port; serve in a background thread."""
        server = self

        class Handler(_Handler):
            api = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._httpd.daemon_threads = True
        if self.tls:
            ctx = self._tls_context()
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="kubeapi-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self, *, keep_root: bool = False) -> None:
        """Stop serving, kill what exec started, remove the root directory (unless asked not to)."""
        self._shutdown()
        with self._lock:
            procs, self._procs = self._procs, []
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                p.wait()
        if self._own_root and not keep_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop and start again on the same port (a control-plane restart), pods and processes kept."""
        self._shutdown()
        self.start()

    def drop_connections(self) -> None:
        """Cut every open client connection (a network blip), keep listening."""
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _shutdown(self) -> None:
        """Stop listening and cut the open connections (keep-alive ones too)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self.drop_connections()

    def live_processes(self) -> list[subprocess.Popen[bytes]]:
        """Exec'd processes that have not exited."""
        with self._lock:
            return [p for p in self._procs if p.poll() is None]

    def _tls_context(self) -> ssl.SSLContext:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubeapi-standin")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                            x509.DNSName("localhost")]), critical=False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        self.ca_pem = cert.public_bytes(serialization.Encoding.PEM)
        cert_path, key_path = self.root / "server.crt", self.root / "server.key"
        cert_path.write_bytes(self.ca_pem)
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx

    # ------------------------------------------------------------------ exec
    def spawn(self, pod: Pod, container: str, command: list[str], stdin: bool) -> subprocess.Popen[bytes]:
        """Start `command` as the pod's process (its own session, like a container's exec)."""
        if not pod.python and _PYTHON_RE.match(os.path.basename(command[0])):
            raise FileNotFoundError(command[0])
        cwd = self.pod_dir(pod, container)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd), "HOSTNAME": pod.name,
               "KUBE_STANDIN_POD": pod.name, "KUBE_STANDIN_CONTAINER": container, "LANG": "C.UTF-8"}
        proc = subprocess.Popen(command, cwd=cwd, env=env, start_new_session=True,
                                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0)
        with self._lock:
            self._procs.append(proc)
        return proc


class _Handler(BaseHTTPRequestHandler):
    """One HTTP connection to the stand-in."""

    api: KubeAPIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def setup(self) -> None:
        super().setup()
        with self.api._lock:
            self.api._conns.add(self.connection)

    def finish(self) -> None:
        with self.api._lock:
            self.api._conns.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # ------------------------------------------------------------------ plumbing
    def _json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, reason: str, message: str, **details: Any) -> None:
        self._json(code, status(code, reason, message, **details))

    def _role(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if not auth.lower().startswith("bearer "):
            return None
        return self.api.tokens.get(auth[7:].strip())

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.do_GET()

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        self.api.requests.append(f"{self.command} {url.path}")
        role = self._role()
        if role is None:
            self._error(401, "Unauthorized", "Unauthorized")
            return
        if url.path == "/version":
            self._json(200, {"major": "1", "minor": "31", "gitVersion": "v1.31.0-standin",
                             "platform": "linux/amd64"})
            return
        m = _PATH_RE.match(url.path)
        if not m:
            self._error(404, "NotFound", "the server could not find the requested resource")
            return
        ns, kind, name, sub = m.groups()
        query = parse_qs(url.query, keep_blank_values=True)
        if kind == "services":
            svc = self.api.services.get((ns, name or ""))
            if svc is None:
                self._error(404, "NotFound", f'services "{name}" not found', name=name, kind="services")
            else:
                self._json(200, svc.to_json())
            return
        if name is None:
            self._list_pods(ns, query)
            return
        pod = self.api.pods.get((ns, name))
        if pod is None:
            self._error(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods")
            return
        if sub is None:
            self._json(200, pod.to_json())
            return
        if role != "admin":
            self._error(403, "Forbidden", f'pods "{name}" is forbidden: User "tester" cannot create '
                        f'resource "pods/{sub}" in API group "" in the namespace "{ns}"', name=name, kind="pods")
            return
        if sub == "exec":
            self._exec(pod, query)
        else:
            self._portforward(pod, query)

    def _list_pods(self, ns: str, query: dict[str, list[str]]) -> None:
        try:
            selector = parse_selector(query.get("labelSelector", [""])[0])
        except ValueError as exc:
            self._error(400, "BadRequest", str(exc))
            return
        items = [p.to_json() for (pns, _), p in sorted(self.api.pods.items())
                 if pns == ns and matches(p.labels, selector)]
        self._json(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
                         "items": items})

    def _upgrade(self, offered_ok: tuple[str, ...], allow_none: bool) -> str | None:
        """Answer the RFC 6455 handshake; the chosen subprotocol, or None after an error reply."""
        if self.headers.get("Upgrade", "").lower() != "websocket" or not self.headers.get("Sec-WebSocket-Key"):
            self._error(400, "BadRequest", "Upgrade request required")
            return None
        offered = [p.strip() for p in self.headers.get("Sec-WebSocket-Protocol", "").split(",") if p.strip()]
        chosen = next((p for p in offered if p in offered_ok), None)
        if chosen is None:
            if offered or not allow_none:
                self._error(400, "BadRequest", f"unable to upgrade: no supported subprotocol in {offered}")
                return None
            chosen = ""
        self.send_response(101, "Switching Protocols")
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", wsproto.accept_key(self.headers["Sec-WebSocket-Key"]))
        if chosen:
            self.send_header("Sec-WebSocket-Protocol", chosen)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        return chosen

    # ------------------------------------------------------------------ exec
    def _exec(self, pod: Pod, q: dict[str, list[str]]) -> None:
        command = q.get("command", [])
        container = (q.get("container") or [""])[0]
        want_stdin = (q.get("stdin") or ["false"])[0] == "true"
        if not command:
            self._error(400, "BadRequest", "you must specify at least 1 command")
            return
        if not container:
            if len(pod.containers) > 1:
                self._error(400, "BadRequest", f"a container name must be specified for pod {pod.name}, "
                            f"choose one of: [{' '.join(pod.containers)}]")
                return
            container = pod.containers[0]
        if container not in pod.containers:
            self._error(400, "BadRequest", f"container {container} is not valid for pod {pod.name}")
            return
        if pod.phase != "Running":
            self._error(400, "BadRequest", f"pod {pod.name} does not have a host assigned")
            return
        proto = self._upgrade(self.api.protocols, allow_none=False)
        if proto is None:
            return
        rec = ExecRecord(pod.name, container, list(command), proto)
        self.api.execs.append(rec)
        send = wsproto.FrameSender(self.connection)
        try:
            proc = self.api.spawn(pod, container, command, want_stdin)
        except OSError as exc:
            msg = (f"Internal error occurred: error executing command in container: failed to exec in "
                   f"container: OCI runtime exec failed: exec failed: unable to start container process: "
                   f'exec: "{command[0]}": executable file not found in $PATH: unknown'
                   if isinstance(exc, FileNotFoundError) else f"Internal error occurred: {exc}")
            self._send_status(send, proto, None, msg)
            send.close()
            return
        rec.pid = proc.pid
        self._serve_exec(send, proto, proc, rec)

    def _serve_exec(self, send: wsproto.FrameSender, proto: str, proc: subprocess.Popen[bytes],
                    rec: ExecRecord) -> None:
        pumps = [threading.Thread(target=_pump, args=(stream, ch, send), daemon=True)
                 for stream, ch in ((proc.stdout, STDOUT), (proc.stderr, STDERR))]
        for t in pumps:
            t.start()
        reader = threading.Thread(target=self._exec_input, args=(proc, proto, send, rec), daemon=True)
        reader.start()
        for t in pumps:
            t.join()
        code = proc.wait()
        self._send_status(send, proto, code, "")
        send.close()
        # the client answers our close frame; its reader thread ends on that or on EOF
        reader.join(5)
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _exec_input(self, proc: subprocess.Popen[bytes], proto: str, send: wsproto.FrameSender,
                    rec: ExecRecord) -> None:
        """Client messages: stdin bytes, v5 close-stdin, resize; EOF or close ends stdin (like a kubelet)."""
        stdin = proc.stdin
        try:
            while True:
                _op, msg = wsproto.read_message(self.rfile, send)
                if not msg:
                    continue
                ch, data = msg[0], msg[1:]
                if ch == STDIN and stdin is not None and data:
                    try:
                        stdin.write(data)
                    except (BrokenPipeError, ValueError):
                        pass
                elif ch == CLOSE and proto == V5 and data[:1] == bytes([STDIN]):
                    rec.stdin_closed_by = "v5-close"
                    if stdin is not None:
                        stdin.close()
                        stdin = None
        except (wsproto.WSClosed, OSError, ValueError):
            pass
        if stdin is not None:
            rec.stdin_closed_by = rec.stdin_closed_by or "disconnect"
            try:
                stdin.close()
            except OSError:
                pass

    @staticmethod
    def _send_status(send: wsproto.FrameSender, proto: str, code: int | None, message: str) -> None:
        if proto == V1:     # the original protocol: an error text on failure, nothing on success
            if code != 0:
                send.binary(STATUS, (message or f"command terminated with non-zero exit code: {code}").encode())
            return
        if code == 0:
            body: dict[str, Any] = {"metadata": {}, "status": "Success"}
        elif code is None:
            body = {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError",
                    "code": 500}
        else:
            # a shell's exit status: killed by a signal N shows as a negative code here -> 128+N
            exit_code = code if code >= 0 else 128 - code
            body = {"metadata": {}, "status": "Failure",
                    "message": f"command terminated with non-zero exit code: error executing command "
                               f"[...], exit code {exit_code}", "reason": "NonZeroExitCode",
                    "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]}}
        send.binary(STATUS, json.dumps(body).encode())

    # ------------------------------------------------------------------ port-forward
    def _portforward(self, pod: Pod, q: dict[str, list[str]]) -> None:
        try:
            ports = [int(p) for v in q.get("ports", []) for p in v.split(",") if p]
        except ValueError:
            self._error(400, "BadRequest", "invalid port in `ports`")
            return
        if not ports:
            self._error(400, "BadRequest", "query parameter \"ports\" is required")
            return
        if self._upgrade(PF_PROTOCOLS, allow_none=True) is None:
            return
        send = wsproto.FrameSender(self.connection)
        conns: dict[int, socket.socket] = {}
        for i, port in enumerate(ports):
            self.api.forwards.append((pod.name, port))
            le = port.to_bytes(2, "little")
            send.binary(2 * i, le)
            send.binary(2 * i + 1, le)
            dest = pod.ports.get(port)
            try:
                if dest is None:
                    raise ConnectionRefusedError(111, "connection refused")
                conn = socket.create_connection(dest, timeout=5)
                conn.settimeout(None)
                conns[i] = conn
                threading.Thread(target=_pump_socket, args=(conn, 2 * i, send), daemon=True).start()
            except OSError as exc:
                send.binary(2 * i + 1, (f"error forwarding port {port} to pod {pod.uid}, uid : failed to "
                                        f"connect to localhost:{port} inside namespace: dial tcp4 "
                                        f"127.0.0.1:{port}: connect: {exc.strerror or exc}").encode())
        try:
            while True:
                _op, msg = wsproto.read_message(self.rfile, send)
                if len(msg) < 2 or msg[0] % 2 or msg[0] // 2 not in conns:
                    continue
                try:
                    conns[msg[0] // 2].sendall(msg[1:])
                except OSError:
                    break
        except (wsproto.WSClosed, OSError):
            pass
        for conn in conns.values():
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        send.close()


def _pump(stream: Any, channel: int, send: wsproto.FrameSender) -> None:
    """A process pipe -> channel messages until EOF (a gone client just drains the pipe)."""
    fd = stream.fileno()
    while True:
        data = os.read(fd, PUMP_READ)
        if not data:
            break
        send.binary(channel, data)
    stream.close()


def _pump_socket(conn: socket.socket, channel: int, send: wsproto.FrameSender) -> None:
    """A forwarded TCP connection -> its data channel; its EOF closes the websocket (as a kubelet does)."""
    try:
        while True:
            data = conn.recv(PUMP_READ)
            if not data:
                break
            if not send.binary(channel, data):
                break
    except OSError:
        pass
    send.close()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """The pids still alive after waiting up to `timeout` seconds for them to exit."""
    deadline = time.monotonic() + timeout
    alive = pids
    while True:
        alive = [p for p in alive if _alive(p)]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def main() -> None:
    """`python -m tests.peers.kubeapi KUBECONFIG POD...`: serve in a process of its own until stdin closes.

    Benchmarks use this so the stand-in does not share the measured process's GIL (a real API server
    and kubelet are other processes too).
    """
    import sys

    server = KubeAPIServer().start()
    for name in sys.argv[2:]:
        server.add_pod(name)
    server.kubeconfig(Path(sys.argv[1]))
    print(f"ready {server.url} {server.root}", flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()

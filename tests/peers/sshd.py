"""Real OpenSSH sshd peers for tests and benchmarks, started on loopback with generated keys.

`start_sshd()` runs Debian's /usr/sbin/sshd in the foreground (`-D -e`) on 127.0.0.N and a free port,
with its own host key, a client key pair, an authorized_keys file and a known_hosts file, all in a
fresh directory under /tmp (mode 0755 so a dedicated login user can read the public files; the
private client key stays 0600 and belongs to the controller). `start_fleet(n)` starts n of them on
127.0.0.2, .3, ... sharing one key set.

Logins go to a dedicated user (`clipipe-test`) when we run as root: root's .bashrc on these machines
runs `pyenv init`, adding ~80 ms to every remote command, which would drown what we measure.
Nothing here is a mock: the tests talk to the real daemon with the real protocol.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
TEST_USER = "clipipe-test"


def sshd_available() -> str | None:
    """None when sshd and ssh-keygen are usable here, else the reason they are not."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    if not os.path.exists(SSH_KEYGEN):
        return "ssh-keygen is missing"
    return None


def ensure_test_user(name: str = TEST_USER) -> str:
    """The login user for test peers: `name` (created when we are root and it is absent), else us."""
    me = pwd.getpwuid(os.getuid()).pw_name
    if os.getuid() != 0:
        return me
    try:
        pwd.getpwnam(name)
    except KeyError:
        r = subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{name}",
                            "--shell", "/bin/sh", name], capture_output=True, text=True)
        if r.returncode not in (0, 9):      # 9: created meanwhile by a concurrent run
            return me
    # A fresh account's password is "!" (locked); sshd without PAM refuses locked accounts even
    # for public-key logins. "*" = no password, not locked.
    subprocess.run(["usermod", "-p", "*", name], capture_output=True)
    return name


def ensure_password_user(name: str, password: str) -> str:
    """A login user whose password is `password` (for `password_env` tests); needs root."""
    if os.getuid() != 0:
        raise PermissionError("creating a password user needs root")
    try:
        pwd.getpwnam(name)
    except KeyError:
        r = subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{name}",
                            "--shell", "/bin/sh", name], capture_output=True, text=True)
        if r.returncode not in (0, 9):
            raise RuntimeError(f"useradd {name}: {r.stderr.strip()}")
    hashed = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=password, capture_output=True,
                            text=True, check=True).stdout.strip()
    subprocess.run(["usermod", "-p", hashed, name], check=True, capture_output=True)
    return name


def free_port(host: str) -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class KeySet:
    """Host key, client key pair and authorized_keys shared by one or more servers."""

    dir: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path

    @classmethod
    def generate(cls, directory: Path) -> KeySet:
        """Generate ed25519 host and client keys in `directory`."""
        directory.mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o755)
        host_key = directory / "ssh_host_ed25519_key"
        client_key = directory / "id_ed25519"
        for path in (host_key, client_key):
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "clipipe-test",
                            "-f", str(path)], check=True)
        auth = directory / "authorized_keys"
        auth.write_text((client_key.with_suffix(".pub")).read_text())
        os.chmod(auth, 0o644)
        os.chmod(client_key.with_suffix(".pub"), 0o644)
        return cls(directory, host_key, client_key, auth)

    def host_pub(self) -> str:
        """The public host key line (`ssh-ed25519 AAAA... comment`)."""
        return self.host_key.with_suffix(".pub").read_text().split("\n")[0].strip()


@dataclass
class SSHServer:
    """One running sshd and everything a client needs to reach it."""

    host: str
    port: int
    user: str
    key: Path                       #: private client key
    known_hosts: Path               #: a known_hosts file holding this server's key
    keys: KeySet
    proc: subprocess.Popen
    log: Path
    extra: dict = field(default_factory=dict)

    @property
    def address(self) -> str:
        """`user@host:port`, the form a `jump:` setting takes."""
        return f"{self.user}@{self.host}:{self.port}"

    def contexts_yaml(self, name: str, **settings: object) -> str:
        """A contexts.yaml entry (under `contexts:`) that reaches this server as context `name`."""
        fields = {"type": "ssh", "host": self.host, "port": self.port, "user": self.user,
                  "key": str(self.key), "known_hosts": str(self.known_hosts), **settings}
        lines = [f"  {name}:"]
        for k, v in fields.items():
            if isinstance(v, bool):
                v = "true" if v else "false"
            lines.append(f"    {k}: {v}")
        return "\n".join(lines) + "\n"

    def ssh_argv(self, *command: str, cipher: str = "aes128-gcm@openssh.com") -> list[str]:
        """An OpenSSH client command line reaching this server (batch mode, strict host keys)."""
        return ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "IdentitiesOnly=yes",
                "-i", str(self.key), "-p", str(self.port), "-c", cipher,
                f"{self.user}@{self.host}", *command]

    def run(self, command: str, timeout: float = 20, **kw: object) -> subprocess.CompletedProcess:
        """Run `command` on the server through a fresh OpenSSH connection (the test's own eyes)."""
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True,
                              timeout=timeout, **kw)  # type: ignore[call-overload]

    def stop(self) -> None:
        """Stop the daemon (and the sessions it serves)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_known_hosts(path: Path, servers: list[tuple[str, int]], host_pub: str) -> None:
    """known_hosts lines (`[host]:port key`) for each (host, port)."""
    with open(path, "a") as f:
        f.writelines(f"[{host}]:{port} {host_pub}\n" for host, port in servers)
    os.chmod(path, 0o644)


def start_sshd(keys: KeySet, host: str = "127.0.0.2", user: str | None = None,
               known_hosts: Path | None = None, options: dict[str, str] | None = None) -> SSHServer:
    """Start one sshd on `host` and a free port; return when it accepts connections."""
    user = user or ensure_test_user()
    if os.getuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)   # privilege separation dir
    last_err = ""
    for _attempt in range(5):
        port = free_port(host)
        tag = f"{host}-{port}"
        log = keys.dir / f"sshd-{tag}.log"
        opts = {
            "ListenAddress": f"{host}:{port}",
            "HostKey": str(keys.host_key),
            "PidFile": str(keys.dir / f"sshd-{tag}.pid"),
            "AuthorizedKeysFile": str(keys.authorized_keys),
            "UsePAM": "no",
            "StrictModes": "no",
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "PermitRootLogin": "prohibit-password",
            "LogLevel": "ERROR",
            "MaxStartups": "100",
            "MaxSessions": "100",
            "PrintMotd": "no",
            "Subsystem": "sftp internal-sftp",
            **(options or {}),
        }
        argv = [SSHD, "-D", "-e", "-f", "/dev/null"]
        for k, v in opts.items():
            argv += ["-o", f"{k}={v}"]
        logf = open(log, "wb")
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
        logf.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                with socket.create_connection((host, port), timeout=0.5) as s:
                    s.settimeout(2)
                    if s.recv(4).startswith(b"SSH-"):
                        kh = known_hosts or keys.dir / f"known_hosts-{tag}"
                        write_known_hosts(kh, [(host, port)], keys.host_pub())
                        return SSHServer(host, port, user, keys.client_key, kh, keys, proc, log)
            except OSError:
                time.sleep(0.05)
        last_err = log.read_text(errors="replace")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise RuntimeError(f"sshd did not start on {host}: {last_err.strip()}")


def start_fleet(n: int, keys: KeySet, user: str | None = None) -> list[SSHServer]:
    """Start n servers on 127.0.0.2 .. 127.0.0.(n+1), all listed in one shared known_hosts."""
    shared = keys.dir / "known_hosts-fleet"
    return [start_sshd(keys, f"127.0.0.{i + 2}", user, known_hosts=shared) for i in range(n)]


def new_keyset() -> KeySet:
    """A KeySet in a fresh /tmp directory readable by the test user (removed by `remove_keyset`)."""
    return KeySet.generate(Path(tempfile.mkdtemp(prefix="clipipe-sshd-")))


def remove_keyset(keys: KeySet) -> None:
    """Delete a KeySet's directory."""
    shutil.rmtree(keys.dir, ignore_errors=True)

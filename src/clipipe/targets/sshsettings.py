"""Settings of `type: ssh` contexts, apart from the target so contexts.yaml loads without asyncssh.

Loading contexts.yaml validates every context's settings; importing the SSH target (and asyncssh with
it, ~90 ms) waits until a target is made, so a fleet run can start its TCP connects first
(`clipipe.targets.preconnect`). The target module registers itself over the lazy factory here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from clipipe.targets.base import REGISTRY
from clipipe.targets.sshmux import FAST_CIPHER

DataPlane = Literal["auto", "agent", "openssh"]


def _d(text: str) -> dict[str, str]:
    return {"description": text}


@dataclass
class SSHSettings:
    """Settings of a `type: ssh` context."""

    host: str = field(metadata=_d("host name, address, or a Host alias from ssh_config"))
    user: str | None = field(default=None, metadata=_d("login user (default: ssh_config's, else yours)"))
    port: int | None = field(default=None, metadata=_d("TCP port (default: ssh_config's, else 22)"))
    key: str | None = field(default=None, metadata=_d("private key file (default: ssh-agent and ~/.ssh/id_*)"))
    password_env: str | None = field(default=None, metadata=_d(
        "name of an environment variable holding the password (never the password itself)"))
    jump: str | None = field(default=None, metadata=_d("jump host: `user@host:port` or another ssh context's name"))
    python: str = field(default="python3", metadata=_d("remote Python 3.8+ that runs the agent"))
    connect_timeout: float = field(default=10.0, metadata=_d("seconds to wait for connect and login"))
    known_hosts: str = field(default="~/.ssh/known_hosts", metadata=_d("known_hosts file checked for the host key"))
    insecure_skip_host_key_check: bool = field(default=False, metadata=_d(
        "accept any host key (man-in-the-middle risk; for throwaway test hosts only)"))
    compression: bool = field(default=False, metadata=_d("zlib compression (helps only on slow links)"))
    ciphers: list[str] = field(default_factory=lambda: [FAST_CIPHER], metadata=_d(
        "preferred ciphers, tried before the defaults (aes128-gcm: AES-NI, 5x asyncssh's chacha20)"))
    ssh_config: str | None = field(default="~/.ssh/config", metadata=_d(
        "OpenSSH client config whose Host aliases, HostName, User, Port, IdentityFile apply"))
    data_plane: DataPlane = field(default="auto", metadata=_d(
        "bulk streams: `openssh` (system ssh mux, Python off the byte path), `agent` (frames), `auto`"))

    def __post_init__(self) -> None:
        if self.port is not None and not 0 < self.port < 65536:
            raise ValueError(f"port {self.port} is out of range 1-65535")
        if self.connect_timeout <= 0:
            raise ValueError("connect_timeout must be > 0")
        if self.password_env is not None and not self.password_env.isidentifier():
            raise ValueError("password_env must be the NAME of an environment variable")


def parse_jump(text: str) -> tuple[str | None, str, int | None]:
    """`user@host:port` -> (user, host, port); user and port may be absent."""
    user, _, hostport = text.rpartition("@")
    host, port = hostport, None
    if hostport.startswith("["):
        host, _, rest = hostport[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif hostport.count(":") == 1:
        host, p = hostport.split(":")
        port = int(p)
    return (user or None), host, port


def _make_target(name: str, settings: SSHSettings) -> Any:
    """The SSH target, importing its module (and asyncssh) on first use."""
    from clipipe.targets.ssh import SSHTarget
    return SSHTarget(name, settings)


REGISTRY.setdefault("ssh", (SSHSettings, _make_target))

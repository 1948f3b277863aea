"""A fleet of real sshd peers described as contexts.yaml and as Ansible inventories, for fleet tests.

Builds on tests/peers/sshd.py (`start_fleet`: one sshd per loopback address 127.0.0.2, .3, ...
sharing one key set and one known_hosts). Adds the files a fleet run reads, a port with nothing
listening (an unreachable host), and `kill_tree` to drop a server and every session it serves
mid-run (the connection dies as it would when a host goes away).
"""
from __future__ import annotations

import os
import signal
from pathlib import Path

from peers.sshd import SSHServer, free_port


def contexts_yaml(servers: list[SSHServer], names: list[str], extra: str = "", groups: str = "") -> str:
    """contexts.yaml text: a local default, one ssh context per server, `extra` contexts, groups."""
    text = "contexts:\n  local: {type: local, default: true}\n"
    for server, name in zip(servers, names):
        text += server.contexts_yaml(name)
    text += extra
    if groups:
        text += "groups:\n" + groups
    return text


def dead_context(name: str, host: str = "127.0.0.250") -> str:
    """A contexts.yaml entry for an address and port where nothing listens (refused at once)."""
    return (f"  {name}:\n    type: ssh\n    host: {host}\n    port: {free_port(host)}\n"
            f"    connect_timeout: 3\n")


def inventory_ini(servers: list[SSHServer], names: list[str], group_of: dict[str, str]) -> str:
    """An INI inventory: hosts in their groups, connection vars on [all:vars] as Ansible users write."""
    s0 = servers[0]
    by_group: dict[str, list[str]] = {}
    for server, name in zip(servers, names):
        line = f"{name} ansible_host={server.host} ansible_port={server.port}"
        by_group.setdefault(group_of.get(name, ""), []).append(line)
    text = "\n".join(by_group.pop("", [])) + "\n"
    for g, lines in by_group.items():
        text += f"\n[{g}]\n" + "\n".join(lines) + "\n"
    text += (f"\n[all:vars]\nansible_user={s0.user}\nansible_ssh_private_key_file={s0.key}\n"
             f"ansible_ssh_common_args='-o UserKnownHostsFile={s0.known_hosts}'\n"
             f"ansible_python_interpreter=/usr/bin/python3\n")
    return text


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (from /proc), deepest last."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def kill_tree(server: SSHServer) -> None:
    """SIGKILL a server's sshd, its sessions and what they run: its clients see the connection drop."""
    pids = [server.proc.pid, *descendants(server.proc.pid)]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    server.proc.wait()

"""Ansible inventories (INI and YAML) as contexts: groups, children, vars, precedence, errors."""
from __future__ import annotations

import textwrap

import pytest

from clipipe.errors import ContextError
from clipipe.targets.contexts import EMBEDDED_DEFAULT, EMBEDDED_SOURCE, parse_contexts
from clipipe.targets.inventory import (expand_host_pattern, load_inventory, merge_inventory,
                                       parse_inventory)
from clipipe.targets.selection import select

INI = textwrap.dedent("""\
    # a comment
    bastion ansible_host=10.0.0.1 ansible_user=jump

    [web]
    web[01:03].example.com ansible_user=deploy
    web-canary ansible_host=10.0.1.9 ansible_port=2202

    [db]
    db1 ansible_host=10.0.2.1 ansible_python_interpreter=/usr/bin/python3.11
    db2 ansible_host="10.0.2.2"  ; trailing comment

    [web:vars]
    ansible_port=2222
    ansible_ssh_private_key_file=~/.ssh/deploy_ed25519

    [prod:children]
    web
    db

    [prod:vars]
    ansible_user=prod-user
    ansible_ssh_common_args='-o UserKnownHostsFile=/etc/ssh/prod_known_hosts -o ConnectTimeout=7'

    [all:vars]
    ansible_port=22
    ansible_user=nobody
""")

YAML = textwrap.dedent("""\
    all:
      vars:
        ansible_user: nobody
        ansible_port: 22
      hosts:
        bastion:
          ansible_host: 10.0.0.1
          ansible_user: jump
      children:
        prod:
          vars:
            ansible_user: prod-user
            ansible_ssh_common_args: -o UserKnownHostsFile=/etc/ssh/prod_known_hosts -o ConnectTimeout=7
          children:
            web:
              vars:
                ansible_port: 2222
                ansible_ssh_private_key_file: ~/.ssh/deploy_ed25519
              hosts:
                web[01:03].example.com:
                  ansible_user: deploy
                web-canary:
                  ansible_host: 10.0.1.9
                  ansible_port: 2202
            db:
              hosts:
                db1: {ansible_host: 10.0.2.1, ansible_python_interpreter: /usr/bin/python3.11}
                db2: {ansible_host: 10.0.2.2}
""")

WEB = ["web01.example.com", "web02.example.com", "web03.example.com", "web-canary"]


@pytest.fixture(params=["ini", "yaml"])
def inv(request: pytest.FixtureRequest):
    text, name = (INI, "hosts.ini") if request.param == "ini" else (YAML, "hosts.yaml")
    return parse_inventory(text, name)


def merged(inv, contexts_text: str | None = None):
    base = parse_contexts(contexts_text or EMBEDDED_DEFAULT, "contexts.yaml" if contexts_text else EMBEDDED_SOURCE)
    return merge_inventory(base, [inv])


def test_hosts_and_groups(inv) -> None:
    assert list(inv.hosts) == ["bastion", *WEB, "db1", "db2"]
    assert inv.members("web") == WEB
    assert inv.members("prod") == [*WEB, "db1", "db2"]
    assert inv.members("ungrouped") == ["bastion"]
    assert inv.members("all") == list(inv.hosts)


def test_var_precedence_host_over_child_over_parent_over_all(inv) -> None:
    m = merged(inv)
    web1 = m.get("web01.example.com").settings
    assert (web1.host, web1.user, web1.port) == ("web01.example.com", "deploy", 2222)   # host var, web var
    assert web1.key == "~/.ssh/deploy_ed25519"
    assert web1.known_hosts == "/etc/ssh/prod_known_hosts" and web1.connect_timeout == 7.0
    canary = m.get("web-canary").settings
    assert (canary.host, canary.user, canary.port) == ("10.0.1.9", "prod-user", 2202)
    db1 = m.get("db1").settings
    assert (db1.host, db1.user, db1.port, db1.python) == ("10.0.2.1", "prod-user", 22, "/usr/bin/python3.11")
    assert m.get("db2").settings.host == "10.0.2.2"
    bastion = m.get("bastion").settings
    assert (bastion.host, bastion.user, bastion.port) == ("10.0.0.1", "jump", 22)
    assert m.get("db1").type == "ssh" and m.get("db1").mark.file.startswith("hosts.")


def test_groups_become_context_groups(inv) -> None:
    m = merged(inv)
    assert select(m, "prod,!db2") == [*WEB, "db1"]
    assert select(m, "web", limit="web0*") == WEB[:3]
    assert select(m, "ungrouped") == ["bastion"]
    # `all` = every inventory host; the embedded default's `local` stays selectable by name
    assert select(m, "all") == list(inv.hosts)
    assert select(m, "local") == ["local"]


def test_contexts_yaml_wins_on_clashes(inv) -> None:
    m = merged(inv, textwrap.dedent("""\
        contexts:
          local: {type: local, default: true}
          db1: {type: ssh, host: db1.internal, user: me, port: 2200}
        groups:
          web: [db1]
        """))
    assert m.get("db1").settings.host == "db1.internal"
    assert select(m, "web") == ["db1"]                 # contexts.yaml's group
    assert select(m, "prod") == [*WEB, "db1", "db2"]   # the inventory's `web` children lend their hosts
    assert select(m, "all") == ["local", "db1", "bastion", *WEB, "db2"]


def test_clipipe_vars_and_local_connection() -> None:
    inv = parse_inventory("me ansible_connection=local\nbox clipipe_data_plane=agent clipipe_known_hosts=/k\n",
                          "inv")
    m = merged(inv)
    assert m.get("me").type == "local"
    assert m.get("box").settings.data_plane == "agent" and m.get("box").settings.known_hosts == "/k"


def test_host_ranges() -> None:
    assert expand_host_pattern("web[01:03]") == ["web01", "web02", "web03"]
    assert expand_host_pattern("db-[a:c].x") == ["db-a.x", "db-b.x", "db-c.x"]
    assert expand_host_pattern("n[1:5:2]") == ["n1", "n3", "n5"]
    assert expand_host_pattern("r[1:2]c[1:2]") == ["r1c1", "r1c2", "r2c1", "r2c2"]


@pytest.mark.parametrize("text, message, line", [
    ("[web\nh1\n", "malformed section header", 1),
    ("[web:wat]\nh1\n", "unknown section kind", 1),
    ("[web]\nh1 ansible_port\n", "expected `name=value`", 2),
    ("[web:vars]\n\njust-a-word\n", "expected `name=value`", 3),
    ("[web]\nh1\n[g:children]\nweb other\n", "one group name per line", 4),
    ("[web]\nh[a:3]\n", "bad host range", 2),
    ("[web]\nh1 ansible_port=ssh\n", "ansible_port must be a number", 2),
    ("[web]\nh1 ansible_connection=winrm\n", "not supported", 2),
    ("[web]\nh1 clipipe_colour=blue\n", "names no ssh setting", 2),
    ("[a:children]\nb\n[b:children]\na\n", "cycle", None),
])
def test_ini_errors_point_at_the_line(text: str, message: str, line: int | None) -> None:
    with pytest.raises(ContextError) as e:
        merged(parse_inventory(text, "bad.ini"))
    assert message in str(e.value)
    if line is not None:
        assert str(e.value).startswith(f"bad.ini:{line}:") or str(e.value).startswith(f"bad.ini:{line} ")


@pytest.mark.parametrize("text, message, line", [
    ("all:\n  hostz: {}\n", "unknown key 'hostz'", 2),
    ("all:\n  hosts: [a, b]\n", "must be a mapping of host name", 2),
    ("all:\n  children:\n    web:\n      hosts:\n        w1: 3\n", "vars must be a mapping", 5),
    ("- a\n- b\n", "mapping of group names", 1),
    ("all:\n  hosts:\n    h1: {ansible_port: abc}\n", "ansible_port must be a number", 3),
])
def test_yaml_errors_point_at_the_line(text: str, message: str, line: int) -> None:
    with pytest.raises(ContextError) as e:
        merged(parse_inventory(text, "bad.yaml"))
    assert message in str(e.value)
    assert str(e.value).startswith(f"bad.yaml:{line}")


def test_load_inventory_missing_file(tmp_path) -> None:
    with pytest.raises(ContextError, match="inventory not found"):
        load_inventory(str(tmp_path / "nope.ini"))
    p = tmp_path / "inv"
    p.write_text("all:\n  hosts:\n    h1:\n")           # YAML without a .yaml suffix is recognised
    assert list(load_inventory(str(p)).hosts) == ["h1"]

"""contexts.yaml: lookup order, the seed's example, validation errors with file:line:col."""
from __future__ import annotations

import asyncio
import textwrap

import pytest

from clipipe.errors import ContextError, TargetError
from clipipe.targets.contexts import EMBEDDED_SOURCE, load_contexts, parse_contexts
from clipipe.targets.ssh import SSHSettings, SSHTarget, parse_jump

#: contexts.yaml exactly as seed 003 shows it (comments, trailing spaces and all).
SEED_003 = """\
contexts:
  # 로컬 컨텍스트
  local:
    type: local
    default: true
    
  # SSH 컨텍스트들
  prod-server:
    type: ssh
    host: prod.example.com
    user: deploy
    key: ~/.ssh/id_rsa
    
  backup-server:
    type: ssh
    host: backup.internal
    user: backup
    port: 2222
    
  # Kubernetes 컨텍스트들
  k8s-prod:
    type: kubernetes
    context: production
    namespace: default
    
  k8s-staging:
    type: kubernetes
    context: staging
    namespace: apps
"""


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """cwd, HOME and XDG_CONFIG_HOME in a temp dir; no $CLIPIPE_CONTEXTS."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("CLIPIPE_CONTEXTS", raising=False)
    return tmp_path


def one(name: str, kind: str = "local") -> str:
    return f"contexts:\n  {name}:\n    type: {kind}\n"


def test_seed_example_loads_verbatim(isolated):
    (isolated / "config").mkdir()
    (isolated / "config" / "contexts.yaml").write_text(SEED_003, encoding="utf-8")
    c = load_contexts()
    assert c.names() == ["local", "prod-server", "backup-server", "k8s-prod", "k8s-staging"]
    assert c.default_name == "local"
    assert c.source == "config/contexts.yaml"
    backup = c.get("backup-server")
    assert (backup.type, backup.settings.port, backup.settings.user) == ("ssh", 2222, "backup")
    assert c.get("prod-server").settings.key == "~/.ssh/id_rsa"
    assert c.get("k8s-staging").settings.namespace == "apps"
    assert c.get("k8s-prod").settings.context == "production"
    assert c.get("backup-server").mark.line == 15


def test_embedded_default_when_nothing_found(isolated):
    c = load_contexts()
    assert c.source == EMBEDDED_SOURCE
    assert c.names() == ["local"] and c.default_name == "local"
    assert c.groups == {}


def test_lookup_order(isolated, monkeypatch):
    xdg = isolated / "xdg"
    (xdg / "clipipe").mkdir(parents=True)
    (xdg / "clipipe" / "contexts.yaml").write_text(one("from-xdg"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    assert load_contexts().names() == ["from-xdg"]
    (isolated / "config").mkdir()
    (isolated / "config" / "contexts.yaml").write_text(one("from-config"))
    assert load_contexts().names() == ["from-config"]
    (isolated / "contexts.yaml").write_text(one("from-cwd"))
    assert load_contexts().names() == ["from-cwd"]
    env_file = isolated / "env.yaml"
    env_file.write_text(one("from-env"))
    monkeypatch.setenv("CLIPIPE_CONTEXTS", str(env_file))
    assert load_contexts().names() == ["from-env"]
    opt = isolated / "opt.yaml"
    opt.write_text(one("from-option"))
    assert load_contexts(str(opt)).names() == ["from-option"]


def test_home_config_dir_without_xdg(isolated):
    home_cfg = isolated / "home" / ".config" / "clipipe"
    home_cfg.mkdir(parents=True)
    (home_cfg / "contexts.yaml").write_text(one("from-home"))
    assert load_contexts().names() == ["from-home"]


def test_explicit_missing_paths_are_errors(isolated, monkeypatch):
    with pytest.raises(ContextError, match="not found.*--contexts"):
        load_contexts(str(isolated / "nope.yaml"))
    monkeypatch.setenv("CLIPIPE_CONTEXTS", str(isolated / "gone.yaml"))
    with pytest.raises(ContextError, match="CLIPIPE_CONTEXTS"):
        load_contexts()


@pytest.mark.parametrize("text, line, col, words", [
    ("contexts:\n  web:\n    type: ssh\n    hots: x\n", 4, 5, ["unknown setting 'hots'", "did you mean 'host'"]),
    ("contexts:\n  web:\n    type: ssh\n    host: a\n    port: lots\n", 5, 11, ["`port` must be an integer"]),
    ("contexts:\n  web:\n    type: ssh\n    host: a\n    port: 70000\n", 3, 5, ["out of range"]),
    ("contexts:\n  web:\n    type: ssh\n", 3, 5, ["missing required setting", "host"]),
    ("contexts:\n  web:\n    type: sssh\n", 3, 11, ["unknown type 'sssh'", "did you mean 'ssh'"]),
    ("contexts:\n  web:\n    host: a\n", 3, 5, ["has no `type:`"]),
    ("contexts:\n  a:\n    type: local\n    default: true\n  b:\n    type: local\n    default: true\n",
     6, 5, ["more than one context", "a, b"]),
    ("contexts:\n  a:\n    type: local\n    default: yes please\n", 4, 14, ["`default` must be true or false"]),
    ("contexts:\n  a:\n    type: local\ngroups:\n  g: [a, b]\n", 5, 10, ["group 'g': unknown context 'b'"]),
    ("contexts:\n  a: {type: local}\n  a: {type: local}\n", 3, 3, ["duplicate key 'a'"]),
    ("contexts:\n  a: [type: local\n", 3, 1, ["invalid YAML"]),
    ("context:\n  a: {type: local}\n", 1, 1, ["unknown top-level key 'context'", "did you mean 'contexts'"]),
    ("contexts: {}\n", 1, 11, ["non-empty mapping"]),
    ("contexts:\n  w:\n    type: ssh\n    host: a\n    data_plane: fast\n", 5, 17, ["one of: auto, agent, openssh"]),
    ("contexts:\n  w:\n    type: ssh\n    host: a\n    password_env: my password\n", 3, 5, ["NAME of an environment"]),
])
def test_validation_errors_point_at_file_line(tmp_path, text, line, col, words):
    p = tmp_path / "contexts.yaml"
    p.write_text(text)
    with pytest.raises(ContextError) as ei:
        load_contexts(str(p))
    err = ei.value
    assert err.mark is not None and err.mark.file == str(p)
    assert (err.mark.line, err.mark.column) == (line, col), str(err)
    assert str(err).startswith(f"{p}:{line}:{col}: ")
    for w in words:
        assert w in str(err)
    assert err.exit_code == 2


def test_empty_file(tmp_path):
    p = tmp_path / "contexts.yaml"
    p.write_text("")
    with pytest.raises(ContextError, match="empty"):
        load_contexts(str(p))


def test_groups_are_kept():
    c = parse_contexts(textwrap.dedent("""\
        contexts:
          web1: {type: ssh, host: a}
          web2: {type: ssh, host: b}
          db:   {type: ssh, host: c}
        groups:
          web: [web1, web2]
          all: [web, db]
          globbed: ["web*"]
          single: db
        """))
    assert c.groups == {"web": ["web1", "web2"], "all": ["web", "db"], "globbed": ["web*"], "single": ["db"]}
    assert c.default_name == "local"          # no `default: true`: the implicit local, never a remote host
    assert c.get("local").type == "local" and "local" not in c.names()


def test_group_named_like_context_is_an_error():
    with pytest.raises(ContextError, match="same name as a context"):
        parse_contexts("contexts:\n  a: {type: local}\ngroups:\n  a: [a]\n")


def test_unknown_context_suggests():
    c = parse_contexts(SEED_003)
    with pytest.raises(ContextError, match="did you mean 'prod-server'"):
        c.get("prod-sever")


def test_make_target_is_cached_per_name():
    c = parse_contexts(SEED_003)
    t = c.make_target("prod-server")
    assert isinstance(t, SSHTarget)
    assert c.make_target("prod-server") is t
    assert c.make_target("backup-server") is not t
    assert c.opened_targets() == {"prod-server": t, "backup-server": c.make_target("backup-server")}


def test_kubernetes_context_without_a_pod_says_what_to_set():
    c = parse_contexts(SEED_003)
    with pytest.raises(TargetError, match="names no pod") as ei:
        asyncio.run(c.make_target("k8s-prod").open())
    assert "selector" in (ei.value.hint or "")


def test_masked_settings_hide_secrets_but_not_env_names():
    c = parse_contexts("contexts:\n  s: {type: ssh, host: h, password_env: PW}\n")
    shown = c.get("s").masked_settings()
    assert shown["password_env"] == "PW" and shown["host"] == "h"


def test_settings_types_are_plain_values():
    c = parse_contexts("contexts:\n  s: {type: ssh, host: h, port: 2222, ciphers: [aes256-ctr]}\n")
    s = c.get("s").settings
    assert type(s.host) is str and type(s.port) is int and s.ciphers == ["aes256-ctr"]
    assert type(s.ciphers[0]) is str


def test_every_ssh_setting_describes_itself():
    import dataclasses
    for f in dataclasses.fields(SSHSettings):
        assert f.metadata.get("description"), f.name


@pytest.mark.parametrize("text, expected", [
    ("bastion", (None, "bastion", None)),
    ("ops@bastion", ("ops", "bastion", None)),
    ("ops@bastion:2200", ("ops", "bastion", 2200)),
    ("[::1]:2200", (None, "::1", 2200)),
])
def test_parse_jump(text, expected):
    assert parse_jump(text) == expected


def test_openssh_args_follow_settings(tmp_path):
    key = tmp_path / "k"
    key.write_text("x")
    c = parse_contexts(f"contexts:\n  s: {{type: ssh, host: h, port: 2200, user: u, key: {key}, "
                       f"known_hosts: {tmp_path}/kh, ssh_config: {tmp_path}/none}}\n")
    args = c.make_target("s").openssh_args()
    joined = " ".join(args)
    assert "StrictHostKeyChecking=yes" in joined and f"UserKnownHostsFile={tmp_path}/kh" in joined
    assert "-c aes128-gcm@openssh.com" in joined and "-p 2200" in joined and "-l u" in joined
    assert f"-i {key}" in joined and "-F /dev/null" in joined

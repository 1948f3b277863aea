"""Ansible inventories as a source of contexts: `--inventory FILE`, INI or YAML form.

    # INI                                   # YAML
    bastion ansible_host=10.0.0.1           all:
    [web]                                     hosts:
    web[01:03] ansible_user=deploy              bastion: {ansible_host: 10.0.0.1}
    [web:vars]                                children:
    ansible_port=2222                           web:
    [prod:children]                               hosts: {web01: , web02: }
    web                                           vars: {ansible_port: 2222}

Every host becomes an `ssh` context (or `local` with `ansible_connection=local`) named as in the
inventory; every group becomes a group of contexts, including `ungrouped`. The inventory's `all` is
not registered as a group: `-c all` is the selection keyword and means every context of the run.

Variables, least to most specific: `all`'s vars, then group vars by depth from `all` (a child's vars
win over its parent's; at equal depth the group name decides, as in Ansible), then the host's own.
Read: `ansible_host` (`ansible_ssh_host`), `ansible_port`, `ansible_user`,
`ansible_ssh_private_key_file` (`ansible_private_key_file`), `ansible_python_interpreter`,
`ansible_connection` (ssh, smart, paramiko or local), and from `ansible_ssh_common_args` /
`ansible_ssh_extra_args` the options `UserKnownHostsFile`, `StrictHostKeyChecking=no` and
`ConnectTimeout`. A `clipipe_<setting>` variable sets any field of the ssh settings directly
(e.g. `clipipe_known_hosts`, `clipipe_data_plane`). Other variables are ignored.

Merging with contexts.yaml: **contexts.yaml wins** on a name clash (a host or a group defined in both
keeps its contexts.yaml definition): the file written for clipipe is the more precise one, and the
inventory is usually shared with other tools. Errors point at the inventory's file:line.
"""
from __future__ import annotations

import dataclasses
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipipe.errors import ContextError, Mark, SpecError
from clipipe.spec import yamlmarks
from clipipe.targets.contexts import EMBEDDED_SOURCE, ContextDef, Contexts, build_settings, settings_class

#: Connection types that become ssh contexts.
SSH_CONNECTIONS = ("ssh", "smart", "paramiko", "paramiko_ssh")

#: Ansible variable -> ssh setting.
VAR_SETTINGS = {
    "ansible_host": "host", "ansible_ssh_host": "host",
    "ansible_port": "port", "ansible_ssh_port": "port",
    "ansible_user": "user", "ansible_ssh_user": "user",
    "ansible_ssh_private_key_file": "key", "ansible_private_key_file": "key",
    "ansible_python_interpreter": "python",
}

#: Inventory names that are not registered as groups (see the module docstring).
IMPLICIT_GROUPS = ("all",)

_RANGE = re.compile(r"\[([0-9a-zA-Z]+):([0-9a-zA-Z]+)(?::([0-9]+))?\]")


@dataclass
class Host:
    """One inventory host: its own vars and where it was first named."""

    name: str
    vars: dict[str, Any] = field(default_factory=dict)
    mark: Mark | None = None


@dataclass
class Group:
    """One inventory group: hosts, child groups and vars."""

    name: str
    hosts: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    vars: dict[str, Any] = field(default_factory=dict)
    mark: Mark | None = None


@dataclass
class Inventory:
    """A parsed inventory: hosts and groups in file order."""

    source: str
    hosts: dict[str, Host] = field(default_factory=dict)
    groups: dict[str, Group] = field(default_factory=dict)

    def host(self, name: str, mark: Mark) -> Host:
        """The host `name`, created on first mention."""
        if name not in self.hosts:
            self.hosts[name] = Host(name, mark=mark)
        return self.hosts[name]

    def group(self, name: str, mark: Mark) -> Group:
        """The group `name`, created on first mention."""
        if name not in self.groups:
            self.groups[name] = Group(name, mark=mark)
        return self.groups[name]

    def finish(self) -> None:
        """Add `all` and `ungrouped`, and refuse cycles among children."""
        top = self.group("all", Mark(self.source))
        ungrouped = self.group("ungrouped", Mark(self.source))
        in_group = {h for g in self.groups.values() if g.name not in ("all", "ungrouped") for h in g.hosts}
        for h in self.hosts:
            if h not in in_group and h not in ungrouped.hosts:
                ungrouped.hosts.append(h)
        children = {c for g in self.groups.values() for c in g.children}
        for g in self.groups.values():
            if g.name != "all" and g.name not in children and g.name not in top.children:
                top.children.append(g.name)
        for g in self.groups.values():
            for c in g.children:
                if c not in self.groups:
                    raise ContextError(f"group {g.name!r} names unknown child group {c!r}", mark=g.mark)
        for gname in self.groups:
            self._check_cycle(gname, [])

    def _check_cycle(self, name: str, path: list[str]) -> None:
        if name in path:
            raise ContextError("inventory groups form a cycle: " + " -> ".join(path[path.index(name):] + [name]),
                               mark=self.groups[name].mark)
        for c in self.groups[name].children:
            self._check_cycle(c, path + [name])

    def depths(self) -> dict[str, int]:
        """Each group's distance from `all` (its deepest path), for variable precedence."""
        depth: dict[str, int] = {}

        def walk(name: str, d: int) -> None:
            if depth.get(name, -1) >= d:
                return
            depth[name] = d
            for c in self.groups[name].children:
                walk(c, d + 1)

        walk("all", 0)
        return depth

    def members(self, group: str) -> list[str]:
        """Hosts of `group` and of its descendants, in file order, without duplicates."""
        found: set[str] = set()
        todo = [group]
        while todo:
            g = self.groups[todo.pop()]
            found.update(g.hosts)
            todo.extend(g.children)
        return [h for h in self.hosts if h in found]

    def host_vars(self, name: str) -> dict[str, Any]:
        """The effective variables of host `name` (see the module docstring for precedence)."""
        depth = self.depths()
        mine = [g for g in self.groups.values() if name in self.members(g.name)]
        merged: dict[str, Any] = dict(self.groups["all"].vars)
        for g in sorted(mine, key=lambda g: (depth.get(g.name, 0), g.name)):
            merged.update(g.vars)
        merged.update(self.hosts[name].vars)
        return merged


# ---------------------------------------------------------------------------------------- loading
def load_inventory(path: str) -> Inventory:
    """Read an inventory file (YAML when it parses as a mapping of groups, else INI)."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContextError(f"inventory not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ContextError(f"can't read inventory {p}: {exc}") from exc
    return parse_inventory(text, str(p))


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    """Parse inventory text: YAML form if the file says so (suffix or content), else INI."""
    if source.endswith((".yaml", ".yml")) or _looks_like_yaml(text):
        inv = _parse_yaml(text, source)
    else:
        inv = _parse_ini(text, source)
    inv.finish()
    return inv


def _looks_like_yaml(text: str) -> bool:
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("#", ";")):
            continue
        return s == "---" or bool(re.match(r"^[\w.-]+:\s*(#.*)?$", s))
    return False


# ---- INI
def _parse_ini(text: str, source: str) -> Inventory:
    inv = Inventory(source)
    section, kind = "ungrouped", "hosts"
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        mark = Mark(source, lineno)
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            m = re.fullmatch(r"\[([^\]:\s]+)(?::(\w+))?\]\s*(?:[#;].*)?", line)
            if not m:
                raise ContextError(f"malformed section header {line!r}", mark=mark)
            section, kind = m.group(1), m.group(2) or "hosts"
            if kind not in ("hosts", "vars", "children"):
                raise ContextError(f"unknown section kind :{kind} (use :vars or :children)", mark=mark)
            inv.group(section, mark)
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError as exc:
            raise ContextError(f"can't split line: {exc}", mark=mark) from exc
        for i, w in enumerate(words):            # `;` starts a comment too, as in Ansible's INI
            if w.startswith(";"):
                words = words[:i]
                break
        if not words:
            continue
        if kind == "vars":
            key, eq, value = line.partition("=")
            if not eq or not key.strip():
                raise ContextError(f"expected `name=value` in [{section}:vars], got {line!r}", mark=mark)
            inv.group(section, mark).vars[key.strip()] = _ini_value(_unquote(value.strip()))
        elif kind == "children":
            if len(words) != 1:
                raise ContextError(f"expected one group name per line in [{section}:children]", mark=mark)
            child = words[0]
            inv.group(child, mark)
            group = inv.group(section, mark)
            if child not in group.children:
                group.children.append(child)
        else:
            host_vars = _ini_host_vars(words[1:], mark)
            for name in expand_host_pattern(words[0], mark):
                host = inv.host(name, mark)
                host.vars.update(host_vars)
                if section != "ungrouped":
                    group = inv.group(section, mark)
                    if name not in group.hosts:
                        group.hosts.append(name)
    return inv


def _ini_host_vars(words: list[str], mark: Mark) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for w in words:
        key, eq, value = w.partition("=")
        if not eq or not key:
            raise ContextError(f"expected `name=value` after the host name, got {w!r}", mark=mark)
        out[key] = _ini_value(value)
    return out


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def _ini_value(value: str) -> Any:
    """INI values are strings; whole numbers and booleans become what they look like."""
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if value.lower() in ("true", "yes"):
        return True
    if value.lower() in ("false", "no"):
        return False
    return value


def expand_host_pattern(pattern: str, mark: Mark | None = None) -> list[str]:
    """`web[01:03].x` -> web01.x, web02.x, web03.x (numeric, with leading zeros kept, or letters)."""
    m = _RANGE.search(pattern)
    if not m:
        return [pattern]
    start, end, step = m.group(1), m.group(2), int(m.group(3) or 1)
    head, tail = pattern[:m.start()], pattern[m.end():]
    if start.isdigit() and end.isdigit():
        width = len(start) if start.startswith("0") and len(start) > 1 else 0
        values = [str(i).zfill(width) for i in range(int(start), int(end) + 1, step)]
    elif len(start) == 1 and len(end) == 1 and start.isalpha() and end.isalpha():
        values = [chr(c) for c in range(ord(start), ord(end) + 1, step)]
    else:
        raise ContextError(f"bad host range [{m.group(0)[1:-1]}] in {pattern!r}", mark=mark)
    if not values:
        raise ContextError(f"empty host range in {pattern!r}", mark=mark)
    return [h for v in values for h in expand_host_pattern(head + v + tail, mark)]


# ---- YAML
def _parse_yaml(text: str, source: str) -> Inventory:
    try:
        doc = yamlmarks.loads(text, source)
    except SpecError as exc:
        raise ContextError(exc.message, mark=exc.mark) from exc
    inv = Inventory(source)
    if doc is None:
        return inv
    if not isinstance(doc, yamlmarks.MDict):
        raise ContextError("a YAML inventory is a mapping of group names (usually `all:`)",
                           mark=yamlmarks.mark_of(doc, Mark(source)))
    for name, body in doc.items():
        _yaml_group(inv, str(name), body, doc.key_marks.get(name, doc.mark))
    return inv


def _yaml_group(inv: Inventory, name: str, body: Any, mark: Mark) -> None:
    group = inv.group(name, mark)
    if body is None:
        return
    if not isinstance(body, yamlmarks.MDict):
        raise ContextError(f"group {name!r} must be a mapping with hosts:, children: or vars:", mark=mark)
    for key in body:
        if key not in ("hosts", "children", "vars"):
            raise ContextError(f"group {name!r}: unknown key {key!r} (hosts, children, vars)",
                               mark=body.key_marks.get(key, body.mark))
    hosts = body.get("hosts")
    if hosts is not None:
        if not isinstance(hosts, yamlmarks.MDict):
            raise ContextError(f"group {name!r}: `hosts:` must be a mapping of host name -> vars",
                               mark=body.mark_of("hosts"))
        for hname, hvars in hosts.items():
            hmark = hosts.key_marks.get(hname, hosts.mark)
            if hvars is not None and not isinstance(hvars, dict):
                raise ContextError(f"host {hname!r}: its vars must be a mapping", mark=hmark)
            for h in expand_host_pattern(str(hname), hmark):
                inv.host(h, hmark).vars.update({str(k): v for k, v in (hvars or {}).items()})
                if h not in group.hosts:
                    group.hosts.append(h)
    gvars = body.get("vars")
    if gvars is not None:
        if not isinstance(gvars, dict):
            raise ContextError(f"group {name!r}: `vars:` must be a mapping", mark=body.mark_of("vars"))
        group.vars.update({str(k): v for k, v in gvars.items()})
    children = body.get("children")
    if children is not None:
        if not isinstance(children, yamlmarks.MDict):
            raise ContextError(f"group {name!r}: `children:` must be a mapping of group name -> group",
                               mark=body.mark_of("children"))
        for cname, cbody in children.items():
            if str(cname) not in group.children:
                group.children.append(str(cname))
            _yaml_group(inv, str(cname), cbody, children.key_marks.get(cname, children.mark))


# ---------------------------------------------------------------------------------------- contexts
def host_context(inv: Inventory, name: str) -> ContextDef:
    """The context of inventory host `name`: its variables mapped to ssh (or local) settings."""
    host = inv.hosts[name]
    hv = inv.host_vars(name)
    what = f"inventory host {name!r}"
    connection = str(hv.get("ansible_connection", "ssh"))
    if connection == "local":
        cls = settings_class("local")
        return ContextDef(name, "local", build_settings(cls, {}, what) if cls else None, host.mark)
    if connection not in SSH_CONNECTIONS:
        raise ContextError(f"{what}: ansible_connection={connection} is not supported "
                           f"(ssh or local)", mark=host.mark)
    values: dict[str, Any] = {"host": name}
    for var, setting in VAR_SETTINGS.items():
        if var in hv and hv[var] is not None:
            values[setting] = str(hv[var]) if setting != "port" else _port(hv[var], what, host.mark)
    values.update(_ssh_args(" ".join(str(hv.get(k, "")) for k in ("ansible_ssh_common_args",
                                                                    "ansible_ssh_extra_args"))))
    cls = settings_class("ssh")
    assert cls is not None
    fields = {f.name for f in dataclasses.fields(cls)}
    for var, value in hv.items():
        if var.startswith("clipipe_"):
            setting = var[len("clipipe_"):]
            if setting not in fields:
                raise ContextError(f"{what}: {var} names no ssh setting "
                                   f"(known: {', '.join(sorted(fields))})", mark=host.mark)
            values[setting] = value
    try:
        settings = build_settings(cls, values, what)
    except ContextError as exc:
        raise ContextError(exc.message, mark=host.mark, hint=exc.hint) from exc
    return ContextDef(name, "ssh", settings, host.mark, description=f"from inventory {inv.source}")


def _port(value: Any, what: str, mark: Mark | None) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ContextError(f"{what}: ansible_port must be a number (got {value!r})", mark=mark) from None


def _ssh_args(text: str) -> dict[str, Any]:
    """The ssh settings found in `-o Key=Value` options of ansible_ssh_common/extra_args."""
    out: dict[str, Any] = {}
    try:
        words = shlex.split(text)
    except ValueError:
        return out
    opts: list[str] = []
    for i, w in enumerate(words):
        if w == "-o" and i + 1 < len(words):
            opts.append(words[i + 1])
        elif w.startswith("-o") and len(w) > 2:
            opts.append(w[2:])
    for o in opts:
        key, _, value = o.replace(" ", "=", 1).partition("=")
        key = key.lower()
        if key == "userknownhostsfile":
            out["known_hosts"] = value
        elif key == "stricthostkeychecking" and value.lower() == "no":
            out["insecure_skip_host_key_check"] = True
        elif key == "connecttimeout" and value.isdigit():
            out["connect_timeout"] = float(value)
    return out


@dataclass
class MergedContexts(Contexts):
    """contexts.yaml plus inventory hosts and groups (contexts.yaml wins on a clash)."""

    inventory_sources: list[str] = field(default_factory=list)
    embedded: set[str] = field(default_factory=set)   #: names from the embedded default

    def all_names(self) -> list[str]:
        """What `-c all` means: every context, except the embedded default when an inventory is read."""
        return [n for n in self.defs if n not in self.embedded]


def merge_inventory(base: Contexts, inventories: list[Inventory]) -> MergedContexts:
    """One Contexts holding base's contexts and groups plus every inventory's (base wins clashes)."""
    defs: dict[str, ContextDef] = dict(base.defs)
    groups: dict[str, list[str]] = {g: list(m) for g, m in base.groups.items()}
    embedded = set(base.defs) if base.source == EMBEDDED_SOURCE and inventories else set()
    for inv in inventories:
        for name in inv.hosts:
            if name not in defs and name not in groups:
                defs[name] = host_context(inv, name)
        mine = [g for g in inv.groups if g not in IMPLICIT_GROUPS and g not in groups and g not in defs]
        for gname in mine:
            group = inv.groups[gname]
            members = list(group.hosts)
            for child in group.children:       # a child shadowed by contexts.yaml lends its hosts
                members.extend([child] if child in mine else inv.members(child))
            groups[gname] = list(dict.fromkeys(members))
    sources = [base.source] + [i.source for i in inventories]
    return MergedContexts(defs=defs, default_name=base.default_name, groups=groups,
                          source=", ".join(sources), inventory_sources=[i.source for i in inventories],
                          embedded=embedded)

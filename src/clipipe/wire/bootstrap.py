"""Boot the agent on a target: a one-line `python3 -c` loader and the payload it reads from stdin.

Mitogen-style: the remote needs nothing but a Python 3.8+; nothing is written to its disk. The loader
reads ``u32 n | zlib(agent source) | u32 m | repr(config)`` from fd 0 with os.read (never through
sys.stdin, whose buffering would swallow the first frames) and execs the source as ``__main__``.
"""
from __future__ import annotations

import ast
import base64
import importlib.util
import shlex
import struct
import sys
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

#: The loader, readable here; it travels zlib+base64'd so the command line has no quotes or newlines.
LOADER_SOURCE = """\
import os
def r(n):
    b = b""
    while len(b) < n:
        c = os.read(0, n - len(b))
        if not c:
            os._exit(3)
        b += c
    return b
def block():
    return r(int.from_bytes(r(4), "big"))
import zlib
src = zlib.decompress(block())
cfg = block().decode()
exec(compile(src, "clipipe_agent.py", "exec"), {"__name__": "__main__", "CLIPIPE_CONFIG": cfg})
"""

AGENT_MODULE_NAME = "clipipe_agent"

_REPO_AGENT = Path(__file__).resolve().parents[3] / "agent" / "clipipe_agent.py"
_PACKAGE_AGENT = Path(__file__).resolve().parents[1] / "_agent" / "clipipe_agent.py"


def agent_path() -> Path:
    """Where the agent source is: the repo's agent/ in a checkout, the package data in a wheel."""
    for path in (_REPO_AGENT, _PACKAGE_AGENT):
        if path.is_file():
            return path
    raise FileNotFoundError(f"clipipe agent not found at {_REPO_AGENT} or {_PACKAGE_AGENT}")


def agent_source() -> bytes:
    """The agent's source, exactly the bytes that are shipped to targets."""
    return agent_path().read_bytes()


def agent_module() -> ModuleType:
    """The agent imported as a module, so the controller shares its protocol table and codec."""
    module = sys.modules.get(AGENT_MODULE_NAME)
    if module is None:
        spec = importlib.util.spec_from_file_location(AGENT_MODULE_NAME, agent_path())
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[AGENT_MODULE_NAME] = module
        spec.loader.exec_module(module)
    return module


def loader_command_arg() -> str:
    """The `-c` argument: a one-line Python that inflates and runs LOADER_SOURCE."""
    packed = base64.b64encode(zlib.compress(LOADER_SOURCE.encode(), 9)).decode()
    return f'import base64,zlib;exec(zlib.decompress(base64.b64decode("{packed}")))'


def boot_argv(python: str = "python3") -> list[str]:
    """The boot command as argv, for transports that exec without a shell (kubectl exec, subprocess)."""
    return [python, "-c", loader_command_arg()]


def boot_command(python: str = "python3") -> str:
    """The boot command as one shell line, for transports that run a command string (ssh)."""
    return " ".join(shlex.quote(arg) for arg in boot_argv(python))


def payload(config: dict[str, Any] | None = None) -> bytes:
    """What the controller writes to the loader's stdin: the compressed agent and its config literal."""
    config_text = repr(config or {})
    try:
        same = ast.literal_eval(config_text) == (config or {})
    except (ValueError, SyntaxError):
        same = False
    if not same:
        raise ValueError("agent config must be made of Python literals")
    source = zlib.compress(agent_source(), 9)
    cfg = config_text.encode()
    return struct.pack(">I", len(source)) + source + struct.pack(">I", len(cfg)) + cfg

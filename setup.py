"""Build clipipe: the Cython stream core when a compiler is present, and the agent as package data.

The package must install and work without a C compiler (the pure-Python twin takes over), so a failed
extension build is reported and skipped rather than failing the install.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).parent
AGENT_SRC = HERE / "agent" / "clipipe_agent.py"


class OptionalBuildExt(build_ext):
    """Build the stream core if possible; fall back to the pure-Python twin otherwise."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any compiler failure means: use the twin
            print(f"clipipe: stream core not built ({exc}); using the pure-Python twin", file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            print(f"clipipe: {ext.name} not built ({exc}); using the pure-Python twin", file=sys.stderr)


class BuildPyWithAgent(build_py):
    """Copy agent/clipipe_agent.py into the package so wheels ship it."""

    def run(self) -> None:
        super().run()
        if AGENT_SRC.exists():
            dest = Path(self.build_lib) / "clipipe" / "_agent"
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(AGENT_SRC, dest / "clipipe_agent.py")


def extensions() -> list[Extension]:
    """The Cython extension, or nothing when CLIPIPE_PURE_BUILD=1 or Cython is missing."""
    if os.environ.get("CLIPIPE_PURE_BUILD") == "1":
        return []
    pyx = "src/clipipe/_fastpipe.pyx"
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    ext = Extension("clipipe._fastpipe", [pyx], extra_compile_args=["-O3"])
    return cythonize([ext], language_level=3, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt, "build_py": BuildPyWithAgent})

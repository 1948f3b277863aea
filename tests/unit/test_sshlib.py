"""The fast asyncssh import: same answers as ctypes.util.find_library, same algorithms offered."""
from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

from clipipe.targets import sshlib

ALGS = ("import asyncssh, json; from asyncssh import kex, mac; "
        "print(json.dumps([sorted(a.decode() for a in kex.get_kex_algs()), "
        "sorted(a.decode() for a in mac.get_mac_algs())]))")


def test_absent_libraries_agree_with_find_library() -> None:
    names = sshlib.PROBED + ("c", "ssl", "z", "clipipe-no-such-lib")
    absent = sshlib.absent_libraries(names)
    assert "clipipe-no-such-lib" in absent
    assert "c" not in absent
    for name in names:
        if name in absent:
            try:
                found = ctypes.util.find_library(name)
            except OSError:     # CPython's gcc fallback can trip over its own temp output: not found
                found = None
            assert found is None, name


def test_probe_is_restored_and_only_answers_absent_names() -> None:
    real = ctypes.util.find_library
    with sshlib.fast_library_probe():
        if "asyncssh" not in sys.modules and sshlib.absent_libraries():
            assert ctypes.util.find_library is not real
        assert ctypes.util.find_library("c") == real("c")
    assert ctypes.util.find_library is real


def test_asyncssh_offers_the_same_algorithms_either_way() -> None:
    plain = subprocess.run([sys.executable, "-c", ALGS], capture_output=True, text=True, check=True)
    fast = subprocess.run([sys.executable, "-c", "from clipipe.targets.sshlib import fast_library_probe\n"
                           "with fast_library_probe():\n    import asyncssh\n" + ALGS],
                          capture_output=True, text=True, check=True)
    assert json.loads(fast.stdout) == json.loads(plain.stdout)
    assert json.loads(plain.stdout)[0]          # some key exchange is offered at all

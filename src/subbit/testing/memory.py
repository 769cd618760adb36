"""What loading a ``.subbit`` file adds to the resident set, measured in a fresh interpreter.

A test or benchmark process has its own history in ``VmHWM`` (its peak so far), so the load runs
in a child that imports the loader first, reads ``/proc/self/status``, loads and reads it again:
``VmHWM`` after minus ``VmRSS`` before is the load's own peak. Linux only (it reads /proc).
Run as ``python -m subbit.testing.memory PATH LOADER``; it imports no torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from subbit.export import container

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
LOADERS = ("load_packed", "read_container")


def proc_status() -> dict[str, int]:
    """The :data:`FIELDS` of ``/proc/self/status``, in bytes."""
    out = {}
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in FIELDS:
                out[key] = int(value.split()[0]) * 1024
    return out


def load_memory(path: str | os.PathLike[str], loader: str = "load_packed") -> dict[str, Any]:
    """``subbit.export.container.<loader>(path)`` in a fresh interpreter: ``before`` / ``after``
    (:func:`proc_status`), ``tensors`` (how many it loaded), ``peak_growth_bytes`` (VmHWM after -
    VmRSS before) and ``anon_growth_bytes`` (RssAnon after - before: pages not backed by the file)."""
    if loader not in LOADERS:
        raise ValueError(f"loader must be one of {LOADERS}, got {loader!r}")
    cmd = [sys.executable, "-m", "subbit.testing.memory", os.fspath(path), loader]
    r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    r["peak_growth_bytes"] = r["after"]["VmHWM"] - r["before"]["VmRSS"]
    r["anon_growth_bytes"] = r["after"]["RssAnon"] - r["before"]["RssAnon"]
    return r


def _main(path: str, loader: str) -> None:
    before = proc_status()
    loaded = getattr(container, loader)(path)
    after = proc_status()
    tensors = len(loaded[1]) if loader == "read_container" else len(loaded.packed) + len(loaded.floats)
    print(json.dumps({"before": before, "after": after, "tensors": tensors}))


if __name__ == "__main__":
    _main(*sys.argv[1:3])

"""What a benchmark script writes next to its numbers: the machine, command and commit it ran
on, and the JSON file itself, so every result in ``benchmarks/out`` says where it came from."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` where it is missing)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def provenance(script: str | os.PathLike[str]) -> dict[str, str]:
    """``machine`` (CPU name), ``command`` (as typed, interpreter's base name first) and ``commit``
    (short hash of the checkout holding ``script``; ``?`` without git)."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(script).resolve().parent).stdout.strip()  # fmt: skip
    except OSError:
        commit = "?"
    return {"machine": cpu_name(), "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
            "commit": commit}  # fmt: skip


def write_record(path: str | os.PathLike[str], summary: dict[str, Any]) -> None:
    """``summary`` as indented JSON at ``path`` (folders made), announced on stdout."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {out}")

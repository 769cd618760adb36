"""This machine's CPU cache sizes, read from sysfs at run time (for the benchmark's size sweep).

Linux describes each cache of a CPU in ``/sys/devices/system/cpu/cpuN/cache/index*/`` (files
``level``, ``type``, ``size`` such as ``48K``, ``shared_cpu_list``). :func:`read_cache_sizes`
reads cpu0's: one entry per level and type (``L1d``, ``L1i``, ``L2``, ``L3``; the size of one
cache instance, as the kernel reports it). Nothing is hard-coded per vendor; where sysfs cannot
be read, :data:`DEFAULT_CACHES` stands in and the result says so (``source: "default"`` and a
``note`` that callers print).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

SYSFS_CACHE_DIR = "/sys/devices/system/cpu/cpu0/cache"
#: stand-ins when sysfs is unreadable (typical of a recent x86 server core; said so in the output)
DEFAULT_CACHES: dict[str, int] = {"L1d": 48 << 10, "L2": 1 << 20, "L3": 32 << 20}
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]?)(?:i?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a sysfs cache size (``"48K"``, ``"2048K"``, ``"32M"``, ``"512"``); ValueError else."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise ValueError(f"cannot read a cache size from {text!r} (expected e.g. '48K', '32M')")
    n = int(m.group(1)) * _UNITS[m.group(2).upper()]
    if n <= 0:
        raise ValueError(f"cache size must be positive, got {text!r}")
    return n


def _key(level: int, kind: str) -> str:
    kind = kind.strip().lower()
    suffix = {"data": "d", "instruction": "i"}.get(kind, "")
    return f"L{level}{suffix}"


def read_cache_sizes(root: str | os.PathLike[str] = SYSFS_CACHE_DIR) -> dict[str, Any]:
    """``{"L1d": bytes, "L1i": ..., "L2": ..., "L3": ..., "source": "sysfs"|"default", "root", "note",
    "shared_cpu_list": {"L3": "0-1", ...}}``. L2 and L3 are always present: a level sysfs does not
    report (e.g. a CPU without L3) takes :data:`DEFAULT_CACHES`' value, and ``note`` says which."""
    root = Path(root)
    found: dict[str, int] = {}
    shared: dict[str, str] = {}
    problems: list[str] = []
    try:
        entries = sorted(p for p in root.iterdir() if p.name.startswith("index") and p.is_dir())
    except OSError as exc:
        entries = []
        problems.append(f"{root}: {exc.strerror or exc}")
    for d in entries:
        try:
            level = int((d / "level").read_text().strip())
            kind = (d / "type").read_text()
            size = parse_size((d / "size").read_text())
        except (OSError, ValueError) as exc:
            problems.append(f"{d.name}: {exc}")
            continue
        key = _key(level, kind)
        found[key] = max(size, found.get(key, 0))
        try:
            shared[key] = (d / "shared_cpu_list").read_text().strip()
        except OSError:
            pass
    missing = [k for k in ("L2", "L3") if k not in found]
    out: dict[str, Any] = {k: found[k] for k in sorted(found)}
    for k in missing:
        out[k] = DEFAULT_CACHES[k]
    out["source"] = "sysfs" if not missing else ("default" if not found else "sysfs+default")
    out["root"] = str(root)
    out["shared_cpu_list"] = shared
    note = ""
    if missing:
        note = (f"cache sizes {', '.join(missing)} not readable from {root}; using defaults "
                + ", ".join(f"{k}={format_bytes(DEFAULT_CACHES[k])}" for k in missing))
        if problems:
            note += f" ({'; '.join(problems[:3])})"
    if out["L3"] <= out["L2"]:
        note = (note + "; " if note else "") + f"L3 ({format_bytes(out['L3'])}) is not larger than L2"
    out["note"] = note
    return out


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``; binary units, as sysfs counts them."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


__all__ = ["DEFAULT_CACHES", "SYSFS_CACHE_DIR", "format_bytes", "parse_size", "read_cache_sizes"]

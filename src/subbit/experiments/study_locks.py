"""Cell claims for several study workers sharing one ``OUT/cells`` folder.

A worker plans its cells once, at start; another worker may finish one of them meanwhile. Before
training a cell a worker therefore claims it: ``CELL.lock`` created with O_EXCL, holding the
host and pid. A claim whose process is gone (same host, pid not alive) is stale and taken over;
a claim from another host is respected (its process cannot be checked from here).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path


def lock_path(cell: Path) -> Path:
    return cell.with_suffix(".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _holder(lock: Path) -> tuple[str, int] | None:
    try:
        host, pid = lock.read_text().split()
        return host, int(pid)
    except (OSError, ValueError):
        return None


def claim(cell: Path) -> bool:
    """True when this process now holds ``cell``'s claim (release it with :func:`release`)."""
    lock = lock_path(cell)
    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = _holder(lock)
            if held is not None and (held[0] != socket.gethostname() or _alive(held[1])):
                return False
            lock.unlink(missing_ok=True)  # stale (its process is gone) or unreadable: take it over
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
        return True
    return False


def release(cell: Path) -> None:
    """Drop this process's claim on ``cell`` (a claim held by another process is left alone)."""
    lock = lock_path(cell)
    held = _holder(lock)
    if held == (socket.gethostname(), os.getpid()):
        lock.unlink(missing_ok=True)

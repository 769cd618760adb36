"""Cell claims between study workers (subbit.experiments.study_locks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from subbit.experiments import study_locks


def test_a_claim_is_exclusive_and_released(tmp_path: Path) -> None:
    cell = tmp_path / "gq4-s0.json"
    assert study_locks.claim(cell)
    assert study_locks.lock_path(cell).read_text() == f"{socket.gethostname()} {os.getpid()}"
    # another live process holds it: refused
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        study_locks.lock_path(cell).write_text(f"{socket.gethostname()} {other.pid}")
        assert not study_locks.claim(cell)
        study_locks.release(cell)  # not ours: left alone
        assert study_locks.lock_path(cell).is_file()
    finally:
        other.kill()
        other.wait()
    # its process is gone: stale, taken over, then released
    assert study_locks.claim(cell)
    study_locks.release(cell)
    assert not study_locks.lock_path(cell).exists()


def test_claims_from_another_host_or_unreadable_locks(tmp_path: Path) -> None:
    cell = tmp_path / "c.json"
    study_locks.lock_path(cell).write_text("some-other-host 1")
    assert not study_locks.claim(cell)  # cannot be checked from here: respected
    study_locks.lock_path(cell).write_text("garbage")
    assert study_locks.claim(cell)  # unreadable: taken over

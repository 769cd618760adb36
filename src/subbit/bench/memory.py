"""Memory figures of a benchmark run: peak RSS of this process and bytes of resident weights.

Each variant runs in a fresh subprocess for a clean lifetime peak. On Linux ``ru_maxrss`` is
carried over from the parent through fork + exec (a child of a 400 MB parent starts with a
400 MB "peak"), so the peak is read from ``VmHWM`` of ``/proc/self/status`` (per process image),
falling back to ``ru_maxrss`` where /proc is missing. Building a baseline (e.g. an fp32 model that torch.ao then quantizes) can set a peak that the
deployed model never reaches, so the streaming phase is also measured on its own: Linux lets a
process reset its high-water mark (``/proc/self/clear_refs`` <- ``5``) and read ``VmHWM`` after.
"""

from __future__ import annotations

import os
import resource
import sys


def peak_rss_bytes() -> int:
    """Lifetime peak resident set of this process (``ru_maxrss``; KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


def process_peak_rss_bytes() -> int:
    """Peak resident set of this process image: ``VmHWM`` where available, else ``ru_maxrss``."""
    hwm = hwm_bytes()
    return hwm if hwm is not None else peak_rss_bytes()


def _status_field(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def current_rss_bytes() -> int | None:
    """Resident set now (``VmRSS``), None where /proc is missing."""
    return _status_field("VmRSS")


def hwm_bytes() -> int | None:
    """High-water mark of the resident set since start or since :func:`reset_peak_rss`."""
    return _status_field("VmHWM")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    hwm, rss = hwm_bytes(), current_rss_bytes()
    return hwm is not None and rss is not None and hwm <= rss + (1 << 20)


def onnx_initializer_bytes(path: str | os.PathLike[str]) -> int:
    """Bytes of every initializer (weights, scales, zero points) of an ONNX file."""
    # local: onnx is an optional dependency (the ORT variant only)
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    total = 0
    for init in model.graph.initializer:
        total += int(np.asarray(numpy_helper.to_array(init)).nbytes)
    return total

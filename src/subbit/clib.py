"""Finding and opening the package's compiled C libraries with ctypes (standard library only).

``setup.py`` builds two: ``subbit.runtime._kernels`` (inference) and ``subbit.quant._native``
(a training helper). Both are loaded the same way, from here, so that ``quant`` and ``runtime``
share the code without importing each other; either one falls back to its NumPy / PyTorch path,
with one warning, when its library is missing or does not expose the expected functions.
"""

from __future__ import annotations

import ctypes
import importlib.machinery
import logging
from pathlib import Path
from typing import Any

#: ``{function name: (argtypes, restype)}`` of a library
Signatures = dict[str, tuple[list[Any], Any]]


def library_file(folder: str | Path, stem: str) -> Path | None:
    """``folder/<stem><extension suffix>`` for the first suffix this interpreter loads, or None."""
    here = Path(folder).resolve()
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        cand = here / f"{stem}{suffix}"
        if cand.is_file():
            return cand
    return None


def open_library(path: Path | None, signatures: Signatures, log: logging.Logger, *, missing: str,
                 broken: str) -> ctypes.CDLL | None:  # fmt: skip
    """The library at ``path`` with ``signatures`` set; None after ``log.warning(missing)`` when
    ``path`` is None, or ``log.warning(broken, path, error)`` when it fails to load."""
    if path is None:
        log.warning(missing)
        return None
    try:
        lib = ctypes.CDLL(str(path))
        for name, (argtypes, restype) in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, restype
    except (OSError, AttributeError) as exc:
        log.warning(broken, path, exc)
        return None
    return lib

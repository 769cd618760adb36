"""ctypes loader for the fused C kernels of GQ's tabulated soft assignment (``quant/csrc``).

:mod:`subbit.quant.soft_table` calls :func:`table_forward` / :func:`table_backward` for
contiguous float32 CPU tensors when :func:`available`; otherwise (library not built, CUDA,
float64) it runs its PyTorch ops. A missing library is reported once with a logging warning.
``SUBBIT_NATIVE=0`` in the environment disables the C path (for before/after timings);
``SUBBIT_KERNEL=portable`` keeps it on its portable C loop (as for the runtime kernels).

No Python or torch headers are involved: the C functions take raw pointers
(``tensor.data_ptr()``), so every tensor passed here must be contiguous, on the CPU and of the
dtype named in the signature; the wrappers check that and raise ``ValueError`` otherwise.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

import torch
from torch import Tensor

from subbit.clib import Signatures, library_file, open_library

log = logging.getLogger(__name__)

ISA_NAMES = {1: "portable", 2: "avx2"}

_lib: ctypes.CDLL | None = None
_tried = False


def _library_file() -> Path | None:
    return library_file(Path(__file__).parent, "_native")


_VP, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SIGNATURES: Signatures = {
    "subbit_native_isa": ([], _INT),
    "subbit_native_set_isa": ([_INT], _INT),
    "subbit_gq_table_forward": ([_VP, _I64, _I64, _VP, _VP, _I64, _VP], _INT),
    "subbit_gq_table_backward": ([_VP, _VP, _I64, _I64, _VP, _VP, _I64, _VP, _VP, _VP, _VP], _INT),
}


def _load() -> ctypes.CDLL | None:
    """Load the library once; ``None`` (after one warning) when it is missing or broken."""
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    lib = open_library(_library_file(), SIGNATURES, log,
                       missing="subbit.quant native library not built (quant/_native*.so missing): "
                               "GQ's table lookup uses the PyTorch ops",
                       broken="subbit.quant native library %s unusable (%s): GQ's table lookup uses the PyTorch ops")  # fmt: skip
    if lib is None:
        return None
    _lib = lib
    if os.environ.get("SUBBIT_KERNEL", "").strip().lower() in ("portable", "c"):
        # one switch for every dispatching library: the suite can run on the portable paths
        lib.subbit_native_set_isa(1)
    return lib


def available() -> bool:
    """Whether the C kernels can be used (library loaded and not disabled by ``SUBBIT_NATIVE=0``)."""
    if os.environ.get("SUBBIT_NATIVE", "1").strip() == "0":
        return False
    return _load() is not None


def isa() -> str | None:
    """The instruction set the kernels dispatch to on this CPU, or ``None`` without the library."""
    lib = _load()
    return None if lib is None else ISA_NAMES.get(lib.subbit_native_isa(), "unknown")


def set_isa(name: str | None) -> str:
    """Force the kernels onto one path ("portable", "avx2"; ``None`` = the best this
    CPU has), for parity tests and timings; returns the path now in use."""
    lib = _required()
    ids = {v: k for k, v in ISA_NAMES.items()}
    if name is not None and name not in ids:
        raise ValueError(f"native: isa must be one of {sorted(ids)} or None, got {name!r}")
    rc = lib.subbit_native_set_isa(0 if name is None else ids[name])
    if rc < 0:
        raise ValueError(f"native: this CPU cannot run the {name!r} path")
    return ISA_NAMES[rc]


def supports(*tensors: Tensor) -> bool:
    """Whether the C path can take these tensors: float32, CPU, contiguous, and the library up."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and t.is_contiguous()
               for t in tensors) and available()


def _ptr(t: Tensor | None, name: str, dtype: torch.dtype, numel: int) -> int | None:
    if t is None:
        return None
    if t.dtype != dtype or t.device.type != "cpu" or not t.is_contiguous():
        raise ValueError(f"native: {name} must be a contiguous {dtype} CPU tensor, "
                         f"got {t.dtype} on {t.device} (contiguous={t.is_contiguous()})")
    if t.numel() != numel:
        raise ValueError(f"native: {name} has {t.numel()} elements, expected {numel}")
    return t.data_ptr()


def _required() -> ctypes.CDLL:
    lib = _load()
    if lib is None:
        raise RuntimeError("native: subbit.quant._native is not built; rebuild with pip install -e .")
    return lib


def table_forward(w: Tensor, s: Tensor, table: Tensor) -> Tensor:
    """``s * T(clamp(w / s, -1, 1))`` interpolated per weight: ``w`` [G, N], ``s`` [G] or
    [G, 1], ``table`` [G, M] (grid ``linspace(-1, 1, M)``); a new [G, N] tensor, no autograd."""
    lib = _required()
    g, n = w.shape
    m = table.shape[-1]
    out = torch.empty_like(w)
    if out.numel() == 0:  # empty buffers may have a NULL address, which the C side rejects
        return out
    rc = lib.subbit_gq_table_forward(
        _ptr(w, "w", torch.float32, g * n), g, n, _ptr(s, "s", torch.float32, g),
        _ptr(table, "table", torch.float32, g * m), m, out.data_ptr())
    if rc != 0:
        raise ValueError(f"native: table forward rejected its arguments (code {rc}; M = {m})")
    return out


def table_backward(
    w: Tensor, grad: Tensor, s: Tensor, table: Tensor, *,
    need_w: bool = True, need_table: bool = True, need_s: bool = True,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of :func:`table_forward` for upstream ``grad`` [G, N]: ``(grad_w [G, N],
    grad_table [G, M], grad_s [G] float64)``, each ``None`` unless asked for. ``grad_w`` is 0
    where ``|w| > s`` (the clamp); ``grad_s`` is summed in float64."""
    lib = _required()
    g, n = w.shape
    m = table.shape[-1]
    gw = torch.empty_like(w) if need_w else None
    gt = torch.empty_like(table) if need_table else None
    gs = torch.empty(g, dtype=torch.float64) if need_s else None
    work = torch.empty(m, dtype=torch.float64) if need_table else None
    if w.numel() == 0:  # nothing to accumulate (and empty buffers may have a NULL address)
        return gw, (None if gt is None else gt.zero_()), (None if gs is None else gs.zero_())
    rc = lib.subbit_gq_table_backward(
        _ptr(w, "w", torch.float32, g * n), _ptr(grad, "grad", torch.float32, g * n), g, n,
        _ptr(s, "s", torch.float32, g), _ptr(table, "table", torch.float32, g * m), m,
        _ptr(gw, "grad_w", torch.float32, g * n), _ptr(gt, "grad_table", torch.float32, g * m),
        _ptr(gs, "grad_s", torch.float64, g), _ptr(work, "work", torch.float64, m))
    if rc != 0:
        raise ValueError(f"native: table backward rejected its arguments (code {rc}; M = {m})")
    return gw, gt, gs

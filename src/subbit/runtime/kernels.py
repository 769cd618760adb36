"""Packed-weight linear layer: ctypes loader for the C kernels, CPU dispatch, NumPy reference.

``packed_linear(x, w)`` computes ``x @ W^T (+ bias)`` for a bit-packed weight ``W [N, K]``
(:class:`subbit.export.bitpack.PackedTensor`). Numerics, the same on every path:

* codebook -> int8 table per group: ``s = max|c| / 127``, ``lut = rint(c / s)`` (the deployed
  model *is* this rounded table; see :func:`int8_codebook`);
* activations -> int8 per row and call: ``sx = max|x| / 127``, ``xq = rint(x * (127 / max|x|))``;
* ``acc = sum_k xq * lut[idx]`` exact in int32; ``y = float32(acc) * (sx * s) + bias``.

So every C path equals :func:`reference_packed_linear` bit for bit (tolerance 0; the integer
sum is exact and the float epilogue is the same three float32 operations).

Paths: ``ref`` (NumPy), ``c`` (portable C), ``avx2``, ``avx512`` (VNNI + VBMI). The default is
the best one the CPU has; ``SUBBIT_KERNEL=ref|portable|avx2|avx512`` (``c`` = ``portable``) or
``path=`` forces one. Without the compiled library the NumPy reference runs (one warning).
At 7-8 bits the ``c`` and ``avx2`` paths (no byte permutes) multiply int8 weights: where one of
them is the default path :func:`prepare` stores the weight that way (in place of the indices and
the per-row tables); otherwise a path asked for explicitly expands a copy on first use.

Streaming speed: weights are read once per frame from L3/DRAM, so :func:`prepare` moves packed
weights of at least ``HUGEPAGE_MIN_BYTES`` into huge-page memory (fewer TLB misses, no prefetch
stop at every 4 KiB), and the AVX-512 kernels prefetch the next rows in software. The dispatch
decision and the bias address are cached, since a streaming step makes dozens of small calls.
"""

from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from subbit.clib import Signatures, library_file, open_library
from subbit.export.bitpack import PackedTensor, int8_codebook, padded_length, unpack_rows
from subbit.runtime.arena import HUGEPAGE_MIN_BYTES, HugePageArena, whole_buffer

log = logging.getLogger(__name__)

PATHS = ("ref", "c", "avx2", "avx512")
#: other names accepted for a path (``SUBBIT_KERNEL=portable`` is the portable C path)
PATH_ALIASES = {"portable": "c"}
#: from this depth on, paths without byte permutes (c, avx2) multiply int8 weights (see prepare)
EXPAND_BITS = 7
_C_PATH_IDS = {"c": 1, "avx2": 2, "avx512": 3}
_ERRORS = {-1: "bad argument", -2: "path not supported by this CPU", -3: "out of memory"}

_lib: ctypes.CDLL | None = None
_lib_tried = False
_available: list[str] | None = None


def _library_file() -> Path | None:
    return library_file(Path(__file__).parent, "_kernels")


_VP, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
SIGNATURES: Signatures = {
    "subbit_packed_linear": ([_INT, _VP, _I64, _I64, _VP, _I64, _INT, _VP, _VP, _I64, _VP, _VP, _VP], _INT),
    "subbit_int8_linear": ([_INT, _VP, _I64, _I64, _VP, _I64, _VP, _I64, _VP, _VP, _VP], _INT),
    "subbit_rowsums": ([_VP, _I64, _I64, _INT, _VP, _I64, _VP], _INT),
    "subbit_supported_paths": ([], _INT),
    "subbit_best_path": ([], _INT),
    "subbit_read_sum": ([_VP, _I64], ctypes.c_uint64),
}


def _load() -> ctypes.CDLL | None:
    """Load the compiled kernels once; None (with one warning) when unavailable."""
    global _lib, _lib_tried, _available
    if _lib_tried:
        return _lib
    _lib_tried = True
    _available = None
    lib = open_library(_library_file(), SIGNATURES, log,
                       missing="subbit kernels library not built (runtime/_kernels*.so missing): using the NumPy reference",
                       broken="subbit kernels library %s failed to load (%s): using the NumPy reference")  # fmt: skip
    if lib is None:
        return None
    _lib = lib
    return lib


def available_paths() -> list[str]:
    """Paths that run here, best last: always ``ref``, then the C paths this CPU supports."""
    global _available
    lib = _load()
    if lib is None:
        return ["ref"]
    if _available is None:
        mask = int(lib.subbit_supported_paths())
        _available = ["ref"] + [name for name, pid in _C_PATH_IDS.items() if mask & (1 << pid)]
    return list(_available)


_default_cache: tuple[str | None, ctypes.CDLL | None, str] | None = None


def default_path() -> str:
    """``SUBBIT_KERNEL`` when set, else the best available path.

    The decision is cached against the raw environment value and the loaded library (one dict
    lookup per call, not a parse and a check): changing ``SUBBIT_KERNEL`` or reloading the
    library at run time still takes effect.
    """
    global _default_cache
    raw = os.environ.get("SUBBIT_KERNEL")
    cached = _default_cache
    if cached is not None and _lib_tried and cached[0] == raw and cached[1] is _lib:
        return cached[2]
    forced = (raw or "").strip().lower()
    path = _check_path(forced, source="SUBBIT_KERNEL") if forced else available_paths()[-1]
    _default_cache = (raw, _lib, path)
    return path


def _check_path(path: str, source: str = "path") -> str:
    path = PATH_ALIASES.get(path, path)
    if path not in PATHS:
        raise ValueError(f"{source} must be one of {PATHS + tuple(PATH_ALIASES)}, got {path!r}")
    if _available is not None and path in _available and _lib is not None:
        return path
    if path not in available_paths():
        raise ValueError(f"{source}={path!r} is not available here (available: {available_paths()})")
    return path


# -- int8 codebook ----------------------------------------------------------------------------
def lut_stride(bits: int) -> int:
    """Entries per group in the kernels' table: 2**bits, padded to 16 for one pshufb register."""
    return max(16, 1 << bits)


# -- prepared weights --------------------------------------------------------------------------
@dataclass
class PreparedWeight:
    """Everything the kernels read for one weight, built once per tensor (:func:`prepare`).

    ``identity``: stored as int8 values (7-8 bits, default path without byte permutes): ``packed``
    holds ``int8 [N, Kp]`` bytes, ``lut`` one identity table; indices and per-row tables are gone.
    """

    bits: int
    n: int
    k: int
    groups: int
    packed: np.ndarray  # uint8 [N, row_bytes], C-contiguous (identity: int8 weights [N, Kp] as uint8)
    lut: np.ndarray  # int8 [G, lut_stride(bits)], zero padded (identity: [1, 256])
    scales: np.ndarray  # float32 [G]
    rowsum: np.ndarray  # int32 [N]: sum of the padded row's int8 weights (VNNI offset correction)
    identity: bool = False

    def __post_init__(self) -> None:
        # raw addresses, taken once: reading .ctypes.data costs about a microsecond per call
        self._ptrs = (self.packed.ctypes.data, self.lut.ctypes.data, self.scales.ctypes.data, self.rowsum.ctypes.data)
        self._int8: tuple[np.ndarray, np.ndarray] | None = None
        self._bias: tuple[np.ndarray, int] | None = None

    @property
    def nbytes(self) -> int:
        """Resident bytes: indices (or int8 weights), tables, scales, row sums, any int8 copy."""
        extra = 0 if self._int8 is None or self.identity else self._int8[0].nbytes + self._int8[1].nbytes
        return int(self.packed.nbytes + self.lut.nbytes + self.scales.nbytes + self.rowsum.nbytes + extra)

    def bias_pointer(self, bias: np.ndarray) -> int:
        """Address of ``bias`` (float32, contiguous), remembered for the last bias object seen:
        a layer passes the same bias on every call, and ``.ctypes.data`` costs over a microsecond.
        The reference kept here keeps that buffer alive, so the address stays valid."""
        last = self._bias
        if last is not None and last[0] is bias:
            return last[1]
        ptr = int(bias.ctypes.data)
        self._bias = (bias, ptr)
        return ptr

    def int8_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """``(w8 int8 [N, Kp], row sums)``: for an identity weight its own bytes; otherwise the
        weights expanded once (N * Kp extra bytes, built on first use)."""
        if self.identity:
            return self.packed.view(np.int8), self.rowsum
        if self._int8 is None:
            w8 = _lookup(self.packed, self.bits, padded_length(self.k), self.lut, self.groups)
            self._int8 = (w8, w8.astype(np.int64).sum(axis=1).astype(np.int32))
        return self._int8

    def int8_matrix(self) -> np.ndarray:
        """The deployed int8 weight ``[N, K]`` (no padding): what every path multiplies by."""
        if self.identity:
            return self.packed.view(np.int8)[:, : self.k]
        return _lookup(self.packed, self.bits, self.k, self.lut, self.groups)

    def group_index(self) -> np.ndarray:
        """Row -> codebook group (scales), int64 [N]."""
        return np.zeros(self.n, dtype=np.int64) if self.groups == 1 else np.arange(self.n)


def _lookup(packed: np.ndarray, bits: int, count: int, lut: np.ndarray, groups: int) -> np.ndarray:
    """``lut[row's group, index]`` of the first ``count`` indices per row, int8 (1024 rows at a time)."""
    out = np.empty((packed.shape[0], count), dtype=np.int8)
    for a in range(0, packed.shape[0], 1024):
        idx = unpack_rows(packed[a : a + 1024], bits, count)
        out[a : a + 1024] = lut[0][idx] if groups == 1 else np.take_along_axis(lut[a : a + 1024], idx.astype(np.intp), axis=1)
    return out


IDENTITY_LUT = np.arange(256, dtype=np.uint8).view(np.int8).reshape(1, 256)


def rewrites_as_int8(bits: int) -> bool:
    """Whether :func:`prepare` stores a ``bits``-deep weight as int8 values (the default path's
    choice; under a bad ``SUBBIT_KERNEL`` the table layout, and the first product says why)."""
    try:
        return bits >= EXPAND_BITS and default_path() in ("ref", "c", "avx2")
    except ValueError:
        return False


_HugePageArena = HugePageArena
_arena = HugePageArena()  # weight placement: subbit.runtime.arena


def prepare(w: PackedTensor | PreparedWeight) -> PreparedWeight:
    """Int8 tables, row sums and contiguous buffers for ``w`` (cached on the PackedTensor).

    A packed weight of at least ``HUGEPAGE_MIN_BYTES`` is copied into the huge-page arena and
    ``w.packed`` is re-pointed at that copy (same shape and bytes), so memory does not double.
    At 7-8 bits on a default path without byte permutes the weight is stored as int8 values
    instead (``identity``); ``w`` itself is left as it was.
    """
    if isinstance(w, PreparedWeight):
        return w
    if not isinstance(w, PackedTensor):
        raise ValueError(f"expected a PackedTensor or PreparedWeight, got {type(w).__name__}")
    cached = w.runtime_cache.get("prepared")
    if cached is not None:
        return cached
    n, k = w.matrix_shape
    if w.groups not in (1, n):
        raise ValueError(f"kernels need one codebook per tensor or per row: groups={w.groups}, rows={n}")
    lut8, scales = int8_codebook(w)
    lut = np.zeros((w.groups, lut_stride(w.bits)), dtype=np.int8)
    lut[:, : lut8.shape[1]] = lut8
    if rewrites_as_int8(w.bits):
        return _prepare_int8(w, n, k, lut, scales)
    packed = np.ascontiguousarray(w.packed, dtype=np.uint8).reshape(n, -1)
    if packed.nbytes >= HUGEPAGE_MIN_BYTES and whole_buffer(np.asarray(w.packed)):
        # the same bytes, moved to huge pages; the tensor points at the new copy, so the old
        # buffer is released and resident memory does not grow (a view into a larger buffer,
        # e.g. a row slice for threads, stays where it is: moving it would keep both copies)
        original_shape = np.shape(w.packed)
        packed = _arena.place(packed)
        w.packed = packed.reshape(original_shape)
    rowsum = _rowsums(packed, n, k, w.bits, lut, w.groups)
    prep = PreparedWeight(w.bits, n, k, w.groups, packed, lut, scales, rowsum)
    w.runtime_cache["prepared"] = prep
    return prep


def _prepare_int8(w: PackedTensor, n: int, k: int, lut: np.ndarray, scales: np.ndarray) -> PreparedWeight:
    """The weight as int8 values ``[N, Kp]`` with one identity table (see PreparedWeight)."""
    rows = np.ascontiguousarray(w.packed, dtype=np.uint8).reshape(n, -1)
    w8 = _lookup(rows, w.bits, padded_length(k), lut, w.groups)  # padding reads index 0, as the kernels do
    data = w8.view(np.uint8)
    if data.nbytes >= HUGEPAGE_MIN_BYTES:
        data = _arena.place(data)
    rowsum = w8.astype(np.int64).sum(axis=1).astype(np.int32)
    prep = PreparedWeight(8, n, k, w.groups, data, IDENTITY_LUT, scales, rowsum, identity=True)
    w.runtime_cache["prepared"] = prep
    return prep


def _rowsums(packed: np.ndarray, n: int, k: int, bits: int, lut: np.ndarray, groups: int) -> np.ndarray:
    out = np.zeros(n, dtype=np.int32)
    lib = _load()
    if lib is not None and n:
        rc = lib.subbit_rowsums(packed.ctypes.data, n, k, bits, lut.ctypes.data, groups, out.ctypes.data)
        if rc != 0:
            raise ValueError(f"rowsums failed: {_ERRORS.get(rc, rc)}")
        return out
    w8 = _lookup(packed, bits, padded_length(k), lut, groups)  # padding index 0 counts
    return w8.astype(np.int64).sum(axis=1).astype(np.int32)


# -- the reference -----------------------------------------------------------------------------
def quantize_activations(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-row int8 activations: ``(xq int8 [M, K], sx float32 [M])``, ``x ~ sx * xq``."""
    x = np.asarray(x, dtype=np.float32)
    amax = np.max(np.abs(x), axis=1) if x.shape[1] else np.zeros(x.shape[0], np.float32)
    ok = amax > 0
    inv = np.float32(127.0) / np.where(ok, amax, np.float32(1.0)).astype(np.float32)
    xq = np.clip(np.rint(x * inv[:, None]), -127, 127)
    xq[~ok] = 0
    sx = np.where(ok, amax / np.float32(127.0), np.float32(0.0)).astype(np.float32)
    return xq.astype(np.int8), sx


def reference_packed_linear(x: np.ndarray, w: PackedTensor | PreparedWeight, bias: np.ndarray | None = None) -> np.ndarray:
    """NumPy model of the kernels with the same integer math (bit-identical results)."""
    p = prepare(w)
    x = _check_x(x, p.k)
    bias = _check_bias(bias, p.n)
    xq, sx = quantize_activations(x)
    g = p.group_index()
    w8 = p.int8_matrix().astype(np.int64)  # [N, K]
    acc = (xq.astype(np.int64) @ w8.T).astype(np.int32)
    scale = sx[:, None] * p.scales[g][None, :]  # float32
    y = acc.astype(np.float32) * scale
    if bias is not None:
        y = y + bias[None, :]
    return y.astype(np.float32, copy=False)


def dequantized_weight(w: PackedTensor | PreparedWeight) -> np.ndarray:
    """The deployed float32 weight ``[N, K]``: ``s_g * lut[idx]`` (what the kernels multiply by)."""
    p = prepare(w)
    return (p.int8_matrix().astype(np.float32) * p.scales[p.group_index()][:, None]).astype(np.float32)


# -- the entry point ---------------------------------------------------------------------------
def _check_x(x: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != k:
        raise ValueError(f"x must be [M, {k}], got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _check_bias(bias: np.ndarray | None, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    if type(bias) is np.ndarray and bias.dtype == np.float32 and bias.ndim == 1 and bias.flags.c_contiguous:
        if bias.shape[0] != n:
            raise ValueError(f"bias must have {n} entries, got {bias.shape[0]}")
        return bias  # the caller's own array: lets PreparedWeight.bias_pointer recognise it
    b = np.ascontiguousarray(bias, dtype=np.float32).reshape(-1)
    if b.shape[0] != n:
        raise ValueError(f"bias must have {n} entries, got {b.shape[0]}")
    return b


def packed_linear(
    x: np.ndarray, w: PackedTensor | PreparedWeight, bias: np.ndarray | None = None, *, path: str | None = None
) -> np.ndarray:
    """``x [M, K] @ W^T + bias -> float32 [M, N]`` through the chosen (or best) kernel path.

    A 1-D ``x`` is treated as one row and gives ``[1, N]``. Non-finite inputs give undefined
    outputs (the activation scale would be NaN).
    """
    path = default_path() if path is None else _check_path(path)
    if path == "ref":
        return reference_packed_linear(x, w, bias)
    p = prepare(w)
    xc = _check_x(x, p.k)
    b = _check_bias(bias, p.n)
    m = xc.shape[0]
    y = np.empty((m, p.n), dtype=np.float32)
    lib = _load()
    assert lib is not None  # _check_path guarantees it
    bptr = None if b is None else p.bias_pointer(b)
    if p.identity or (p.bits >= EXPAND_BITS and path in ("c", "avx2")):
        rc = _int8_linear(lib, path, xc, p, bptr, y)
    else:
        packed, lut, scales, rowsum = p._ptrs
        rc = lib.subbit_packed_linear(_C_PATH_IDS[path], xc.ctypes.data, m, p.k, packed, p.n, p.bits, lut, scales,
                                      p.groups, rowsum, bptr, y.ctypes.data)  # fmt: skip
    if rc != 0:
        raise ValueError(f"packed_linear ({path}) failed: {_ERRORS.get(rc, rc)}")
    return y


def _int8_linear(lib: ctypes.CDLL, path: str, xc: np.ndarray, p: PreparedWeight, bptr: int | None, y: np.ndarray) -> int:
    """The product through :meth:`PreparedWeight.int8_weights` (any C path)."""
    w8, rs8 = p.int8_weights()
    return int(lib.subbit_int8_linear(_C_PATH_IDS[path], xc.ctypes.data, xc.shape[0], p.k, w8.ctypes.data, p.n,
                                      p._ptrs[2], p.groups, rs8.ctypes.data, bptr, y.ctypes.data))  # fmt: skip


def read_sum(buf: np.ndarray) -> int:
    """Read a byte buffer with wide loads (the plain read-bandwidth reference for benchmarks).

    Returns a checksum: the sum mod 2**64 of its little-endian uint64 words plus the tail bytes.
    """
    b = np.ascontiguousarray(buf).view(np.uint8).reshape(-1)
    lib = _load()
    if lib is None:
        whole = b.size // 8 * 8
        words = int(b[:whole].view("<u8").sum(dtype=np.uint64)) if whole else 0
        return (words + int(b[whole:].sum(dtype=np.uint64))) % (1 << 64)
    return int(lib.subbit_read_sum(b.ctypes.data, b.size))


def describe() -> dict[str, Any]:
    """Library file and paths, for logs and benchmark JSON."""
    f = _library_file()
    return {"library": None if f is None else str(f), "available": available_paths(), "default": default_path()}

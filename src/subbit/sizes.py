"""How many bytes things take: the one definition every size in subbit comes from.

NumPy and the standard library only, below both :mod:`subbit.quant` and :mod:`subbit.export`
(``tests/test_layering.py`` holds it there), so the quantizer report, the ``.subbit`` writer,
``subbit report``, the benchmark and the experiment tables count the same bytes.

What is counted:

* packed indices: :func:`index_bytes` is what a ``.subbit`` file holds (layout
  ``rowblock32-planes-v1``: the weight viewed as ``[N, K]`` rows, each row padded to a multiple
  of 8 indices, so ``N * ceil(K / 8) * bits``); :func:`ideal_index_bytes` is the lower bound
  ``ceil(count * bits / 8)`` (no padding; the "theory" figures).
* codebooks, by kind (:data:`CODEBOOK_KINDS`): ``"table"``, the full float32 ``[G, 2**bits]``
  table (:func:`table_bytes`), or ``"affine"``, an evenly spaced codebook that is bit for bit
  ``step[g] * (j - z)``, stored as one float32 step per group (:func:`affine_bytes`; ``z`` lives
  in the manifest). :func:`find_affine` decides, with an exact bit-level rule.
* twins of the same model: :func:`fp32_bytes` (4 bytes per value) and :func:`int8_bytes`
  (1 byte per quantized value + one float32 scale per output channel, :func:`int8_twin_bytes`).
* float tensors as stored: :func:`float_bytes` (``count * itemsize`` of the dtype).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

#: codebook kinds a ``.subbit`` file stores (manifest field ``codebook``)
CODEBOOK_KINDS = ("table", "affine")
#: indices of a packed row are padded to a multiple of this (whole bytes at any bit depth)
ROW_ALIGN = 8
#: bytes of one float32 value (codebook entry, step, scale, fp32 weight)
F32 = 4
#: bytes per output channel of the int8 twin: one float32 scale
INT8_SCALE_BYTES = F32
#: bytes of the per-tensor quantization parameters of a torch.ao dynamic int8 weight
#: (as counted by the benchmark since it exists: a scale and a zero point, 12 bytes)
TORCH_AO_QPARAM_BYTES = 12
#: bytes per element of the dtypes a ``.subbit`` file uses (safetensors names)
DTYPE_BYTES = {"F32": 4, "F16": 2, "U8": 1, "I64": 8, "I32": 4, "BOOL": 1}


def _bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    return int(bits)


def count_of(shape: Sequence[int]) -> int:
    """Number of values of a tensor of ``shape`` (``()`` is one value)."""
    return math.prod(int(s) for s in shape)


def rows_of(shape: Sequence[int]) -> int:
    """Output channels (packed rows) of a weight: ``shape[0]``; a 1-D or 0-D tensor is one row."""
    shape = tuple(int(s) for s in shape)
    return shape[0] if len(shape) > 1 else 1


# -- packed indices ------------------------------------------------------------------------------
def row_index_bytes(count: int, bits: int) -> int:
    """Bytes of one packed row of ``count`` indices: ``ceil(count / 8) * bits``."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return -(-int(count) // ROW_ALIGN) * _bits(bits)


def index_bytes(shape: Sequence[int], bits: int) -> int:
    """Bytes of the packed indices of a weight of ``shape`` as the file stores them:
    ``rows * ceil(K / 8) * bits`` with ``K = count / rows`` (rows padded to 8 indices)."""
    n = rows_of(shape)
    count = count_of(shape)
    return n * row_index_bytes(count // n if n else 0, bits)


def ideal_index_bytes(count: int, bits: int) -> int:
    """The lower bound for ``count`` indices of ``bits`` bits: ``ceil(count * bits / 8)``."""
    return -(-int(count) * _bits(bits) // 8)


# -- codebooks -----------------------------------------------------------------------------------
def table_bytes(groups: int, bits: int) -> int:
    """A full float32 codebook table: ``4 * groups * 2**bits``."""
    return F32 * int(groups) * (1 << _bits(bits))


def affine_bytes(groups: int) -> int:
    """An affine (evenly spaced) codebook: one float32 step per group, ``4 * groups``."""
    return F32 * int(groups)


def codebook_bytes(groups: int, bits: int, kind: str = "table") -> int:
    """Bytes of a codebook of ``kind`` (one of :data:`CODEBOOK_KINDS`)."""
    if kind == "table":
        return table_bytes(groups, bits)
    if kind == "affine":
        return affine_bytes(groups)
    raise ValueError(f"codebook kind must be one of {list(CODEBOOK_KINDS)}, got {kind!r}")


def affine_table(step: np.ndarray, zero_index: int, k: int) -> np.ndarray:
    """The ``[G, k]`` float32 table of an affine codebook: ``step[g] * (j - zero_index)``.

    Writer and loaders both use exactly this float32 expression, so a codebook the writer
    verified against it is rebuilt bit for bit.
    """
    s = np.asarray(step, dtype=np.float32).reshape(-1, 1)
    levels = np.arange(k, dtype=np.float32) - np.float32(zero_index)
    with np.errstate(over="ignore", invalid="ignore"):
        return (s * levels[None, :]).astype(np.float32)


def find_affine(codebook: np.ndarray) -> tuple[np.ndarray, int] | None:
    """``(step [G] float32, zero_index)`` if ``codebook`` ``[G, K]`` is exactly (bit for bit)
    :func:`affine_table` of them with every step finite and > 0; else None.

    Column ``zero_index`` must be 0 in every group (symmetric uniform grids
    ``-2**(b-1) .. 2**(b-1) - 1``: z = 2**(b-1)). Codebooks without a zero level, such as 1-bit
    ``{-step, +step}``, stay tables (2 floats per group instead of 1).
    """
    cb = np.asarray(codebook)
    if cb.dtype != np.float32 or cb.ndim != 2 or cb.shape[1] < 2 or cb.shape[0] < 1:
        return None
    if not np.all(np.isfinite(cb)):
        return None
    k = cb.shape[1]
    zero_cols = np.flatnonzero(np.all(cb == 0, axis=0))
    if zero_cols.size != 1:
        return None
    z = int(zero_cols[0])
    step = np.ascontiguousarray(cb[:, z + 1] if z + 1 < k else -cb[:, z - 1], dtype=np.float32)
    if not np.all(step > 0):
        return None
    if np.array_equal(affine_table(step, z, k).view(np.uint32), cb.view(np.uint32)):
        return step, z
    return None


def codebook_kind(codebook: np.ndarray) -> str:
    """The kind a ``.subbit`` writer stores ``codebook`` ``[G, 2**bits]`` as (compact codebooks on):
    ``"affine"`` when :func:`find_affine` proves it, else ``"table"``."""
    return "affine" if find_affine(codebook) is not None else "table"


# -- quantized tensors ---------------------------------------------------------------------------
def quantized_bytes(shape: Sequence[int], bits: int, groups: int, kind: str = "table") -> int:
    """Bytes a quantized weight takes in a ``.subbit`` file: :func:`index_bytes` + :func:`codebook_bytes`."""
    return index_bytes(shape, bits) + codebook_bytes(groups, bits, kind)


def ideal_quantized_bytes(count: int, bits: int, groups: int, kind: str = "table") -> int:
    """:func:`ideal_index_bytes` + :func:`codebook_bytes`: a quantized weight without row padding."""
    return ideal_index_bytes(count, bits) + codebook_bytes(groups, bits, kind)


# -- twins and float tensors ---------------------------------------------------------------------
def fp32_bytes(count: int) -> int:
    """The fp32 twin of ``count`` values: 4 bytes each."""
    return F32 * int(count)


def int8_bytes(count: int, scales: int, scale_bytes: int = INT8_SCALE_BYTES) -> int:
    """``count`` int8 values + ``scales`` quantization parameters of ``scale_bytes`` each."""
    return int(count) + int(scales) * int(scale_bytes)


def int8_twin_bytes(shape: Sequence[int]) -> int:
    """The int8 twin of a quantized weight: an 8-bit per-channel export of it, 1 byte per value
    + one float32 scale per output channel (:func:`rows_of`), whatever its own granularity."""
    return int8_bytes(count_of(shape), rows_of(shape))


def itemsize(dtype: Any) -> int:
    """Bytes per element of ``dtype``: a safetensors name (``"F16"``), an item size in bytes
    (``torch.Tensor.element_size()``) or anything ``numpy.dtype`` accepts."""
    if isinstance(dtype, str) and dtype in DTYPE_BYTES:
        return DTYPE_BYTES[dtype]
    if isinstance(dtype, (int, np.integer)) and not isinstance(dtype, bool):
        if dtype < 1:
            raise ValueError(f"item size must be >= 1, got {dtype}")
        return int(dtype)
    return int(np.dtype(dtype).itemsize)


def float_bytes(count: int, dtype: Any = "F32") -> int:
    """A tensor of ``count`` values stored as ``dtype`` (see :func:`itemsize`)."""
    return int(count) * itemsize(dtype)


__all__ = [
    "CODEBOOK_KINDS", "DTYPE_BYTES", "F32", "INT8_SCALE_BYTES", "ROW_ALIGN", "TORCH_AO_QPARAM_BYTES",
    "affine_bytes", "affine_table", "codebook_bytes", "codebook_kind", "count_of", "find_affine",
    "float_bytes", "fp32_bytes", "ideal_index_bytes", "ideal_quantized_bytes", "index_bytes", "int8_bytes",
    "int8_twin_bytes", "itemsize", "quantized_bytes", "row_index_bytes", "rows_of", "table_bytes",
]  # fmt: skip

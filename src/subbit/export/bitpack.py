"""Bit packing of codebook indices in the layout the C kernels decode in registers.

Layout ``rowblock32-planes-v1`` (also in docs/format.md):

* A weight of shape ``[N, ...]`` is viewed as rows ``[N, K]`` (K = product of the other dims;
  a 1-D tensor is one row). Each row is padded with index 0 up to ``Kp = ceil(K / 8) * 8``, so a
  row takes ``Kp * b / 8`` whole bytes and row n starts at byte ``n * row_bytes``.
* A row is cut into blocks of 32 consecutive indices; the last block may be short
  (L = 8, 16 or 24 indices). A block of L b-bit indices takes ``L * b / 8`` bytes.
* Inside a block the b bits of each index are split into *planes* of width 8, 4, 2 or 1,
  low bits first: b=1: [1], 2: [2], 3: [2, 1], 4: [4], 5: [4, 1], 6: [4, 2], 7: [4, 2, 1],
  8: [8]. ``index = sum(plane_p << shift_p)`` with shifts 0, then the running width. Planes
  follow each other inside the block.
* A plane of width w in a block of L indices takes ``B = L * w / 8`` bytes. Byte j (0 <= j < B)
  holds ``8 / w`` fields, little-endian within the byte: field t (bits ``t*w .. t*w+w-1``) is
  the plane value of index ``j + B*t`` of the block. For full blocks (B = 4w) decoding 32
  indices is: broadcast the 4w bytes ``8/w`` times, shift copy t right by ``t*w`` bits, mask
  ``2**w - 1`` (one ``vpsrlv`` + one ``vpand``).

Padding indices are 0 and loaders check that they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

BLOCK = 32
PACKING = "rowblock32-planes-v1"

#: (width, shift) of each plane, low bits first.
PLANES: dict[int, tuple[tuple[int, int], ...]] = {
    1: ((1, 0),),
    2: ((2, 0),),
    3: ((2, 0), (1, 2)),
    4: ((4, 0),),
    5: ((4, 0), (1, 4)),
    6: ((4, 0), (2, 4)),
    7: ((4, 0), (2, 4), (1, 6)),
    8: ((8, 0),),
}


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 1 <= int(bits) <= 8:
        raise ValueError(f"bits must be an integer in 1..8, got {bits!r}")
    return int(bits)


ROW_ALIGN = 8


def padded_length(count: int) -> int:
    """Indices per row after padding to a multiple of 8 (whole bytes at any bit depth)."""
    return -(-int(count) // ROW_ALIGN) * ROW_ALIGN


def row_bytes(count: int, bits: int) -> int:
    """Bytes one packed row of ``count`` indices takes: ``ceil(count / 8) * bits``."""
    return padded_length(count) // 8 * _check_bits(bits)


def _pack_blocks(v: np.ndarray, bits: int) -> np.ndarray:
    """``v``: uint8 [B, L] index blocks (L in 8, 16, 24, 32) -> uint8 [B, L * bits / 8]."""
    nblk, length = v.shape
    out = []
    for width, shift in PLANES[bits]:
        fields, nbytes = 8 // width, length * width // 8
        plane = (v >> shift) & ((1 << width) - 1)  # [B, L]
        plane = plane.reshape(nblk, fields, nbytes)  # [B, t, j]: index j + nbytes*t
        byte = np.zeros((nblk, nbytes), dtype=np.uint8)
        for t in range(fields):
            byte |= (plane[:, t, :] << (t * width)).astype(np.uint8)
        out.append(byte)
    return np.concatenate(out, axis=1)


def _unpack_blocks(p: np.ndarray, bits: int, length: int) -> np.ndarray:
    """``p``: uint8 [B, L * bits / 8] -> uint8 [B, L] indices."""
    idx = np.zeros((p.shape[0], length), dtype=np.uint8)
    offset = 0
    for width, shift in PLANES[bits]:
        nbytes = length * width // 8
        byte = p[:, offset : offset + nbytes]
        offset += nbytes
        fields = [(byte >> (t * width)) & ((1 << width) - 1) for t in range(8 // width)]
        plane = np.concatenate(fields, axis=1)  # position t*nbytes + j = index j + nbytes*t
        idx |= (plane << shift).astype(np.uint8)
    return idx


def _as_indices(indices: np.ndarray, bits: int) -> np.ndarray:
    a = np.asarray(indices)
    if a.dtype.kind not in "iu" and a.dtype != np.bool_:
        raise ValueError(f"indices must be integers, got dtype {a.dtype}")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= 1 << bits:
            raise ValueError(f"indices must lie in [0, {(1 << bits) - 1}] for {bits} bits, got range [{lo}, {hi}]")
    return a.astype(np.uint8)


def pack_rows(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 2-D ``[N, K]`` index array row by row -> uint8 ``[N, row_bytes(K, bits)]``."""
    bits = _check_bits(bits)
    a = _as_indices(indices, bits)
    if a.ndim != 2:
        raise ValueError(f"pack_rows expects a 2-D [N, K] array, got shape {a.shape}")
    n, k = a.shape
    kp = padded_length(k)
    padded = np.zeros((n, kp), dtype=np.uint8)
    padded[:, :k] = a
    full, tail = divmod(kp, BLOCK)
    parts = []
    if full:
        blocks = padded[:, : full * BLOCK].reshape(n * full, BLOCK)
        parts.append(_pack_blocks(blocks, bits).reshape(n, full * 4 * bits))
    if tail:
        parts.append(_pack_blocks(padded[:, full * BLOCK :], bits))
    if not parts:
        return np.zeros((n, 0), dtype=np.uint8)
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def unpack_rows(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_rows`: uint8 ``[N, row_bytes]`` -> uint8 ``[N, count]``."""
    bits = _check_bits(bits)
    p = np.asarray(packed)
    if p.dtype != np.uint8 or p.ndim != 2:
        raise ValueError(f"packed must be a 2-D uint8 array, got {p.dtype} {p.shape}")
    if count < 0 or p.shape[1] != row_bytes(count, bits):
        raise ValueError(
            f"packed rows have {p.shape[1]} bytes, expected {row_bytes(max(count, 0), bits)} "
            f"for {count} indices at {bits} bits"
        )
    n = p.shape[0]
    kp = padded_length(count)
    full, tail = divmod(kp, BLOCK)
    parts = []
    if full:
        blocks = p[:, : full * 4 * bits].reshape(n * full, 4 * bits)
        parts.append(_unpack_blocks(blocks, bits, BLOCK).reshape(n, full * BLOCK))
    if tail:
        parts.append(_unpack_blocks(p[:, full * 4 * bits :], bits, tail))
    if not parts:
        return np.zeros((n, 0), dtype=np.uint8)
    return np.concatenate(parts, axis=1)[:, :count]


def padding_is_zero(packed: np.ndarray, bits: int, count: int) -> bool:
    """True when every padding index (positions >= count of each row) is 0."""
    kp = padded_length(count)
    if kp == count:
        return True
    full = unpack_rows(packed, bits, kp)
    return not bool(full[:, count:].any())


def pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 1-D stream of indices (any length) -> uint8 ``[row_bytes(len, bits)]``.

    The stream is one row of the layout above: padded with zeros to a multiple of 8 indices.
    """
    bits = _check_bits(bits)
    a = np.asarray(indices)
    if a.ndim != 1:
        raise ValueError(f"pack expects a 1-D array (use pack_rows for matrices), got shape {a.shape}")
    return pack_rows(a.reshape(1, -1), bits).reshape(-1)


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack`: the first ``count`` indices as int64."""
    p = np.asarray(packed)
    if p.ndim != 1:
        raise ValueError(f"unpack expects a 1-D uint8 array, got shape {p.shape}")
    return unpack_rows(p.reshape(1, -1), bits, count).reshape(-1).astype(np.int64)


def int8_codebook(packed: PackedTensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-group int8 table and scale: ``(lut int8 [G, 2**bits], s float32 [G])``, ``c ~ s * lut``.

    ``s = max|c| / 127`` (groups of zeros get ``s = 0``, ``lut = 0``); ``lut = rint(c / s)``.
    This rounding is part of the deployed model: every runtime path computes with it.
    """
    cb = np.asarray(packed.codebook if isinstance(packed, PackedTensor) else packed, dtype=np.float32)
    if cb.ndim != 2:
        raise ValueError(f"codebook must be 2-D [G, 2**bits], got shape {cb.shape}")
    amax = np.max(np.abs(cb), axis=1) if cb.size else np.zeros(cb.shape[0], np.float32)
    scales = (amax / np.float32(127.0)).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0)).astype(np.float32)
    lut = np.clip(np.rint(cb / safe[:, None]), -127, 127).astype(np.int8)
    return lut, scales


def matrix_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """The ``[N, K]`` view packing uses: rows = ``shape[0]`` (1-D tensors are one row)."""
    shape = tuple(int(s) for s in shape)
    count = int(np.prod(shape)) if shape else 1
    n = shape[0] if len(shape) > 1 else 1
    return n, (count // n if n else 0)


@dataclass
class PackedTensor:
    """One quantized weight as stored and as the runtime reads it.

    ``packed``: uint8 ``[N, row_bytes]`` in the layout above; ``codebook``: float32
    ``[groups, 2**bits]``; groups are the rows of the flat weight viewed as ``[groups, -1]``
    (1 = per tensor, ``shape[0]`` = per output channel).
    """

    bits: int
    shape: tuple[int, ...]
    packed: np.ndarray
    codebook: np.ndarray
    groups: int
    granularity: str = "tensor"
    method: str = ""
    mu: float | None = None
    runtime_cache: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_indices(
        cls, indices: np.ndarray, codebook: np.ndarray, bits: int, *, granularity: str = "tensor",
        method: str = "", mu: float | None = None,
    ) -> PackedTensor:  # fmt: skip
        """Pack int ``indices`` (shaped like the weight) with a ``[G, 2**bits]`` codebook."""
        bits = _check_bits(bits)
        idx = np.asarray(indices)
        cb = np.asarray(codebook, dtype=np.float32)
        if cb.ndim != 2 or cb.shape[1] != 1 << bits:
            raise ValueError(f"codebook must be [G, {1 << bits}] for {bits} bits, got shape {cb.shape}")
        if cb.shape[0] < 1 or idx.size % cb.shape[0]:
            raise ValueError(f"{idx.size} indices do not split into {cb.shape[0]} codebook groups")
        n, k = matrix_rows(idx.shape)
        packed = pack_rows(idx.reshape(n, k), bits)
        return cls(bits, tuple(int(s) for s in idx.shape), packed, cb, int(cb.shape[0]), granularity, method, mu)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return matrix_rows(self.shape)

    @property
    def count(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def indices(self) -> np.ndarray:
        """int64 indices shaped like the weight."""
        n, k = self.matrix_shape
        return unpack_rows(np.asarray(self.packed).reshape(n, -1), self.bits, k).astype(np.int64).reshape(self.shape)

    def dequantize(self) -> np.ndarray:
        """float32 weight from the float codebook (the converted training model's values)."""
        flat = self.indices().reshape(self.groups, -1)
        return np.take_along_axis(self.codebook, flat, axis=1).reshape(self.shape).astype(np.float32)

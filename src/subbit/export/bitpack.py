"""Bit packing of codebook indices in the layout the C kernels decode in registers.

Layout ``rowblock32-planes-v1`` (also in docs/format.md):

* A weight of shape ``[N, ...]`` is viewed as rows ``[N, K]`` (K = product of the other dims).
  Each row is padded with index 0 up to ``Kp = ceil(K / 32) * 32`` and cut into blocks of 32
  consecutive indices. A block of b-bit indices takes exactly ``4 * b`` bytes, so a row takes
  ``Kp / 32 * 4 * b`` bytes and rows start at byte ``n * row_bytes``. A 1-D stream is one row.
* Inside a block the b bits of each index are split into *planes* of width 8, 4, 2 or 1,
  low bits first: b=1: [1], 2: [2], 3: [2, 1], 4: [4], 5: [4, 1], 6: [4, 2], 7: [4, 2, 1],
  8: [8]. ``index = sum(plane_p << shift_p)`` with shifts 0, then the running width.
* A plane of width w occupies ``4 * w`` bytes. Byte j (0 <= j < 4w) holds ``8 / w`` fields,
  little-endian within the byte: field t (bits ``t*w .. t*w+w-1``) is the plane value of index
  ``j + 4*w*t`` of the block. Decoding 32 indices is thus: broadcast the 4w bytes ``8/w``
  times, shift copy t right by ``t*w`` bits, mask ``2**w - 1`` (one ``vpsrlv`` + one ``vpand``).

Padding indices are 0 and loaders check that they are.
"""

from __future__ import annotations

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


def padded_length(count: int) -> int:
    """Indices per row after padding to whole 32-index blocks."""
    return -(-int(count) // BLOCK) * BLOCK


def row_bytes(count: int, bits: int) -> int:
    """Bytes one packed row of ``count`` indices takes (4 * bits per block of 32)."""
    return padded_length(count) // BLOCK * 4 * _check_bits(bits)


def _pack_blocks(v: np.ndarray, bits: int) -> np.ndarray:
    """``v``: uint8 [B, 32] index blocks -> uint8 [B, 4 * bits]."""
    out = []
    for width, shift in PLANES[bits]:
        fields = 8 // width
        plane = (v >> shift) & ((1 << width) - 1)  # [B, 32]
        plane = plane.reshape(v.shape[0], fields, 4 * width)  # [B, t, j]: index j + 4w*t
        byte = np.zeros((v.shape[0], 4 * width), dtype=np.uint8)
        for t in range(fields):
            byte |= (plane[:, t, :] << (t * width)).astype(np.uint8)
        out.append(byte)
    return np.concatenate(out, axis=1)


def _unpack_blocks(p: np.ndarray, bits: int) -> np.ndarray:
    """``p``: uint8 [B, 4 * bits] -> uint8 [B, 32] indices."""
    idx = np.zeros((p.shape[0], BLOCK), dtype=np.uint8)
    offset = 0
    for width, shift in PLANES[bits]:
        nbytes = 4 * width
        byte = p[:, offset : offset + nbytes]
        offset += nbytes
        fields = [(byte >> (t * width)) & ((1 << width) - 1) for t in range(8 // width)]
        plane = np.concatenate(fields, axis=1)  # position t*4w + j = index j + 4w*t
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
    blocks = padded.reshape(n * (kp // BLOCK), BLOCK)
    return _pack_blocks(blocks, bits).reshape(n, row_bytes(k, bits))


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
    blocks = p.reshape(n * (kp // BLOCK), 4 * bits)
    return _unpack_blocks(blocks, bits).reshape(n, kp)[:, :count]


def padding_is_zero(packed: np.ndarray, bits: int, count: int) -> bool:
    """True when every padding index (positions >= count of each row) is 0."""
    kp = padded_length(count)
    if kp == count:
        return True
    full = unpack_rows(packed, bits, kp)
    return not bool(full[:, count:].any())


def pack(indices: np.ndarray, bits: int) -> np.ndarray:
    """Pack a 1-D stream of indices (any length) -> uint8 ``[row_bytes(len, bits)]``.

    The stream is one row of the layout above: padded with zeros to a multiple of 32 indices.
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

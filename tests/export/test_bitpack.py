"""Bit packing: round trips at every bit depth and length, exact sizes, the documented layout."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from subbit.export.bitpack import (
    PLANES,
    PackedTensor,
    pack,
    pack_rows,
    padding_is_zero,
    row_bytes,
    unpack,
    unpack_rows,
)


@st.composite
def index_streams(draw: st.DrawFn) -> tuple[int, np.ndarray]:
    bits = draw(st.integers(1, 8))
    n = draw(st.integers(0, 300))
    vals = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n, max_size=n))
    return bits, np.array(vals, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(index_streams())
def test_round_trip_any_length(case: tuple[int, np.ndarray]) -> None:
    bits, idx = case
    packed = pack(idx, bits)
    assert packed.dtype == np.uint8
    assert packed.size == row_bytes(idx.size, bits) == -(-idx.size // 8) * bits
    np.testing.assert_array_equal(unpack(packed, bits, idx.size), idx)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 8), st.integers(1, 6), st.integers(1, 80), st.integers(0, 2**32 - 1))
def test_rows_round_trip(bits: int, n: int, k: int, seed: int) -> None:
    idx = np.random.default_rng(seed).integers(0, 1 << bits, (n, k))
    packed = pack_rows(idx, bits)
    assert packed.shape == (n, row_bytes(k, bits))
    np.testing.assert_array_equal(unpack_rows(packed, bits, k), idx)
    assert padding_is_zero(packed, bits, k)
    # each row packs like a stream on its own: rows start at n * row_bytes
    np.testing.assert_array_equal(packed[n - 1], pack(idx[n - 1], bits))


@pytest.mark.parametrize("bits", range(1, 9))
def test_block_is_4b_bytes_and_planes_cover_bits(bits: int) -> None:
    assert sum(w for w, _ in PLANES[bits]) == bits
    assert pack(np.zeros(32, np.int64), bits).size == 4 * bits


def test_layout_matches_documentation() -> None:
    # 4 bits: byte j holds index j (low nibble) and j + 16 (high nibble)
    idx = np.arange(32) % 16
    p = pack(idx, 4)
    assert p[0] == (0 | (0 << 4)) and p[1] == (1 | (1 << 4)) and p[15] == (15 | (15 << 4))
    idx = np.zeros(32, np.int64)
    idx[17] = 9
    p = pack(idx, 4)
    assert p[1] == 9 << 4 and p.sum() == 9 << 4
    # 1 bit: index i is bit i // 4 of byte i % 4
    idx = np.zeros(32, np.int64)
    idx[5] = 1
    np.testing.assert_array_equal(pack(idx, 1), [0, 2, 0, 0])
    # 3 bits: a 2-bit plane (8 bytes) then a 1-bit plane (4 bytes)
    idx = np.zeros(32, np.int64)
    idx[0] = 6  # low plane 2, high plane 1
    np.testing.assert_array_equal(pack(idx, 3), [2, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0])
    # a short last block of 8 indices at 8 bits is the raw bytes
    np.testing.assert_array_equal(pack(np.arange(40) % 256, 8)[32:], np.arange(32, 40))


@pytest.mark.parametrize("bits", range(1, 9))
def test_out_of_range_index_is_refused(bits: int) -> None:
    with pytest.raises(ValueError, match="indices must lie"):
        pack(np.array([0, 1 << bits]), bits)
    with pytest.raises(ValueError, match="indices must lie"):
        pack(np.array([-1]), bits)


def test_bad_arguments() -> None:
    for bad in (0, 9, 2.5, True):
        with pytest.raises(ValueError, match="bits"):
            pack(np.zeros(4, np.int64), bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="integers"):
        pack(np.zeros(4, np.float32), 4)
    with pytest.raises(ValueError, match="bytes"):
        unpack(np.zeros(3, np.uint8), 4, 8)
    with pytest.raises(ValueError, match="1-D"):
        pack(np.zeros((2, 2), np.int64), 4)


def test_nonzero_padding_is_detected() -> None:
    p = pack_rows(np.zeros((2, 5), np.int64), 2)
    assert padding_is_zero(p, 2, 5)
    p[1, -1] |= 0x80  # last field of the last byte: index 7 of the 8-index block (padding)
    assert not padding_is_zero(p, 2, 5)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_packed_tensor_dequantize(granularity: str) -> None:
    rng = np.random.default_rng(0)
    shape = (6, 3, 5)
    g = shape[0] if granularity == "channel" else 1
    idx = rng.integers(0, 8, shape)
    cb = rng.normal(size=(g, 8)).astype(np.float32)
    pt = PackedTensor.from_indices(idx, cb, 3, granularity=granularity)
    np.testing.assert_array_equal(pt.indices(), idx)
    expect = np.take_along_axis(cb, idx.reshape(g, -1), axis=1).reshape(shape)
    np.testing.assert_array_equal(pt.dequantize(), expect)
    with pytest.raises(ValueError, match="codebook"):
        PackedTensor.from_indices(idx, cb[:, :4], 3)

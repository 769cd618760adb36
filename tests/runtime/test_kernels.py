"""Packed-weight kernels: every C path equals the NumPy reference bit for bit; the reference is
within the int8 quantization error bound of the float product; dispatch and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subbit.export.bitpack import PackedTensor, int8_codebook, unpack_rows
from subbit.runtime import kernels

torch.set_num_threads(1)

C_PATHS = [p for p in kernels.available_paths() if p != "ref"]
SHAPES = [(1, 4, 32), (3, 7, 33), (2, 13, 100), (1, 9, 8), (4, 5, 64), (1, 17, 200), (2, 6, 88), (2, 5, 1064), (6, 9, 300)]


def make_weight(rng: np.random.Generator, bits: int, n: int, k: int, granularity: str) -> PackedTensor:
    g = n if granularity == "channel" else 1
    idx = rng.integers(0, 1 << bits, (n, k))
    cb = np.sort(rng.normal(size=(g, 1 << bits)), axis=1).astype(np.float32)
    return PackedTensor.from_indices(idx, cb, bits, granularity=granularity)


def test_paths_listed() -> None:
    paths = kernels.available_paths()
    assert paths[0] == "ref" and set(paths) <= set(kernels.PATHS)
    assert kernels.default_path() in paths


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_c_paths_equal_reference(bits: int, granularity: str) -> None:
    if not C_PATHS:
        pytest.skip("compiled kernels not available")
    rng = np.random.default_rng(bits)
    for m, n, k in SHAPES:
        w = make_weight(rng, bits, n, k, granularity)
        x = (rng.normal(size=(m, k)) * rng.uniform(0.1, 10)).astype(np.float32)
        bias = rng.normal(size=n).astype(np.float32)
        ref = kernels.reference_packed_linear(x, w, bias)
        for path in C_PATHS:
            y = kernels.packed_linear(x, w, bias, path=path)
            assert y.shape == (m, n) and y.dtype == np.float32
            np.testing.assert_array_equal(y, ref, err_msg=f"{path} bits={bits} {m}x{n}x{k}")


@pytest.mark.parametrize("bits", [3, 7, 8])
def test_int8_expanded_and_lut_paths_agree(bits: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """7-8 bits run through weights expanded to int8 on c/avx2; force both routes on every path."""
    if not C_PATHS:
        pytest.skip("compiled kernels not available")
    rng = np.random.default_rng(40 + bits)
    lib = kernels._load()
    for granularity in ("tensor", "channel"):
        w = make_weight(rng, bits, 9, 300, granularity)
        x = rng.normal(size=(2, 300)).astype(np.float32)
        bias = rng.normal(size=9).astype(np.float32)
        ref = kernels.reference_packed_linear(x, w, bias)
        p = kernels.prepare(w)
        for path in C_PATHS:
            y = np.empty_like(ref)
            assert kernels._int8_linear(lib, path, x, p, bias.ctypes.data, y) == 0
            np.testing.assert_array_equal(y, ref, err_msg=f"int8 {path}")
            for expand, route in ((9, "lut"), (1, "exp")):  # table lookups everywhere / int8 where it applies
                monkeypatch.setattr(kernels, "EXPAND_BITS", expand)
                fresh = PackedTensor.from_indices(w.indices(), w.codebook, bits, granularity=granularity)
                assert kernels.prepare(fresh).identity == (expand == 1 and kernels.default_path() != "avx512")
                np.testing.assert_array_equal(kernels.packed_linear(x, fresh, bias, path=path), ref, err_msg=f"{route} {path}")
                monkeypatch.undo()


@pytest.mark.parametrize("path", C_PATHS or ["ref"])
def test_many_blocks_and_rows(path: str) -> None:
    """Odd row counts (4-row groups + tail) and odd block counts (2-block zmm loop + tail)."""
    rng = np.random.default_rng(7)
    for bits in (1, 3, 4, 6, 8):
        w = make_weight(rng, bits, 11, 5 * 32 + 24, "tensor")
        x = rng.normal(size=(2, 5 * 32 + 24)).astype(np.float32)
        np.testing.assert_array_equal(kernels.packed_linear(x, w, path=path), kernels.reference_packed_linear(x, w))


@pytest.mark.parametrize("path", C_PATHS or ["ref"])
def test_one_bit_long_rows_at_the_int16_limit(path: str) -> None:
    """The AVX2 1-bit loop sums activations in int16 over runs of 128 blocks: +-127 against
    indices all 1 puts 128 * 254 = 32512 in every lane. Rows span three runs, leftover blocks and
    a short tail; 67 inputs span two runs of 64 activation sums; both codebook kinds."""
    rng = np.random.default_rng(11)
    n, m, k = 6, 67, 3 * 4096 + 3 * 32 + 16
    for granularity in ("tensor", "channel"):
        g = n if granularity == "channel" else 1
        cb = np.tile(np.array([[-1.0, 1.0]], np.float32), (g, 1))
        for idx, x in (
            (np.ones((n, k), np.int64), np.ones((m, k), np.float32)),
            (np.ones((n, k), np.int64), -np.ones((m, k), np.float32)),
            (rng.integers(0, 2, (n, k)), rng.choice([-1.0, 1.0], (m, k)).astype(np.float32)),
        ):
            w = PackedTensor.from_indices(idx, cb, 1, granularity=granularity)
            ref = kernels.reference_packed_linear(x, w)
            np.testing.assert_array_equal(kernels.packed_linear(x, w, path=path), ref, err_msg=f"{path} {granularity}")
    exact = x.astype(np.float64) @ w.dequantize().reshape(n, k).astype(np.float64).T
    np.testing.assert_allclose(ref, exact, rtol=1e-5)  # +-1 values are exact in int8: only float rounding


@pytest.mark.parametrize("bits", [1, 2, 4, 5, 8])
def test_reference_within_quantization_bound(bits: int) -> None:
    """|y - x @ W^T| <= the worst case of rounding x to sx*xq and c to s*lut (+ float slack).

    x = sx*xq + ex, |ex| <= sx/2; w = s*w8 + ew, |ew| <= s/2, so
    |x.w - y| <= (s/2) sum|sx*xq| + (sx/2) sum|s*w8| + K*sx*s/4.
    """
    rng = np.random.default_rng(100 + bits)
    n, k = 12, 96
    w = make_weight(rng, bits, n, k, "channel")
    x = rng.normal(size=(3, k)).astype(np.float32)
    y = kernels.reference_packed_linear(x, w)
    exact = x.astype(np.float64) @ w.dequantize().reshape(n, k).astype(np.float64).T
    xq, sx = kernels.quantize_activations(x)
    lut, s = int8_codebook(w)
    w8 = np.take_along_axis(lut.astype(np.float64), w.indices().reshape(n, k), axis=1)
    bound = (
        (s[None, :] / 2) * np.abs(sx[:, None] * xq.astype(np.float64)).sum(1, keepdims=True)
        + (sx[:, None] / 2) * (s[:, None] * np.abs(w8)).sum(1)[None, :]
        + k * sx[:, None] * s[None, :] / 4
    )
    err = np.abs(y - exact)
    assert np.all(err <= bound * (1 + 1e-5) + 1e-5)
    # and the bound is not vacuous: the typical error is a small fraction of the output scale
    assert np.median(err) < 0.05 * np.median(np.abs(exact)) + 1e-3


def test_activation_quantization_is_symmetric_int8() -> None:
    x = np.array([[0.0, 1.0, -2.0, 0.5], [0, 0, 0, 0]], np.float32)
    xq, sx = kernels.quantize_activations(x)
    np.testing.assert_array_equal(xq[0], [0, 64, -127, 32])  # 0.5*63.5=31.75 -> 32; 63.5 -> 64 (even)
    assert sx[0] == np.float32(2.0) / np.float32(127) and sx[1] == 0
    assert not xq[1].any()


def test_zero_input_gives_bias() -> None:
    rng = np.random.default_rng(3)
    w = make_weight(rng, 4, 5, 40, "tensor")
    bias = rng.normal(size=5).astype(np.float32)
    for path in kernels.available_paths():
        np.testing.assert_array_equal(kernels.packed_linear(np.zeros((1, 40), np.float32), w, bias, path=path)[0], bias)


def test_rowsums_match_decoded_weights() -> None:
    """Row sums are over the padded row (padding reads index 0), from the file's own indices."""
    rng = np.random.default_rng(5)
    for bits in (2, 5, 7, 8):
        w = make_weight(rng, bits, 6, 45, "channel")
        prep = kernels.prepare(w)
        lut8, _ = int8_codebook(w)
        idx = unpack_rows(np.asarray(w.packed).reshape(6, -1), bits, 48).astype(np.int64)
        expect = np.take_along_axis(lut8.astype(np.int64), idx, axis=1).sum(1)
        np.testing.assert_array_equal(prep.rowsum, expect)


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_8bit_weights_stored_as_int8_hold_one_table_and_give_the_same_products(granularity: str) -> None:
    """Where the default path has no byte permutes, prepare() keeps 7-8 bit weights as int8
    values only: no per-row tables, no index copy, and every path's product is unchanged
    (compared with the same weight prepared the table way: integer math, so exactly equal)."""
    if kernels.default_path() == "avx512":
        pytest.skip("the AVX-512 path reads 8-bit indices through its tables")
    rng = np.random.default_rng(11)
    for bits in (7, 8):
        w = make_weight(rng, bits, 300, 200, granularity)
        table_way = kernels.PreparedWeight(bits, 300, 200, w.groups, np.asarray(w.packed).reshape(300, -1),
                                           *_tables(w, bits))
        p = kernels.prepare(w)
        assert p.identity and p.lut.shape == (1, 256)
        assert p.nbytes == 300 * 200 + 256 + 4 * w.groups + 4 * 300  # int8 weights, one table, scales, row sums
        np.testing.assert_array_equal(p.rowsum, table_way.rowsum)
        np.testing.assert_array_equal(kernels.dequantized_weight(p), kernels.dequantized_weight(table_way))
        x = rng.normal(size=(3, 200)).astype(np.float32)
        bias = rng.normal(size=300).astype(np.float32)
        want = kernels.reference_packed_linear(x, table_way, bias)
        for path in kernels.available_paths():
            np.testing.assert_array_equal(kernels.packed_linear(x, p, bias, path=path), want, err_msg=path)


def _tables(w: PackedTensor, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lut8, scales = int8_codebook(w)
    lut = np.zeros((w.groups, kernels.lut_stride(bits)), dtype=np.int8)
    lut[:, : lut8.shape[1]] = lut8
    rows = np.asarray(w.packed).reshape(w.shape[0], -1)
    return lut, scales, kernels._rowsums(rows, w.shape[0], w.shape[1], bits, lut, w.groups)


def test_prepare_is_cached_and_deployed_weight() -> None:
    rng = np.random.default_rng(9)
    w = make_weight(rng, 3, 4, 32, "tensor")
    assert kernels.prepare(w) is kernels.prepare(w)
    x = rng.normal(size=(1, 32)).astype(np.float32)
    # the kernels compute with the int8-rounded weight: float product with it is close to y
    deployed = kernels.dequantized_weight(w)
    np.testing.assert_allclose(kernels.packed_linear(x, w), x @ deployed.T, rtol=0.05, atol=0.05)


def test_env_var_forces_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    best = kernels.available_paths()[-1]
    monkeypatch.delenv("SUBBIT_KERNEL", raising=False)
    assert kernels.default_path() == best  # cached now: a later change of the variable must win
    monkeypatch.setenv("SUBBIT_KERNEL", "ref")
    assert kernels.default_path() == "ref"
    monkeypatch.setenv("SUBBIT_KERNEL", "bogus")
    with pytest.raises(ValueError, match="SUBBIT_KERNEL"):
        kernels.default_path()
    monkeypatch.delenv("SUBBIT_KERNEL")
    assert kernels.default_path() == best


@pytest.mark.parametrize("path", C_PATHS or ["ref"])
def test_streaming_shapes_every_depth(path: str) -> None:
    """Shapes of the streaming LSTM: M = 1..7 input rows (tiles of 4 and a rest of 1-3), K = 240
    (7 full blocks + a 16-index tail), K = 536 (super-blocks + last block + 24-index tail)."""
    rng = np.random.default_rng(21)
    for bits in range(1, 9):
        for k in (240, 536):
            w = make_weight(rng, bits, 13, k, "channel" if bits % 2 else "tensor")
            bias = rng.normal(size=13).astype(np.float32)
            for m in range(1, 8):
                x = (rng.normal(size=(m, k)) * 3).astype(np.float32)
                ref = kernels.reference_packed_linear(x, w, bias)
                np.testing.assert_array_equal(kernels.packed_linear(x, w, bias, path=path), ref,
                                              err_msg=f"{path} bits={bits} m={m} k={k}")


def test_bias_objects_are_not_confused() -> None:
    """The bias address is remembered per weight: a new bias array (or one needing conversion)
    must be used, not the remembered one."""
    rng = np.random.default_rng(5)
    w = make_weight(rng, 4, 6, 40, "tensor")
    x = rng.normal(size=(2, 40)).astype(np.float32)
    b1, b2 = rng.normal(size=6).astype(np.float32), rng.normal(size=6).astype(np.float32)
    for bias in (b1, b2, b1, b2.astype(np.float64), b1[::-1].copy()[::-1], None):
        want = kernels.reference_packed_linear(x, w, bias)
        np.testing.assert_array_equal(kernels.packed_linear(x, w, bias), want)


def test_bad_inputs() -> None:
    rng = np.random.default_rng(1)
    w = make_weight(rng, 4, 3, 16, "tensor")
    with pytest.raises(ValueError, match=r"\[M, 16\]"):
        kernels.packed_linear(np.zeros((1, 15), np.float32), w)
    with pytest.raises(ValueError, match="bias"):
        kernels.packed_linear(np.zeros((1, 16), np.float32), w, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="path"):
        kernels.packed_linear(np.zeros((1, 16), np.float32), w, path="gpu")
    odd = PackedTensor.from_indices(np.zeros(12, np.int64), np.zeros((12, 2), np.float32), 1, granularity="channel")
    with pytest.raises(ValueError, match="groups"):
        kernels.prepare(odd)


def test_read_sum() -> None:
    buf = np.random.default_rng(0).integers(0, 256, 1003, dtype=np.uint8)
    words = sum(int(v) for v in buf[:1000].view("<u8"))
    assert kernels.read_sum(buf) == (words + int(buf[1000:].sum())) % (1 << 64)


def test_missing_library_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(11)
    w_c = make_weight(rng, 5, 6, 45, "tensor")
    w_np = PackedTensor.from_indices(w_c.indices(), w_c.codebook, 5)
    expect_rowsum = kernels.prepare(w_c).rowsum
    monkeypatch.delenv("SUBBIT_KERNEL", raising=False)  # a forced C path would (rightly) refuse
    monkeypatch.setattr(kernels, "_lib", None)
    monkeypatch.setattr(kernels, "_lib_tried", False)
    monkeypatch.setattr(kernels, "_library_file", lambda: None)
    x = rng.normal(size=(2, 45)).astype(np.float32)
    with caplog.at_level("WARNING", logger="subbit.runtime.kernels"):
        assert kernels.available_paths() == ["ref"]
        y = kernels.packed_linear(x, w_np)
        kernels.packed_linear(x, w_np)
    assert sum("NumPy reference" in r.getMessage() for r in caplog.records) == 1
    np.testing.assert_array_equal(kernels.prepare(w_np).rowsum, expect_rowsum)  # NumPy row sums
    np.testing.assert_array_equal(y, kernels.reference_packed_linear(x, w_c))
    with pytest.raises(ValueError, match="not available"):
        kernels.packed_linear(x, w_np, path="c")


def test_large_weights_move_to_the_huge_page_arena(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare() moves big packed weights into 2 MiB-aligned arena memory: same bytes, the tensor
    points at the copy (no second resident copy), results unchanged; small weights stay put."""
    import gc

    monkeypatch.setattr(kernels, "HUGEPAGE_MIN_BYTES", 1024)
    monkeypatch.setattr(kernels, "_arena", kernels._HugePageArena())
    rng = np.random.default_rng(3)
    big, small = make_weight(rng, 4, 64, 40, "tensor"), make_weight(rng, 4, 3, 40, "tensor")
    before, small_buf = big.packed.copy(), small.packed
    x = rng.normal(size=(2, 40)).astype(np.float32)
    want = kernels.reference_packed_linear(x, PackedTensor.from_indices(big.indices(), big.codebook, 4))
    p = kernels.prepare(big)
    assert p.packed.ctypes.data % 64 == 0 and np.shares_memory(p.packed, big.packed)
    np.testing.assert_array_equal(big.packed, before)
    np.testing.assert_array_equal(kernels.packed_linear(x, big), want)
    assert small.packed is small_buf and np.shares_memory(kernels.prepare(small).packed, small_buf)
    # a second weight is placed after the first, in the same chunk
    other = make_weight(rng, 2, 64, 80, "tensor")  # 1280 bytes: above the limit too
    q = kernels.prepare(other)
    assert q.packed.ctypes.data >= p.packed.ctypes.data + p.packed.nbytes
    # a view into a larger buffer (a row slice) stays put: moving it would keep both copies
    parent = make_weight(rng, 4, 64, 40, "tensor")
    rows = np.asarray(parent.packed).reshape(64, -1)[:32]
    part = PackedTensor(bits=4, shape=(32, 40), packed=rows, codebook=parent.codebook, groups=1)
    assert np.shares_memory(kernels.prepare(part).packed, rows) and part.packed is rows
    chunk = kernels._arena._chunk
    assert chunk is not None and chunk() is not None
    del p, q, big, other
    gc.collect()
    assert chunk() is None  # the chunk is freed with the last weight placed in it

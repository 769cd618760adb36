"""NumPy runtime layers against the torch layers of subbit.asr.models (float and packed weights)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from subbit.asr.features import LogMel
from subbit.asr.models.conformer import CausalConvModule as TorchConv
from subbit.asr.models.conformer import ConformerBlock as TorchBlock
from subbit.export.bitpack import PackedTensor
from subbit.runtime import kernels
from subbit.runtime.frontend import StreamingLogMel
from subbit.runtime.layers import (
    CausalConvModule,
    ConformerBlock,
    Embedding,
    FloatLinear,
    LayerNorm,
    PackedLinear,
    PackedLSTM,
    WeightStore,
)

torch.set_num_threads(1)


def store_of(module: nn.Module, prefix: str = "m") -> WeightStore:
    return WeightStore({}, {f"{prefix}.{k}": v.detach().numpy() for k, v in module.state_dict().items()})


def random_packed(n: int, k: int, bits: int, seed: int = 0, groups: int = 1) -> PackedTensor:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, 1 << bits, size=(n, k))
    cb = np.sort(rng.standard_normal((groups, 1 << bits)), axis=1).astype(np.float32) * 0.2
    return PackedTensor.from_indices(idx, cb, bits, granularity="tensor" if groups == 1 else "channel")


def test_float_linear_matches_torch() -> None:
    lin = nn.Linear(24, 10)
    x = torch.randn(5, 24)
    y = FloatLinear(lin.weight.detach().numpy(), lin.bias.detach().numpy())(x.numpy())
    np.testing.assert_allclose(y, lin(x).detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bits", [1, 3, 4, 8])
@pytest.mark.parametrize("groups", [1, 16])
def test_packed_linear_close_to_float_matmul(bits: int, groups: int) -> None:
    """Tolerance: the only difference from ``x @ W_deployed^T`` is int8 rounding of the
    activations (per row, step max|x|/127), so the error is bounded by
    0.5 * max|x|/127 * sum_k |W[n, k]| per output."""
    pt = random_packed(16, 70, bits, seed=bits, groups=groups)
    w = kernels.dequantized_weight(pt)
    bias = np.linspace(-1, 1, 16).astype(np.float32)
    x = np.random.default_rng(1).standard_normal((3, 70)).astype(np.float32)
    y = PackedLinear(pt, bias)(x)
    ref = x @ w.T + bias
    bound = 0.5 * np.abs(x).max(1, keepdims=True) / 127 * np.abs(w).sum(1)[None] + 1e-5
    assert np.all(np.abs(y - ref) <= bound)
    if groups == 1:  # stays packed (per-row 8-bit codebooks of a 70-wide matrix are not smaller)
        assert PackedLinear(pt).nbytes < w.nbytes


def test_lstm_matches_torch_across_chunks() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(12, 9, num_layers=2, batch_first=True)
    rt = PackedLSTM.from_store(store_of(lstm), "m")
    x = torch.randn(1, 11, 12)
    ref, _ = lstm(x)
    state = rt.init_state()
    y1, state = rt(x[0, :4].numpy(), state)
    y2, state = rt(x[0, 4:].numpy(), state)
    np.testing.assert_allclose(np.concatenate([y1, y2]), ref[0].detach().numpy(), rtol=1e-4, atol=1e-5)


def test_lstm_gate_order_matters() -> None:
    """A model whose forget gate is saturated open/closed behaves differently: gate order is checked."""
    lstm = nn.LSTM(4, 3, batch_first=True)
    with torch.no_grad():
        lstm.bias_ih_l0.zero_()
        lstm.bias_ih_l0[3:6] = -20.0  # forget gate closed: state resets each frame
    x = torch.randn(1, 6, 4)
    ref, _ = lstm(x)
    rt = PackedLSTM.from_store(store_of(lstm), "m")
    y, _ = rt(x[0].numpy(), rt.init_state())
    np.testing.assert_allclose(y, ref[0].detach().numpy(), rtol=1e-4, atol=1e-5)


def test_layernorm_matches_torch() -> None:
    ln = nn.LayerNorm(20)
    with torch.no_grad():
        ln.weight.uniform_(0.5, 1.5)
        ln.bias.uniform_(-0.2, 0.2)
    x = torch.randn(7, 20) * 3 + 1
    y = LayerNorm.from_store(store_of(ln), "m")(x.numpy())
    np.testing.assert_allclose(y, ln(x).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_causal_conv_module_with_cache() -> None:
    torch.manual_seed(1)
    conv = TorchConv(8, 5, 0.0).eval()
    rt = CausalConvModule(store_of(conv), "m", 5)
    x = torch.randn(1, 9, 8)
    with torch.no_grad():
        ref, _ = conv(x, torch.zeros(1, 8, 4))
    cache = np.zeros((4, 8), np.float32)
    y1, cache = rt(x[0, :3].numpy(), cache)
    y2, cache = rt(x[0, 3:].numpy(), cache)
    np.testing.assert_allclose(np.concatenate([y1, y2]), ref[0].numpy(), rtol=1e-4, atol=1e-5)


def test_conformer_block_streams_like_torch() -> None:
    """Two chunks with a left-context cache equal the torch block on the whole sequence."""
    torch.manual_seed(2)
    d, heads, kernel, chunk, left = 16, 2, 3, 4, 1
    blk = TorchBlock(d, heads, 2, kernel, chunk, left, True, 0.0).eval()
    rt = ConformerBlock(store_of(blk), "m", d, heads, kernel, chunk, left, True)
    x = torch.randn(1, 3 * chunk, d)
    pos = torch.arange(3 * chunk)
    empty = {"k": torch.zeros(1, heads, 0, d // heads), "v": torch.zeros(1, heads, 0, d // heads),
             "conv": torch.zeros(1, d, kernel - 1)}
    with torch.no_grad():
        ref, *_ = blk(x, empty, pos, pos, None)
    cache = {"k": np.zeros((heads, 0, d // heads), np.float32), "v": np.zeros((heads, 0, d // heads), np.float32),
             "conv": np.zeros((kernel - 1, d), np.float32)}
    outs = []
    for c in range(3):
        y, k, v, conv = rt(x[0, c * chunk : (c + 1) * chunk].numpy(), cache, c * chunk)
        keep = left * chunk
        cache = {"k": k[:, -keep:], "v": v[:, -keep:], "conv": conv}
        outs.append(y)
    np.testing.assert_allclose(np.concatenate(outs), ref[0].numpy(), rtol=1e-4, atol=1e-4)


def test_packed_embedding_row_equals_dequantized() -> None:
    pt = random_packed(11, 40, 3, seed=4)
    emb = Embedding(WeightStore({"e.weight": pt}, {}), "e.weight")
    w = kernels.dequantized_weight(pt)
    for tok in (0, 5, 10):
        np.testing.assert_array_equal(emb(tok), w[tok])
    with pytest.raises(ValueError, match="outside the embedding"):
        emb(11)


def test_store_names_missing_tensor() -> None:
    with pytest.raises(ValueError, match="no tensor 'x.weight'"):
        WeightStore({}, {}).linear("x")


def test_frontend_matches_torch_logmel_and_streams() -> None:
    wave = (np.random.default_rng(3).standard_normal(5000) * 0.1).astype(np.float32)
    ref, _ = LogMel()(torch.from_numpy(wave)[None])
    fe = StreamingLogMel()
    np.testing.assert_allclose(fe.frames(wave), ref[0].numpy(), rtol=1e-4, atol=2e-4)
    # exact, on every CPU: the FFT works row by row and the mel sum is a fixed sequence of
    # elementwise float32 ops (StreamingLogMel._mel), so a frame's bits cannot depend on how
    # many frames it was computed with; chunk sizes include single frames (the BLAS gemv case)
    for chunk in (160, 333, 401, 5000):
        fe.reset()
        pieces = [fe.accept(wave[i : i + chunk]) for i in range(0, wave.size, chunk)]
        np.testing.assert_array_equal(np.concatenate(pieces), fe.frames(wave))


@pytest.mark.parametrize("groups", [1, 600])
def test_row_split_threads_give_identical_outputs(groups: int) -> None:
    pt = random_packed(600, 90, 4, seed=5, groups=groups)
    bias = np.random.default_rng(6).standard_normal(600).astype(np.float32)
    x = np.random.default_rng(7).standard_normal((2, 90)).astype(np.float32)
    one, two = PackedLinear(pt, bias), PackedLinear(pt, bias, threads=2)
    assert len(two.slices) == 2 and not one.slices
    np.testing.assert_array_equal(two(x), one(x))

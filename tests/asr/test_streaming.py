"""Streaming parity: encoder/predictor steps equal full forwards; streaming decoding equals greedy."""

from __future__ import annotations

import pytest
import torch

from subbit.asr.decode import StreamingGreedyDecoder, greedy_search
from subbit.asr.models import Transducer, build_model

torch.set_num_threads(1)
ARCHS = ("rnnt", "conformer")


def _model(arch: str, seed: int = 0, **overrides) -> Transducer:
    torch.manual_seed(seed)
    m = build_model(arch, "tiny", vocab_size=8, **overrides).eval()
    with torch.no_grad():  # non-trivial weights everywhere (incl. the relative-position bias)
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        m.joiner.out.bias[m.blank] -= 1.0
    return m


def _stream(m: Transducer, feats: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    state = m.encoder.init_state(feats.size(0))
    outs, t0, i = [], 0, 0
    while t0 < feats.size(1):
        n = sizes[i % len(sizes)]
        y, state = m.encoder.step(feats[:, t0 : t0 + n], state)
        outs.append(y)
        t0, i = t0 + n, i + 1
    y, state = m.encoder.flush(state)
    outs.append(y)
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize(
    "arch,overrides",
    [("rnnt", {}), ("rnnt", {"stack2": 1}), ("conformer", {}), ("conformer", {"rel_pos": False}),
     ("conformer", {"left_chunks": 0, "conv_kernel": 1}), ("conformer", {"chunk_size": 1, "left_chunks": 3})],
)
@pytest.mark.parametrize("sizes", [[16], [1], [5, 11, 3], [64]])
def test_encoder_step_equals_forward(arch: str, overrides: dict, sizes: list[int]) -> None:
    m = _model(arch, **overrides)
    feats = torch.randn(2, 61, 80)  # not a multiple of the stack or the chunk
    with torch.no_grad():
        full, lens = m.encoder(feats, torch.tensor([61, 61]))
        streamed = _stream(m, feats, sizes)
    assert streamed.shape == full.shape
    assert int(lens[0]) == full.size(1)
    torch.testing.assert_close(streamed, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_step_returns_frames_as_soon_as_they_are_complete(arch: str) -> None:
    m = _model(arch)
    state = m.encoder.init_state(1)
    cf = m.encoder.chunk_frames
    assert cf % m.encoder.subsampling == 0
    y, state = m.encoder.step(torch.randn(1, cf, 80), state)
    assert y.size(1) == cf // m.encoder.subsampling
    y, state = m.encoder.step(torch.randn(1, cf - 1, 80), state)
    assert y.size(1) < cf // m.encoder.subsampling


def test_predictor_step_equals_forward() -> None:
    m = _model("rnnt", seed=1, pred_layers=2)
    targets = torch.randint(1, 8, (3, 6))
    with torch.no_grad():
        full = m.predictor(targets)
        state = m.predictor.init_state(3)
        out, state = m.predictor.step(torch.zeros(3, dtype=torch.long), state)
        steps = [out]
        for u in range(targets.size(1)):
            out, state = m.predictor.step(targets[:, u], state)
            steps.append(out)
    assert full.shape == (3, 7, m.predictor.output_dim)
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)


def test_joiner_broadcasts() -> None:
    m = _model("rnnt")
    enc, pred = torch.randn(2, 5, m.encoder.output_dim), torch.randn(2, 3, m.predictor.output_dim)
    with torch.no_grad():
        grid = m.joiner(enc[:, :, None], pred[:, None])
        one = m.joiner(enc[1, 4], pred[1, 2])
    assert grid.shape == (2, 5, 3, 8)
    torch.testing.assert_close(grid[1, 4, 2], one)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunk", [7, 16, 40])
def test_streaming_decoder_equals_full_greedy(arch: str, chunk: int) -> None:
    m = _model(arch, seed=2)
    for seed in range(2):
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(1, 73, 80, generator=g)
        with torch.no_grad():
            enc, enc_lens = m.encoder(feats, torch.tensor([73]))
        want = greedy_search(m, enc, enc_lens)[0]
        assert len(want) > 0  # the test means something only if tokens are emitted
        dec = StreamingGreedyDecoder(m)
        partials = []
        for t0 in range(0, 73, chunk):
            partials.append(dec.accept_features(feats[:, t0 : t0 + chunk]))
        final = dec.finalize()
        assert final == want
        for a, b in zip(partials, partials[1:] + [final]):  # partial results only grow
            assert b[: len(a)] == a
        with pytest.raises(ValueError, match="finalize"):
            dec.accept_features(feats[:, :chunk])
        dec.reset()
        assert dec.finalize() == []

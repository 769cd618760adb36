"""Model construction, config round trip, shapes, padding independence, training forward."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from subbit.asr.models import Transducer, build_from_config, build_model, count_params, preset_config

torch.set_num_threads(1)
ARCHS = ("rnnt", "conformer")
ALLOWED = (nn.Linear, nn.LSTM, nn.Conv1d, nn.Conv2d, nn.Embedding, nn.LayerNorm)


def _batch(model: Transducer, b: int = 3, t: int = 41, u: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, t, 80, generator=g)
    feat_lens = torch.tensor([t] + [t - 7 * (i + 1) for i in range(b - 1)])
    v = model.vocab_size
    targets = torch.randint(1, v, (b, u), generator=g)
    target_lens = torch.tensor([u] + [max(u - 2 * (i + 1), 0) for i in range(b - 1)])
    targets[torch.arange(u)[None, :] >= target_lens[:, None]] = 0
    return feats, feat_lens, targets, target_lens


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_size_and_layer_types(arch: str) -> None:
    m = build_model(arch, "tiny", vocab_size=16)
    assert 30_000 <= count_params(m) <= 100_000
    for mod in m.modules():
        own = list(mod.parameters(recurse=False))
        if own:  # quantization can only reach weights held by these module types
            assert isinstance(mod, ALLOWED), type(mod)


@pytest.mark.parametrize("arch", ARCHS)
def test_small_preset_size(arch: str) -> None:
    n = count_params(build_model(arch, "small", vocab_size=128))
    assert 1_000_000 <= n <= 3_000_000


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trip_rebuilds_same_model(arch: str) -> None:
    torch.manual_seed(0)
    m = build_model(arch, "tiny", vocab_size=12, n_mels=80, joiner_dim=24).eval()
    cfg = json.loads(json.dumps(m.config))  # JSON-able
    assert cfg["arch"] == arch and cfg["vocab_size"] == 12 and cfg["joiner_dim"] == 24
    m2 = build_from_config(cfg).eval()
    m2.load_state_dict(m.state_dict())
    feats, lens, y, yl = _batch(m, seed=1)
    with torch.no_grad():
        assert torch.equal(m(feats, lens, y, yl), m2(feats, lens, y, yl))
    cfg2 = m.config
    cfg2["joiner_dim"] = 99  # config is a copy
    assert m.config["joiner_dim"] == 24


def test_bad_overrides_and_configs_are_refused() -> None:
    with pytest.raises(ValueError, match="enc_hiden"):
        build_model("rnnt", "tiny", vocab_size=8, enc_hiden=3)
    with pytest.raises(ValueError, match="d_model"):
        build_model("rnnt", "tiny", vocab_size=8, d_model=3)  # a conformer key on an RNN-T
    with pytest.raises(ValueError, match="arch"):
        build_model("lstm", "tiny", vocab_size=8)
    with pytest.raises(ValueError, match="preset"):
        build_model("rnnt", "huge", vocab_size=8)
    cfg = preset_config("conformer", "tiny", vocab_size=8)
    del cfg["n_heads"]
    with pytest.raises(ValueError, match="n_heads"):
        build_from_config(cfg)
    with pytest.raises(ValueError, match="vocab_size"):
        build_from_config({**preset_config("rnnt", "tiny", vocab_size=8), "vocab_size": 0})
    with pytest.raises(ValueError, match="stack2_after"):
        build_model("rnnt", "tiny", vocab_size=8, stack2_after=5)


@pytest.mark.parametrize("arch", ARCHS)
def test_encoder_shapes_and_padding_independence(arch: str) -> None:
    torch.manual_seed(0)
    m = build_model(arch, "tiny", vocab_size=10).eval()
    feats, lens, _, _ = _batch(m, b=3, t=45)
    enc, enc_lens = m.encoder(feats, lens)
    s = m.encoder.subsampling
    assert enc.shape == (3, 45 // s, m.encoder.output_dim)
    assert enc_lens.tolist() == [n // s for n in lens.tolist()]
    for b in range(3):  # each utterance alone, without padding, gives the same valid frames
        n = int(lens[b])
        alone, alone_len = m.encoder(feats[b : b + 1, :n], lens[b : b + 1])
        assert int(alone_len) == int(enc_lens[b])
        torch.testing.assert_close(enc[b, : int(enc_lens[b])], alone[0], atol=1e-5, rtol=1e-5)
    # garbage in the padding changes nothing in the valid part
    noisy = feats.clone()
    noisy[2, int(lens[2]) :] = 100.0
    enc2, _ = m.encoder(noisy, lens)
    torch.testing.assert_close(enc2[2, : int(enc_lens[2])], enc[2, : int(enc_lens[2])], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_training_forward_gives_gradients_everywhere(arch: str) -> None:
    torch.manual_seed(0)
    m = build_model(arch, "tiny", vocab_size=10)
    feats, lens, y, yl = _batch(m)
    loss = m(feats, lens, y, yl)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_loss_normalisation_modes() -> None:
    torch.manual_seed(0)
    m_tok = build_model("rnnt", "tiny", vocab_size=10, loss_norm="token").eval()
    m_utt = build_model("rnnt", "tiny", vocab_size=10).eval()
    assert m_utt.config["loss_norm"] == "utterance"  # the default
    m_utt.load_state_dict(m_tok.state_dict())
    feats, lens, y, yl = _batch(m_tok)
    with torch.no_grad():
        tok, utt = m_tok(feats, lens, y, yl), m_utt(feats, lens, y, yl)
    b = feats.size(0)
    torch.testing.assert_close(tok * (yl.sum() + b) / b, utt, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="loss_norm"):
        build_model("rnnt", "tiny", vocab_size=10, loss_norm="frames")


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_loss_equals_full_lattice(arch: str) -> None:
    torch.manual_seed(0)
    full = build_model(arch, "tiny", vocab_size=10)
    chunked = build_model(arch, "tiny", vocab_size=10, loss_chunk_frames=3)
    chunked.load_state_dict(full.state_dict())
    full.eval(), chunked.eval()
    feats, lens, y, yl = _batch(full)
    a, b = full(feats, lens, y, yl), chunked(feats, lens, y, yl)
    torch.testing.assert_close(a, b)
    ga = torch.autograd.grad(a, list(full.parameters()))
    gb = torch.autograd.grad(b, list(chunked.parameters()))
    for x, z in zip(ga, gb):
        torch.testing.assert_close(x, z, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_too_short_input_is_refused(arch: str) -> None:
    m = build_model(arch, "tiny", vocab_size=10)
    feats = torch.randn(1, 3, 80)  # subsampling 4 -> zero encoder frames
    enc, enc_lens = m.encoder(feats, torch.tensor([3]))
    assert enc.shape == (1, 0, m.encoder.output_dim) and enc_lens.tolist() == [0]
    with pytest.raises(ValueError, match="feat_lens"):
        m(feats, torch.tensor([3]), torch.tensor([[1, 2]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="feats"):
        m.encoder(torch.randn(1, 8, 40), torch.tensor([8]))
    with pytest.raises(ValueError, match="feat_lens"):
        m(torch.randn(1, 8, 80), torch.tensor([9]), torch.tensor([[1, 2]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="target_lens"):
        m(torch.randn(1, 8, 80), torch.tensor([8]), torch.tensor([[1, 2]]), torch.tensor([3]))


@pytest.mark.parametrize("arch", ARCHS)
def test_empty_targets_train(arch: str) -> None:
    m = build_model(arch, "tiny", vocab_size=10)
    loss = m(torch.randn(2, 20, 80), torch.tensor([20, 9]), torch.zeros(2, 0, dtype=torch.long),
             torch.zeros(2, dtype=torch.long))
    assert torch.isfinite(loss) and loss > 0
    loss.backward()


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_steps_fit_one_batch(arch: str) -> None:
    """End to end (model + custom loss backward): Adam on one fixed batch lowers the loss."""
    torch.manual_seed(0)
    m = build_model(arch, "tiny", vocab_size=6)
    feats, lens, y, yl = _batch(m, b=2, t=32, u=3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    first = None
    for _ in range(25):
        loss = m(feats, lens, y, yl)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first

"""Tied weights and module coverage on users' own models (issue 12 items 1 and 3)."""

import warnings

import pytest
import torch
from torch import nn

from subbit.quant import GQScheduler, QuantConfig, convert, prepare, prepare_info, quantized_tensors, report

torch.set_num_threads(1)


class TiedLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(16, 8)
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 16, bias=False)
        self.head.weight = self.emb.weight  # tied

    def forward(self, x):
        return self.head(torch.tanh(self.mix(self.emb(x))))


def test_tied_weights_share_one_quantizer_and_stay_tied_after_training_and_convert():
    torch.manual_seed(0)
    model = prepare(TiedLM(), QuantConfig.from_dict({"default": {"bits": 2}}))
    info = prepare_info(model)
    assert info.tied == {"emb.weight": ["head.weight"]}
    assert model.emb.subbit_quant["weight"] is model.head.subbit_quant["weight"]
    qts = list(quantized_tensors(model))
    assert [qt.name for qt in qts] == ["emb.weight", "mix.weight"] and qts[0].aliases == ("head.weight",)
    latent = qts[0].latent
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    assert sum(p is latent for g in opt.param_groups for p in g["params"]) == 1
    sched = GQScheduler(model, 30)
    x = torch.randint(0, 16, (4, 7))
    for _ in range(30):
        logits = model(x)
        nn.functional.cross_entropy(logits.reshape(-1, 16), x.reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert torch.equal(model.emb.weight, model.head.weight)
    convert(model)
    assert torch.equal(model.emb.weight, model.head.weight)
    both = torch.cat([model.emb.weight.flatten(), model.head.weight.flatten()])
    assert both.unique().numel() <= 4
    rep = report(model)
    assert [r.name for r in rep.rows] == ["emb.weight", "mix.weight"]  # counted once
    assert rep.rows[0].numel == 16 * 8


def test_tied_weights_with_disagreeing_rules_are_refused():
    with pytest.raises(ValueError, match="emb.weight is tied to head.weight.*rules disagree"):
        prepare(TiedLM(), QuantConfig.from_dict({"default": {"bits": 2}, "rules": {"head.weight": {"bits": 4}}}))
    # all owners float: fine
    m = prepare(TiedLM(), QuantConfig.from_dict({"rules": {"head.weight": None, "emb.weight": None}}))
    assert [qt.name for qt in quantized_tensors(m)] == ["mix.weight"]


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.extra = nn.Parameter(torch.randn(4, 4))

    def forward(self, x):
        return self.proj(x) @ self.extra


def test_tied_to_an_unquantizable_owner_is_refused():
    m = Custom()
    m.extra = m.proj.weight
    with pytest.raises(ValueError, match="extra is tied to proj.weight, but extra cannot be quantized"):
        prepare(m, QuantConfig())


def test_unsupported_weights_warn_are_listed_and_can_be_refused_or_opted_out():
    with pytest.warns(UserWarning, match="cannot quantize extra"):
        m = prepare(Custom(), QuantConfig())
    assert prepare_info(m).unsupported == ["extra"] and "extra" in prepare_info(m).float_tensors
    with pytest.raises(ValueError, match="cannot quantize extra"):
        prepare(Custom(), QuantConfig(), strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = prepare(Custom(), QuantConfig.from_dict({"rules": {"extra": None}}))
    assert prepare_info(m).unsupported == [] and prepare_info(m).unmatched_rules == []


def _grads_reach_everything(model, *inputs):
    qts = list(quantized_tensors(model))
    out = model(*inputs)
    out = out[0] if isinstance(out, tuple) else out
    out.pow(2).mean().backward()
    for qt in qts:
        assert qt.latent.grad is not None and qt.latent.grad.abs().sum() > 0, qt.name
        assert qt.quantizer.theta.grad is not None and qt.quantizer.theta.grad.abs().sum() > 0, qt.name
    return qts


def test_gru_every_kernel_quantized_with_gradients():
    torch.manual_seed(0)
    gru = prepare(nn.GRU(6, 8, num_layers=2, bidirectional=True, batch_first=True), QuantConfig())
    qts = _grads_reach_everything(gru, torch.randn(3, 5, 6))
    assert sorted(qt.name for qt in qts) == sorted(
        f"weight_{k}_l{i}{s}" for k in ("ih", "hh") for i in range(2) for s in ("", "_reverse"))
    convert(gru)
    for qt in qts:
        assert getattr(gru, qt.name).unique().numel() <= 16


def test_transformer_encoder_layer_quantized_with_gradients_and_fresh_eval_weights():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True)
    prepare(layer, QuantConfig.from_dict({"default": {"bits": 3}}))
    assert prepare_info(layer).float_tensors == [] and prepare_info(layer).unsupported == []
    x = torch.randn(2, 5, 16)
    qts = _grads_reach_everything(layer, x)
    assert sorted(qt.name for qt in qts) == sorted(
        ["self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"])
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.eval()
    with torch.no_grad():
        before = layer(x)
    opt.step()
    with torch.no_grad():  # fused fast path: reads the weights directly, must see the new ones
        fast = layer(x)
    slow = layer(x)  # autograd on: the ordinary path through the submodules
    assert not torch.allclose(before, fast)
    torch.testing.assert_close(fast, slow.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.ConvTranspose1d(4, 6, 3), (2, 4, 9)),
    (lambda: nn.ConvTranspose2d(4, 6, 3), (2, 4, 5, 5)),
    (lambda: nn.Conv3d(4, 6, 3), (2, 4, 5, 5, 5)),
])
def test_transposed_and_3d_convolutions_are_quantized(make, shape):
    torch.manual_seed(0)
    conv = prepare(make(), QuantConfig.from_dict({"default": {"bits": 2}}))
    _grads_reach_everything(conv, torch.randn(*shape))
    convert(conv)
    assert conv.weight.unique().numel() <= 4


def test_sparse_embedding_is_quantized_with_dense_gradients():
    emb = prepare(nn.Embedding(20, 4, sparse=True), QuantConfig.from_dict({"default": {"bits": 2}}))
    assert prepare_info(emb).densified == [""] and emb.sparse is False
    emb(torch.tensor([[1, 2, 3]])).sum().backward()
    latent = emb.subbit_quant["weight"].latent
    assert latent.grad is not None and not latent.grad.is_sparse

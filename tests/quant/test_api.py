import copy
import logging

import pytest
import torch
from torch import nn

from subbit.quant import (
    GQScheduler, QuantConfig, WeightQuantizer, convert, get_config, is_prepared, prepare, prepare_info,
    quantized_tensors, register_method, regularization, report,
)
from subbit.testing.dummies import dummy_net

torch.set_num_threads(1)


@register_method("test_rtn")
class RoundToNearest(WeightQuantizer):
    """A minimal third-party method: fixed uniform grid, straight-through; uses only the contract."""

    def __init__(self, weight, bits, granularity="tensor", **options):
        super().__init__(weight, bits, granularity)
        if options:
            raise ValueError(f"test_rtn: unknown option {sorted(options)[0]!r}")
        self.register_buffer("step", self.grouped(weight).abs().amax(1, keepdim=True) / (2 ** (bits - 1)))

    def encode(self, w):
        g = self.grouped(w.detach())
        idx = torch.clamp(torch.round(g / self.step) + 2 ** (self.bits - 1), 0, self.levels - 1).long()
        cb = (torch.arange(self.levels) - 2 ** (self.bits - 1)).float().unsqueeze(0) * self.step
        return idx.reshape(w.shape), cb

    def forward(self, w):
        return w + (self.hard(w) - w).detach()


def toy_net() -> nn.Module:
    """Embedding, a 2-layer bidirectional LSTM, Conv1d, ReLU and a 1-wide head (squeezed)."""
    return dummy_net(("emb", nn.Embedding(12, 6)),
                     ("lstm", nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)),
                     ("conv", nn.Conv1d(16, 8, 3, padding=1)), ("act", nn.ReLU()), ("head_out", nn.Linear(8, 1)),
                     ("squeeze", nn.Flatten(-2)), seed=None)  # fmt: skip


def toy(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return toy_net()


CFG = QuantConfig.from_dict({"default": {"bits": 3}, "rules": {"lstm.weight_hh_l1_reverse": {"bits": 1}, "nothing": {"bits": 2}}})
X = torch.randint(0, 12, (3, 9))


def test_prepare_attaches_every_kernel_and_keeps_latents_trainable(caplog):
    with caplog.at_level(logging.WARNING):
        model = prepare(toy(), CFG)
    names = [qt.name for qt in quantized_tensors(model)]
    lstm = [f"lstm.weight_{k}_l{i}{r}" for i in (0, 1) for r in ("", "_reverse") for k in ("ih", "hh")]
    assert sorted(names) == sorted(["emb.weight", "conv.weight", "head_out.weight"] + lstm)
    assert is_prepared(model) and get_config(model) is CFG
    assert prepare_info(model).unmatched_rules == ["nothing"] and "nothing" in caplog.text
    qt = {q.name: q for q in quantized_tensors(model)}["lstm.weight_hh_l1_reverse"]
    assert qt.quantizer.bits == 1 and qt.param_name == "weight_hh_l1_reverse" and qt.module is model.lstm
    assert any(p is qt.latent for p in model.parameters())
    assert not isinstance(model.lstm.weight_hh_l1_reverse, nn.Parameter)


def test_lstm_gradients_reach_latents_and_centroids_quantized_once_per_forward():
    model = prepare(toy(), CFG)
    calls = []
    for qt in quantized_tensors(model):
        qt.quantizer.register_forward_hook(lambda m, a, o: calls.append(m))
    model(X).square().sum().backward()
    qts = list(quantized_tensors(model))
    assert len(calls) == len(qts)  # once per forward, not once per time step
    for qt in qts:
        assert qt.latent.grad is not None and qt.latent.grad.abs().sum() > 0, qt.name
        assert qt.quantizer.theta.grad.abs().sum() > 0, qt.name


def test_float_rules_and_bad_config():
    cfg = QuantConfig.from_dict({"default": {"bits": 4}, "rules": {"LSTM": None}})
    model = prepare(toy(), cfg)
    info = prepare_info(model)
    assert all(n.startswith("lstm.") for n in info.float_tensors) and len(info.float_tensors) == 8
    assert "lstm.weight_ih_l0" in str(report(model))
    with pytest.raises(ValueError, match="already prepared"):
        prepare(model, cfg)
    with pytest.raises(ValueError, match="config"):
        prepare(toy(), {"default": {"bits": 4}})  # type: ignore[arg-type]


def test_inplace_false_leaves_original():
    original = toy()
    before = {k: v.clone() for k, v in original.state_dict().items()}
    model = prepare(original, CFG, inplace=False)
    assert model is not original and not is_prepared(original)
    assert original.state_dict().keys() == before.keys()


@pytest.mark.parametrize("gran", ["tensor", "channel"])
@pytest.mark.parametrize("bits", range(1, 9))
def test_convert_unique_values_and_hard_forward(bits, gran):
    model = prepare(toy(), QuantConfig.from_dict({"default": {"bits": bits, "granularity": gran}}))
    for qt in quantized_tensors(model):
        qt.quantizer.set_tau(0.0)  # hard mode of training
    hard_out = model(X).detach()
    convert(model)
    assert torch.equal(model(X), hard_out)
    for qt in quantized_tensors(model):
        used = getattr(qt.module, qt.param_name)
        groups = used.reshape(qt.quantizer.num_groups, -1)
        assert max(row.unique().numel() for row in groups) <= 2**bits
        assert torch.equal(used, qt.quantizer.hard(qt.latent))


def test_state_dict_round_trip():
    model = prepare(toy(0), CFG)
    sched = GQScheduler(model, 20)
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(3):
        opt.zero_grad()
        model(X).square().mean().backward()
        opt.step()
        sched.step()
    fresh = prepare(toy(1), CFG)
    assert not torch.equal(fresh(X), model(X))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(X), model(X))
    convert(model)
    fresh2 = prepare(toy(2), CFG)
    fresh2.load_state_dict(model.state_dict())
    assert torch.equal(fresh2(X), model(X))


def test_report_rows_and_sizes():
    model = prepare(toy(), CFG)
    rep = report(model)
    assert [r.name for r in rep.rows] == [qt.name for qt in quantized_tensors(model)]
    for r in rep.rows:
        assert r.packed_bytes == -(-r.numel * r.bits // 8) + r.groups * 2**r.bits * 4
        assert 0 < r.hardness <= 1 and r.rmse >= 0 and r.method == "gq"
    text = str(rep)
    assert all(r.name in text for r in rep.rows) and "nothing" in text
    d = rep.to_dict()
    assert d["quantized_bytes"] == sum(r.packed_bytes for r in rep.rows) and len(d["rows"]) == len(rep.rows)
    assert regularization(model).item() == 0.0


def test_any_registered_method_through_the_contract():
    cfg = QuantConfig.from_dict({"default": {"method": "test_rtn", "bits": 2}, "rules": {"Embedding": {"method": "gq"}}})
    model = prepare(toy(), cfg)
    sched = GQScheduler(model, 10, quant_every=1)
    model(X).sum().backward()
    sched.step()
    methods = {qt.name: qt.quantizer.method for qt in quantized_tensors(model)}
    assert methods["emb.weight"] == "gq" and methods["conv.weight"] == "test_rtn"
    convert(model)
    rep = report(model)
    assert {r.method for r in rep.rows} == {"gq", "test_rtn"}
    for qt in quantized_tensors(model):
        assert getattr(qt.module, qt.param_name).unique().numel() <= 2**qt.quantizer.bits
    with pytest.raises(ValueError, match="emb.weight.*unknown option 'x'"):
        prepare(toy(), QuantConfig.from_dict({"default": {"method": "test_rtn", "options": {"x": 1}}}))


def test_deepcopy_and_multihead_attention_out_proj():
    model = prepare(toy(), CFG)
    model(X).sum().backward()
    clone = copy.deepcopy(model)
    assert torch.equal(clone(X), model(X))
    mha = nn.MultiheadAttention(8, 2)
    prepare(mha, QuantConfig.from_dict({"default": {"bits": 2}}))
    qts = list(quantized_tensors(mha))
    assert [qt.name for qt in qts] == ["in_proj_weight", "out_proj.weight"]  # all of MHA's weights
    q = torch.randn(4, 1, 8)
    mha(q, q, q)[0].sum().backward()
    for qt in qts:
        assert qt.latent.grad is not None and qt.quantizer.theta.grad is not None


def test_no_grad_forwards_reuse_the_quantized_weight_until_something_changes():
    model = prepare(toy(), CFG)
    calls = []
    for qt in quantized_tensors(model):
        qt.quantizer.register_forward_hook(lambda m, a, o: calls.append(m))
    n = len(list(quantized_tensors(model)))
    with torch.no_grad():
        first = model(X)
        c0 = len(calls)  # prepare already computed (and cached) every weight without autograd
        assert c0 <= n
        assert torch.equal(model(X), first) and len(calls) == c0  # cached: no second quantization
        qt = next(quantized_tensors(model))
        qt.latent.add_(1.0)  # an optimizer step
        assert not torch.equal(model(X), first)
        assert len(calls) == c0 + 1
        qt.quantizer.set_tau(0.5)
        model(X)
        assert len(calls) == c0 + 2
    model(X).sum().backward()  # with autograd: always recomputed
    assert len(calls) == c0 + 2 + n

"""strip: a plain module with the original state_dict keys and the quantized values (issue 12 item 5)."""

import copy

import pytest
import torch
from torch import nn

from subbit.quant import QuantConfig, convert, is_prepared, prepare, strip
from subbit.testing.dummies import dummy_net

torch.set_num_threads(1)


def make_net() -> nn.Module:
    m = dummy_net(("emb", nn.Embedding(12, 8, sparse=True)), ("gru", nn.GRU(8, 8, batch_first=True)),
                  ("lstm", nn.LSTM(8, 8, batch_first=True)),
                  ("enc", nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.0, batch_first=True)),
                  ("conv", nn.ConvTranspose1d(8, 8, 3, padding=1)), ("head", nn.Linear(8, 12, bias=False)),
                  seed=None)  # fmt: skip
    m.head.weight = m.emb.weight  # tied
    return m


@pytest.mark.parametrize("inplace", [False, True])
def test_strip_round_trips_into_a_fresh_plain_model(inplace):
    torch.manual_seed(0)
    fresh = make_net()
    keys = list(fresh.state_dict())
    model = prepare(copy.deepcopy(fresh), QuantConfig.from_dict({"default": {"bits": 3}}))
    x = torch.randint(0, 12, (2, 6))
    model(x).pow(2).mean().backward()
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.sub_(0.05 * p.grad)
    plain = strip(model, inplace=inplace)
    assert (plain is model) == inplace
    assert not is_prepared(plain)
    assert list(plain.state_dict()) == keys
    assert not any("subbit_quant" in n for n, _ in plain.named_modules())
    assert all(isinstance(p, nn.Parameter) for p in plain.parameters())
    assert plain.head.weight is plain.emb.weight and plain.emb.sparse
    converted = model if inplace else convert(model)
    plain.eval()
    converted.eval()
    with torch.no_grad():
        ref = converted(x)
        # (not bit-exact: without hooks the plain TransformerEncoderLayer takes torch's fused path)
        torch.testing.assert_close(plain(x), ref, rtol=1e-5, atol=1e-5)
    for mname, module in converted.named_modules():  # exactly the values the converted model uses
        for pname in getattr(module, "subbit_quant", {}):
            key = f"{mname}.{pname}"
            assert torch.equal(plain.state_dict()[key], getattr(module, pname)), key
    fresh.load_state_dict(plain.state_dict(), strict=True)
    fresh.eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), ref)
    for name in ("gru.weight_hh_l0", "lstm.weight_ih_l0", "enc.self_attn.in_proj_weight", "conv.weight", "emb.weight"):
        assert fresh.state_dict()[name].unique().numel() <= 8, name
    # the plain model trains like any module (sparse embedding gradient again)
    plain.train()
    plain(x).sum().backward()
    assert plain.emb.weight.grad is not None and plain.gru.weight_hh_l0.grad is not None

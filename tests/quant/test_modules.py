"""quant.modules directly: which weights are quantizable, attach/detach, once-per-call quantization,
the no-grad cache, and the errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subbit.quant.modules import (
    HOLDER,
    attach,
    attached,
    detach_holder,
    quantizable_params,
    refresh,
    restore_param_order,
)
from subbit.quant.registry import get_method

torch.set_num_threads(1)


def _q(w: torch.Tensor, bits: int = 4) -> nn.Module:
    return get_method("uniform")(w.detach(), bits)


def test_quantizable_params_per_module_kind() -> None:
    assert quantizable_params(nn.Linear(3, 4)) == ["weight"]
    assert quantizable_params(nn.Conv1d(3, 4, 2)) == ["weight"]
    assert quantizable_params(nn.Embedding(5, 3)) == ["weight"]
    assert quantizable_params(nn.LSTM(3, 4, num_layers=2)) == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l1",
                                                               "weight_hh_l1"]  # fmt: skip
    assert "weight_hr_l0" in quantizable_params(nn.LSTM(3, 4, proj_size=2))
    assert quantizable_params(nn.MultiheadAttention(4, 2)) == ["in_proj_weight"]
    assert quantizable_params(nn.LayerNorm(4)) == []


def test_attach_moves_the_parameter_and_computes_the_weight() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    w = lin.weight
    qw = attach(lin, "weight", _q(w))
    assert "weight" not in lin._parameters and qw.latent is w
    assert attached(lin) == {"weight": qw} and isinstance(getattr(lin, HOLDER), nn.ModuleDict)
    assert not isinstance(lin.weight, nn.Parameter)
    torch.testing.assert_close(lin.weight, qw.quantizer(w).detach(), rtol=0, atol=0)
    assert len(torch.unique(lin.weight)) <= 2**4
    x = torch.randn(3, 6)
    y = lin(x)
    y.sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0  # gradients reach the latent weight


def test_an_lstm_is_quantized_once_per_call_not_per_step() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 4, batch_first=True)
    calls = {"n": 0}
    for name in quantizable_params(lstm):
        q = _q(getattr(lstm, name))
        forward = q.forward

        def counted(w: torch.Tensor, forward=forward) -> torch.Tensor:  # type: ignore[no-untyped-def]
            calls["n"] += 1
            return forward(w)

        q.forward = counted  # type: ignore[method-assign]
        attach(lstm, name, q)
    calls["n"] = 0
    lstm(torch.randn(2, 17, 4))  # 17 time steps
    assert calls["n"] == 2  # weight_ih_l0 and weight_hh_l0, once each


def test_without_grad_the_weight_is_cached_until_the_latent_changes() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(6, 5)
    qw = attach(lin, "weight", _q(lin.weight, bits=8))
    with torch.no_grad():
        a = qw.compute()
        assert qw.compute() is a  # cached
        qw.latent.mul_(2.0)  # an in-place update (as an optimizer step) invalidates it
        b = qw.compute()
    assert b is not a and not torch.equal(a, b)
    with torch.no_grad():
        lin.weight = torch.zeros_like(lin.weight)
    refresh(lin)
    assert torch.equal(lin.weight, b)


def test_detach_and_restore_param_order() -> None:
    lstm = nn.LSTM(3, 3)
    order = list(lstm._parameters)
    attach(lstm, "weight_hh_l0", _q(lstm.weight_hh_l0))
    kernels = detach_holder(lstm)
    assert set(kernels) == {"weight_hh_l0"} and HOLDER not in lstm._modules
    lstm._parameters["weight_hh_l0"] = kernels["weight_hh_l0"].latent
    restore_param_order(lstm)
    assert list(lstm._parameters) == order


def test_attach_errors() -> None:
    lin = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="no parameter 'bias2'"):
        attach(lin, "bias2", _q(lin.weight))
    other = nn.Linear(3, 3)
    shared = attach(other, "weight", _q(other.weight))
    with pytest.raises(ValueError, match="shared quantized weight holds another parameter"):
        attach(lin, "weight", _q(lin.weight), shared=shared)

"""bf16 / fp16 weights at every bit depth: training steps, convert, report (issue 12 item 2)."""

import pytest
import torch
from torch import nn

from subbit.quant import GQScheduler, QuantConfig, convert, prepare, report
from subbit.quant.gq import locate, nearest

torch.set_num_threads(1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("bits", range(1, 9))
def test_low_precision_linear_trains_and_converts(dtype, bits):
    torch.manual_seed(bits)
    m = nn.Linear(256, 256).to(dtype)
    prepare(m, QuantConfig.from_dict({"default": {"bits": bits}}))
    sched = GQScheduler(m, 6)
    opt = torch.optim.SGD(m.parameters(), lr=1e-2)
    latent = m.subbit_quant["weight"].latent
    before = latent.detach().clone()
    for _ in range(3):
        y = m(torch.randn(4, 256, dtype=dtype))
        assert y.dtype == dtype
        y.float().pow(2).mean().backward()
        assert latent.grad is not None and latent.grad.dtype == dtype and torch.isfinite(latent.grad).all()
        opt.step()
        opt.zero_grad()
        sched.step()
    assert not torch.equal(before, latent.detach())
    convert(m)
    w = m.weight
    assert w.dtype == dtype and torch.isfinite(w).all()
    assert 1 < w.unique().numel() <= 2**bits
    rows = report(m).rows
    assert len(rows) == 1 and rows[0].bits == bits


def test_bf16_cast_after_prepare_still_quantizes():
    torch.manual_seed(0)
    m = prepare(nn.Linear(256, 256), QuantConfig.from_dict({"default": {"bits": 8}}))
    m.to(torch.bfloat16)  # theta and scale become bf16 too
    m(torch.randn(2, 256, dtype=torch.bfloat16)).float().sum().backward()
    convert(m)
    assert m.weight.dtype == torch.bfloat16 and m.weight.unique().numel() <= 256


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_locate_bins_low_precision_in_float32(dtype):
    torch.manual_seed(0)
    theta = torch.linspace(-1, 1, 256).unsqueeze(0)
    u = torch.rand(1, 20000) * 2 - 1
    ref = torch.searchsorted(theta.to(dtype).float().contiguous(), u.to(dtype).float().contiguous())
    got = locate(u.to(dtype), theta.to(dtype))
    assert got.max() <= 256 and torch.equal(got, ref)
    assert nearest(u.to(dtype), theta.to(dtype)).max() <= 255

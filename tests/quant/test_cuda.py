"""CUDA smoke test (issue 12): runs whenever a GPU is present, skipped otherwise.

Not run on a GPU yet in this tree (the sessions that wrote it had none): keep it small and plain.
On CUDA, GQ's "auto" soft forward is the sync-free static window (subbit.quant.soft_window);
the sync test fails if a training forward/backward reads any device value on the host.
"""

import pytest
import torch
from torch import nn

from subbit.quant import GQScheduler, QuantConfig, convert, prepare, quantized_tensors, report, strip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_gq_linear_gru_transformer_train_and_convert_on_cuda(dtype, bits):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = nn.ModuleDict({
        "lin": nn.Linear(256, 256),
        "gru": nn.GRU(16, 16, batch_first=True),
        "enc": nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0, batch_first=True),
    }).to(dev, dtype)
    prepare(model, QuantConfig.from_dict({"default": {"bits": bits}}))
    for qt in quantized_tensors(model):
        assert qt.latent.device.type == "cuda" and qt.quantizer.theta.device.type == "cuda"
    sched = GQScheduler(model, 4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    for _ in range(3):
        y = model["lin"](torch.randn(4, 256, device=dev, dtype=dtype)).float().pow(2).mean()
        h, _ = model["gru"](torch.randn(2, 5, 16, device=dev, dtype=dtype))
        y = y + model["enc"](h).float().pow(2).mean()
        y.backward()
        for qt in quantized_tensors(model):
            assert qt.latent.grad is not None and torch.isfinite(qt.latent.grad).all(), qt.name
        opt.step()
        opt.zero_grad()
        sched.step()
    convert(model)
    for qt in quantized_tensors(model):
        w = getattr(qt.module, qt.param_name)
        assert w.device.type == "cuda" and w.dtype == dtype and w.unique().numel() <= 2**bits
    assert len(report(model).rows) == 7
    plain = strip(model)
    assert not any("subbit_quant" in k for k in plain.state_dict())


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_gq_training_step_has_no_host_sync_on_cuda(bits):
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = prepare(nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 8)).to(dev),
                    QuantConfig.from_dict({"default": {"bits": bits}}))
    x = torch.randn(16, 64, device=dev)
    qts = quantized_tensors(model)
    assert all(qt.quantizer.uses_static(qt.latent) for qt in qts)
    model(x).square().mean().backward()  # first call: the host mirrors read their buffers once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for tau in (0.5, 0.05):
            for qt in qts:
                qt.quantizer.set_tau(tau)
            model(x).square().mean().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.isfinite(qt.latent.grad).all() for qt in qts)


def test_gq_linear_compiles_whole_on_cuda():
    import torch._dynamo

    torch.manual_seed(0)
    model = prepare(nn.Linear(64, 32).cuda(), QuantConfig.from_dict({"default": {"bits": 4}}))
    x = torch.randn(8, 64, device="cuda")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0
    ref = model(x)
    out = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    assert torch.allclose(out, ref, rtol=1e-5, atol=1e-6)
    out.sum().backward()
    assert torch.isfinite(quantized_tensors(model)[0].latent.grad).all()

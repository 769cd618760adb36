"""CUDA smoke test (issue 12): runs whenever a GPU is present, skipped otherwise.

Not run on a GPU yet in this tree (the session that wrote it had none): keep it small and plain.
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

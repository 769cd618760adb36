"""quant_mode="forward": zero gradients on off steps under DDP, quantized evaluation (issue 12 item 4)."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from subbit.quant import GQScheduler, QuantConfig, prepare, quantized_tensors
from subbit.quant.api import quantizer_enabled, set_enabled

torch.set_num_threads(1)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    return prepare(net, QuantConfig.from_dict({"default": {"bits": 2}}))


def test_off_step_gradients_single_process_and_forced_zero():
    model = _model()
    set_enabled(model, False)
    x = torch.randn(4, 6)
    model(x).sum().backward()
    qts = list(quantized_tensors(model))
    for qt in qts:  # single process: the quantizer took no part, no gradient (as before)
        assert qt.latent.grad is not None and qt.quantizer.theta.grad is None
    model.zero_grad()
    for m in model.modules():
        if hasattr(m, "off_grads"):
            m.off_grads = "zero"
    out = model(x)
    torch.testing.assert_close(out, model[2](model[1](x @ qts[0].latent.T + model[0].bias)))
    out.sum().backward()
    for qt in qts:
        assert torch.equal(qt.quantizer.theta.grad, torch.zeros_like(qt.quantizer.theta))


def test_evaluation_uses_the_quantizer_even_on_off_steps():
    model = _model()
    x = torch.randn(4, 6)
    quantized = model(x).detach()
    set_enabled(model, False)
    floating = model(x).detach()
    assert not torch.allclose(quantized, floating)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), quantized)
    model.train()
    assert torch.equal(model(x).detach(), floating)
    with quantizer_enabled(model):
        assert torch.equal(model(x).detach(), quantized)
    assert torch.equal(model(x).detach(), floating)  # the off setting is back


def _ddp_worker(rank: int, world: int, out: str) -> None:
    # A file store, not TCP: no free-port race and no store-server thread in rank 0, whose teardown
    # aborted the process once in CI ("terminate called without an active exception").
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{out}/store", rank=rank, world_size=world)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)  # find_unused_parameters=False
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        sched = GQScheduler(model, 8, quant_every=2, quant_mode="forward")
        torch.manual_seed(100 + rank)
        for _ in range(5):
            ddp(torch.randn(4, 6)).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
            sched.step()
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        torch.save(flat, f"{out}/rank{rank}.pt")
        dist.barrier()  # neither rank tears the group down while the other still talks to it
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_ddp_gloo_two_processes_forward_mode_without_find_unused_parameters(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    torch.testing.assert_close(a, b)  # every gradient was all-reduced, replicas agree

"""GQ under torch.compile (issue 12 item 8): no graph break, no recompilation as tau anneals.

The CPU build here has a C compiler, but inductor's compile time on a shared 2-core machine is
long, so the graph checks use the ``aot_eager`` backend (dynamo + AOT autograd: exactly the
graph capture of forward and backward that inductor would compile); the inductor run is slow.
"""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch import nn

from subbit.quant import QuantConfig, convert, prepare, quantized_tensors
from subbit.quant.gq import GeneralQuantizer
from subbit.quant.mulaw import compand, expand


def naive(q: GeneralQuantizer, w: torch.Tensor) -> torch.Tensor:
    """Full softmax over all K centroids with plain autograd (as in test_gq.py)."""
    g = q.num_groups
    s, mu, th = q._scale().unsqueeze(1), q.mu.unsqueeze(1), q.centroids()
    u = compand(torch.clamp(w.reshape(g, -1) / s, -1, 1), mu)
    d = u.unsqueeze(-1) - th.unsqueeze(1)
    a = torch.softmax(-(d**2 if q.distance == "squared" else d.abs()) / q.abs_tau, -1)
    if q.domain == "companded":
        return (s * expand((a * th.unsqueeze(1)).sum(-1), mu)).reshape(w.shape)
    return (a * (s * expand(th, mu)).unsqueeze(1)).sum(-1).reshape(w.shape)


def grads(q: GeneralQuantizer, fn, w: torch.Tensor) -> list[torch.Tensor]:
    """Output, gradient to ``w`` and to each quantizer parameter under a fixed weighted sum."""
    wl = w.clone().requires_grad_()
    for p in q.parameters():
        p.grad = None
    out = fn(wl)
    (out * torch.linspace(-1, 2, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return [out.detach(), wl.grad] + [p.grad.clone() for p in q.parameters()]

torch.set_num_threads(1)


@pytest.mark.parametrize(
    "opts",
    [{}, {"domain": "linear"}, {"distance": "absolute"}, {"learn_scale": True, "learn_mu": True},
     {"symmetric": True}, {"zero_centroid": True, "domain": "linear", "learn_mu": True}],
)
@pytest.mark.parametrize("gran", ["tensor", "channel"])
def test_static_window_matches_naive_softmax(opts, gran):
    """The sync-free path computes the same function and gradients as the full softmax."""
    torch.manual_seed(0)
    w = torch.randn(6, 50, dtype=torch.float64)
    q = GeneralQuantizer(w, 3, gran, impl="static", window=8, **opts).double()
    with torch.no_grad():
        q.theta.add_(0.05 * torch.randn_like(q.theta))
    q.constrain_()
    q.set_tau(0.3)
    mine, ref = grads(q, q, w), grads(q, lambda x: naive(q, x), w)
    for a, b in zip(mine, ref):
        assert (a - b).abs().max() <= 1e-10 * max(1.0, b.abs().max().item()), (a - b).abs().max()


@pytest.mark.parametrize("bits", [1, 4, 8])
def test_static_window_agrees_with_the_exact_window(bits):
    """Default window (8 of 2**bits): the adaptive window and the static one agree to float32
    rounding (both keep every centroid above exp(-30) of the nearest), values and gradients.
    Centroid gradients sum thousands of signed terms per group in a different order (one scatter
    vs per-chunk window adds), so they agree to ~1e-5 of their largest entry, not to an ulp."""
    torch.manual_seed(bits)
    w = torch.randn(64, 96)
    ref = GeneralQuantizer(w, bits, "channel", impl="window")
    mine = GeneralQuantizer(w, bits, "channel", impl="static")
    mine.load_state_dict(ref.state_dict())
    for tau in (1.0, 0.1, 1e-3):
        ref.set_tau(tau)
        mine.set_tau(tau)
        for a, b in zip(grads(mine, mine, w), grads(ref, ref, w)):
            assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item()), (tau, (a - b).abs().max())


def _model(bits: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return prepare(nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16)),
                   QuantConfig.from_dict({"default": {"bits": bits}}))


@pytest.mark.parametrize("bits", [1, 8])  # 1 bit: its temperature unit is the centroid gap, a tensor
def test_gq_linear_has_no_graph_break_in_training(bits):
    model = _model(bits).train()
    x = torch.randn(8, 32)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_break_count == 0, [str(b.reason)[:120] for b in explained.break_reasons]
    assert explained.graph_count == 1


class _Counter:
    """A dynamo backend that counts compilations and runs the graph eagerly."""

    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> object:
        self.frames += 1
        return gm.forward


def test_compiled_training_step_matches_eager_and_anneals_without_recompiling():
    eager, compiled_model = _model(), _model()
    compiled_model.load_state_dict(eager.state_dict())
    for qt in quantized_tensors(eager):  # the path a compiled forward takes, run eagerly
        qt.quantizer.impl = "static"
    torch._dynamo.reset()
    counter = _Counter()
    step = torch.compile(compiled_model, backend=counter, fullgraph=True)
    backend = torch.compile(compiled_model, backend="aot_eager", fullgraph=True)
    x = torch.randn(8, 32)
    for tau in (1.0, 0.1, 0.01):
        for m in (eager, compiled_model):
            for qt in quantized_tensors(m):
                qt.quantizer.set_tau(tau)
        eager.zero_grad()
        eager(x).square().mean().backward()
        ref = [p.grad.clone() for p in eager.parameters()]
        for fn in (backend, step):
            compiled_model.zero_grad()
            fn(x).square().mean().backward()
            got = [p.grad for p in compiled_model.parameters()]
            assert all(g is not None for g in got) and len(got) == len(ref)
            for a, b in zip(got, ref):
                assert torch.allclose(a, b, rtol=1e-5, atol=1e-8)
    assert counter.frames == 1  # tau is read as a tensor: no recompilation while it anneals
    convert(compiled_model)
    convert(eager)
    out = step(x)  # converted: a new graph (one bool guard), the hard forward, still whole
    assert counter.frames == 2 and torch.equal(out, eager(x))


@pytest.mark.slow
def test_inductor_compiles_a_gq_training_step():
    model = _model()
    x = torch.randn(8, 32)
    ref = _model()
    ref.load_state_dict(model.state_dict())
    for qt in quantized_tensors(ref):
        qt.quantizer.impl = "static"
    step = torch.compile(model, fullgraph=True)
    step(x).square().mean().backward()
    ref(x).square().mean().backward()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)

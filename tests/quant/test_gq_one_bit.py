"""1-bit GQ (K = 2): the initial codebook must match the weights' scale, not their outliers.

Regression for runs/compare-small gq4-hh1: the evenly spaced init put both centroids at +-max|W|,
so the hardened binary recurrent kernel was 4-6x stronger than the fp32 one and the LSTM's
gradient exploded (1e10, then inf) within 7 steps.
"""

import pytest
import torch

from subbit.quant.gq import GeneralQuantizer

torch.set_num_threads(1)


def heavy_tailed(rows: int = 64, cols: int = 32, seed: int = 0) -> torch.Tensor:
    """Gaussian weights plus a few outliers (max|W| ~ 8x mean|W|, like the RNN-T's weight_hh)."""
    g = torch.Generator().manual_seed(seed)
    w = 0.15 * torch.randn(rows, cols, generator=g)
    w.view(-1)[:: max(1, w.numel() // 5)] *= 6.0
    return w


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
@pytest.mark.parametrize("symmetric", [False, True])
def test_one_bit_codebook_starts_at_mean_abs(granularity: str, symmetric: bool) -> None:
    w = heavy_tailed()
    q = GeneralQuantizer(w, 1, granularity, symmetric=symmetric)
    groups = w.reshape(q.num_groups, -1)
    expect = groups.abs().mean(1, keepdim=True)
    c = q.codebook().detach()
    assert torch.allclose(c, torch.cat([-expect, expect], 1), rtol=1e-4, atol=1e-6)
    assert float(groups.abs().amax()) > 4.0 * float(expect.max())  # the case the old init got wrong


def test_one_bit_hard_kernel_keeps_the_weights_scale() -> None:
    w = heavy_tailed(256, 64)
    q = GeneralQuantizer(w, 1)
    q.set_tau(0.0)
    hard = q(w).detach()
    rmse = float((hard - w).pow(2).mean().sqrt())
    assert rmse < float(w.std())  # the +-max|W| codebook gave 3-6x the std
    ratio = float(torch.linalg.matrix_norm(hard, 2) / torch.linalg.matrix_norm(w, 2))
    assert ratio < 1.5  # a recurrent kernel this much stronger than fp32 explodes the LSTM


def test_one_bit_recurrence_gradient_stays_bounded() -> None:
    """A tanh RNN on the hard 1-bit kernel: the input gradient stays within 100x of fp32's."""
    torch.manual_seed(0)
    hidden, steps = 32, 40
    w = heavy_tailed(hidden, hidden, seed=1) * (1.2 / hidden**0.5 / 0.15)
    q = GeneralQuantizer(w, 1)
    q.set_tau(0.0)

    def input_grad(kernel: torch.Tensor) -> float:
        x = torch.randn(steps, hidden, generator=torch.Generator().manual_seed(2), requires_grad=True)
        h = torch.zeros(hidden)
        for t in range(steps):
            h = torch.tanh(kernel @ h + x[t])
        h.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()
        return float(x.grad.norm())

    assert input_grad(q(w).detach()) < 100.0 * input_grad(w)


def test_one_bit_zero_group_is_finite() -> None:
    w = torch.zeros(4, 8)
    w[1] = torch.linspace(-1, 1, 8)
    q = GeneralQuantizer(w, 1, "channel")
    theta = q.centroids().detach()
    assert torch.isfinite(theta).all() and (theta[:, 1] > theta[:, 0]).all()
    out = q(w)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.theta.grad).all()


@pytest.mark.parametrize("distance", ["squared", "absolute"])
def test_one_bit_temperature_is_relative_to_the_centroid_gap(distance: str) -> None:
    w = heavy_tailed()
    q = GeneralQuantizer(w, 1, distance=distance)
    q.set_tau(0.5)
    th = q.centroids().detach()
    gap = float(th[0, 1] - th[0, 0])
    assert 0.0 < gap < 1.0  # data-driven init, well inside the nominal spacing 2
    unit = gap**2 if distance == "squared" else gap
    assert q.abs_tau == pytest.approx(0.5 * unit, rel=1e-5)
    with torch.no_grad():
        q.theta.copy_(torch.tensor([[-1.0, 1.0]]))
    assert q.abs_tau == pytest.approx(0.5 * (4.0 if distance == "squared" else 2.0), rel=1e-6)


def test_one_bit_collapsed_centroids_keep_a_positive_temperature() -> None:
    w = heavy_tailed()
    q = GeneralQuantizer(w, 1)
    q.set_tau(1.0)
    with torch.no_grad():
        q.theta.fill_(0.2)
    assert q.abs_tau > 0.0
    out = q(w)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(q.theta.grad).all()

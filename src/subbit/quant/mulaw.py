"""mu-law companding: the non-uniform coordinate system GQ's centroids live in.

``compand(x, mu) = sign(x) * ln(1 + mu|x|) / ln(1 + mu)`` and its inverse
``expand(y, mu) = sign(y) * ((1 + mu)^|y| - 1) / mu`` are odd, monotone maps of [-1, 1] onto
itself. Points evenly spaced in the companded domain are dense near 0 in the linear domain, which
suits bell-shaped weight distributions.

Both are custom autograd functions with closed-form derivatives because the naive
``sign(x) * f(|x|)`` has a zero derivative at ``x == 0`` (torch's ``abs`` gradient there is 0),
which would freeze a weight sitting exactly on a zero centroid. Small ``mu`` (including 0) uses a
second-order series, so ``mu -> 0`` is the identity without NaN in values or gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor

_SMALL_MU = 1e-4  # below this the series is exact to float32 precision


def _host_checks(t: Tensor) -> bool:
    """Whether reading ``t``'s values on the host is free: a CPU tensor outside ``torch.compile``
    (elsewhere it is a device sync, or a graph break)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _as_tensor(mu: float | Tensor, like: Tensor) -> Tensor:
    if not isinstance(mu, Tensor) and mu < 0:
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    mu_t = torch.as_tensor(mu, dtype=like.dtype, device=like.device)
    # a tensor mu is checked where that costs nothing (GQ keeps its mu >= 0 itself)
    if isinstance(mu, Tensor) and _host_checks(mu_t) and torch.any(mu_t < 0):
        raise ValueError(f"mu must be >= 0, got {mu!r}")
    return mu_t


def _branch(mu: Tensor, exact, series) -> Tensor:
    """``exact()`` where ``mu >= _SMALL_MU``, ``series()`` elsewhere; on the CPU skips the branch
    nobody needs (the common case: one mu for the whole tensor), which halves the elementwise
    work. Off the CPU and under ``torch.compile`` both are computed (no host read of ``mu``)."""
    small = mu < _SMALL_MU
    if not _host_checks(mu):
        return torch.where(small, series(), exact(torch.where(small, torch.ones_like(mu), mu)))
    if not bool(small.any()):
        return exact(mu)
    if bool(small.all()):
        return series()
    return torch.where(small, series(), exact(torch.where(small, torch.ones_like(mu), mu)))


def _reduce_to(grad: Tensor, shape: torch.Size) -> Tensor:
    """Sum a broadcast gradient back to the shape of the input it belongs to."""
    if grad.shape == shape:
        return grad
    return grad.sum_to_size(shape) if len(shape) else grad.sum()


def _odd_backward(ctx, g: Tensor, d_input, d_mu) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of an odd map ``sign(x) * f(|x|, mu)``: ``d_input(mu, |x|)`` is ``df/d|x|`` (the
    odd map's derivative in ``x``), ``d_mu(mu, |x|)`` is ``df/dmu`` (times ``sign(x)`` here)."""
    x, mu = ctx.saved_tensors
    a = x.abs()
    gx = gmu = None
    if ctx.needs_input_grad[0]:
        gx = _reduce_to(g * d_input(mu, a), x.shape)
    if ctx.needs_input_grad[1]:
        gmu = _reduce_to(g * (d_mu(mu, a) * torch.sign(x)), mu.shape)
    return gx, gmu


def _compand_dx(mu: Tensor, a: Tensor) -> Tensor:
    return _branch(mu, lambda m: (m / torch.log1p(m)) / (1 + m * a), lambda: 1 + mu * (0.5 - a))


def _compand_dmu(mu: Tensor, a: Tensor) -> Tensor:
    def exact(m: Tensor) -> Tensor:
        L = torch.log1p(m)
        return a / ((1 + m * a) * L) - torch.log1p(m * a) / ((1 + m) * L * L)

    return _branch(mu, exact, lambda: a * (1 - a) / 2)


def _expand_dy(mu: Tensor, b: Tensor) -> Tensor:
    return _branch(mu, lambda m: torch.exp(b * torch.log1p(m)).mul_(torch.log1p(m) / m), lambda: 1 + mu * (b - 0.5))


def _expand_dmu(mu: Tensor, b: Tensor) -> Tensor:
    def exact(m: Tensor) -> Tensor:
        L = torch.log1p(m)
        return b * torch.exp((b - 1) * L) / m - torch.expm1(b * L) / (m * m)

    return _branch(mu, exact, lambda: b * (b - 1) / 2)


class _Compand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, mu: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, mu)
        a = x.abs()
        mag = _branch(mu, lambda m: torch.log1p(m * a).div_(torch.log1p(m)), lambda: a * (1 + mu * (1 - a) / 2))
        return mag.copysign_(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        return _odd_backward(ctx, g, _compand_dx, _compand_dmu)


class _Expand(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y: Tensor, mu: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(y, mu)
        b = y.abs()
        mag = _branch(mu, lambda m: torch.expm1(b * torch.log1p(m)).div_(m), lambda: b * (1 + mu * (b - 1) / 2))
        return mag.copysign_(y)

    @staticmethod
    def backward(ctx, g: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        return _odd_backward(ctx, g, _expand_dy, _expand_dmu)


def compand(x: Tensor, mu: float | Tensor) -> Tensor:
    """mu-law compress ``x`` (expected in [-1, 1]); ``mu`` broadcasts against ``x``."""
    return _Compand.apply(x, _as_tensor(mu, x))


def expand(y: Tensor, mu: float | Tensor) -> Tensor:
    """Inverse of :func:`compand`: ``expand(compand(x, mu), mu) == x``."""
    return _Expand.apply(y, _as_tensor(mu, y))

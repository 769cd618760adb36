"""Small helpers the baselines share: integer grids, 1-D nearest and k-means, recompute, softmax.

Everything works on grouped views ``[G, N]`` (rows = quantization groups, see
:meth:`subbit.quant.base.WeightQuantizer.grouped`) and never builds an ``N x K`` matrix, so an
8-bit codebook over a million weights costs O(N) memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from subbit.quant.base import WeightQuantizer

TINY = 1e-12


# -- recompute-in-backward --------------------------------------------------------------
class _Recompute(torch.autograd.Function):
    """Run ``fn`` without keeping its graph; rebuild it from the saved inputs in backward."""

    @staticmethod
    def forward(ctx: Any, fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:  # type: ignore[override]
        ctx.fn = fn
        ctx.save_for_backward(*inputs)
        return fn(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        need = ctx.needs_input_grad[1:]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) for t, n in zip(ctx.saved_tensors, need)]
            out = ctx.fn(*leaves)
            wanted = [t for t, n in zip(leaves, need) if n]
            grads = iter(torch.autograd.grad(out, wanted, grad, allow_unused=True))
        return (None, *(next(grads) if n else None for n in need))


def recompute(fn: Callable[..., Tensor], *inputs: Tensor) -> Tensor:
    """``fn(*inputs)`` (one tensor out) keeping only ``inputs`` for backward.

    A small activation checkpoint: torch's non-reentrant ``checkpoint`` costs ~4 s on its first
    call in a process (it initialises the compiler stack), which a CLI and the tests would pay.
    ``fn`` must be deterministic; integer inputs (indices) pass through without gradient.
    """
    return _Recompute.apply(fn, *inputs)


# -- softmax without the slow exp path ------------------------------------------------------
EXP_FLOOR = -80.0  # exp(-80) ~ 1.8e-35: still a normal float32, and negligible next to exp(0)


def fast_softmax(logits: Tensor, dim: int) -> Tensor:
    """Softmax whose shifted logits are floored at -80 before ``exp``.

    On x86 CPUs ``exp`` of arguments below about -87 (results that underflow to subnormal or
    zero) leaves the vectorised path and costs 10-100x more per element; with sharp
    temperatures most logits of a quantizer's softmax are there. The floored entries weigh
    below 2e-35 (their gradient, already that small, becomes 0). The max is detached, which is
    exact: softmax does not change under a constant shift.
    """
    z = logits - logits.detach().amax(dim=dim, keepdim=True)
    e = z.clamp(min=EXP_FLOOR).exp()
    return e / e.sum(dim=dim, keepdim=True)


# -- symmetric integer grids (uniform QAT and uniform PTQ) ----------------------------------
def int_levels(bits: int) -> Tensor:
    """The ``2**bits`` integer levels of a symmetric signed grid, ascending.

    ``bits >= 2``: ``-2**(bits-1) .. 2**(bits-1) - 1`` (int8 style, one extra negative level).
    ``bits == 1``: ``{-1, +1}`` (a grid without zero: the two signs).
    """
    if bits == 1:
        return torch.tensor([-1.0, 1.0])
    half = 2 ** (bits - 1)
    return torch.arange(-half, half, dtype=torch.float32)


def qrange(bits: int) -> tuple[float, float]:
    """Clamp range ``(qmin, qmax)`` of the integer grid."""
    lv = int_levels(bits)
    return float(lv[0]), float(lv[-1])


@torch.no_grad()
def max_step(wg: Tensor, bits: int) -> Tensor:
    """Per-group step ``[G]`` that puts ``max|w|`` on the top level (``bits >= 2``).

    For 1 bit the step is ``mean|w|``, the least-squares scale of ``sign(w)``.
    """
    a = wg.detach().abs()
    step = a.mean(dim=1) if bits == 1 else a.amax(dim=1) / qrange(bits)[1]
    return step.clamp_min(TINY)


@torch.no_grad()
def round_to_grid(wg: Tensor, step: Tensor, bits: int) -> Tensor:
    """Integer level (as float) of each weight: round-to-nearest, clamped; sign for 1 bit."""
    x = wg.detach() / step[:, None]
    if bits == 1:
        return torch.where(x >= 0, 1.0, -1.0).to(wg.dtype)
    lo, hi = qrange(bits)
    return torch.round(x).clamp_(lo, hi)


def level_index(levels: Tensor, bits: int) -> Tensor:
    """Codebook index of an integer level produced by :func:`round_to_grid`."""
    if bits == 1:
        return (levels > 0).long()
    return (levels - qrange(bits)[0]).long()


# -- sorted 1-D codebooks -----------------------------------------------------------------
@torch.no_grad()
def nearest_index(x: Tensor, codebook: Tensor) -> Tensor:
    """Index of the nearest entry of each row's ascending ``codebook [G, K]`` for ``x [G, N]``.

    Uses ``searchsorted``: O(N log K) time, O(N) memory. Ties go to the lower entry.
    """
    cb = codebook.detach().contiguous()
    xs = x.detach().contiguous().to(cb.dtype)
    k = cb.shape[1]
    pos = torch.searchsorted(cb, xs)
    right = pos.clamp(max=k - 1)
    left = (pos - 1).clamp(min=0)
    d_left = (xs - cb.gather(1, left)).abs()
    d_right = (cb.gather(1, right) - xs).abs()
    return torch.where(d_right < d_left, right, left)


@torch.no_grad()
def quantile_init(x: Tensor, k: int) -> Tensor:
    """Deterministic centroids ``[G, k]``: the ``(j + 0.5) / k`` quantiles of each row.

    Sort-and-gather instead of ``torch.quantile`` (which refuses rows above 2**24 values).
    """
    xs, _ = x.detach().sort(dim=1)
    n = xs.shape[1]
    q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    pos = (q * (n - 1)).round().long().clamp_(0, n - 1)
    return xs[:, pos].contiguous()


@torch.no_grad()
def lloyd_1d(x: Tensor, k: int, iters: int, init: Tensor | None = None) -> Tensor:
    """1-D Lloyd k-means per row of ``x [G, N]``; returns ascending centroids ``[G, k]``.

    Starts from ``init`` or the quantiles (deterministic); an empty cluster keeps its centroid.
    """
    xd = x.detach()
    c = (quantile_init(xd, k) if init is None else init.detach().clone()).to(xd.dtype)
    c, _ = c.sort(dim=1)
    for _ in range(iters):
        idx = nearest_index(xd, c)
        sums = torch.zeros_like(c).scatter_add_(1, idx, xd)
        counts = torch.zeros_like(c).scatter_add_(1, idx, torch.ones_like(xd))
        new = torch.where(counts > 0, sums / counts.clamp_min(1.0), c)
        new, _ = new.sort(dim=1)
        if torch.equal(new, c):
            break
        c = new
    return c


class CentroidQuantizer(WeightQuantizer):
    """A method whose hard codebook is its ascending ``centroids`` buffer ``[G, K]`` (DKM,
    S8BQAT): export takes each weight's nearest centroid."""

    centroids: Tensor

    @torch.no_grad()
    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        idx = nearest_index(self.grouped(w), self.centroids)
        return idx.reshape(w.shape), self.centroids.clone()

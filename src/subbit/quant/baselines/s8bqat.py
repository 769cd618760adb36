"""S8BQAT (Zhen et al., Interspeech 2022, arXiv 2206.15408): fixed mu-law centroids + regularizer.

Centroids are fixed at preparation from the fp32 weights: ``c_k = s * expand(v_k, mu)`` with
``v_k`` evenly spaced on [-1, 1] and ``s = max|W|`` per group. Training sees the latent float
weight (``forward`` is the identity); what pulls weights onto centroids is the Multi-Regional
Absolute Cosine regularizer added to the loss, and the scheduler's periodic hard compressor
(``w <- hard(w)`` every ``T_q`` steps). Once ``converted`` is set, ``forward`` returns ``hard(w)``.

Regularizer, per weight, with ``t = (w - c_k) / (c_{k+1} - c_k)`` in the region between two
neighbouring centroids: ``|sin(pi * t)|`` (0 on each centroid, 1 midway). Beyond the outermost
centroid (``e`` = distance in units of the outer region's width) it is ``sin(pi * e)`` up to
``e = 1/2`` and ``1/2 + e`` after, so stray weights keep being pulled back instead of meeting
the next "valley" of a periodic sine.

Strength per weight: the loss term of a tensor is ``R(W) = lam * sum_i penalty(w_i)`` (a sum, not
a mean), so ``dR/dw_i = lam * dpenalty/dw_i`` whatever the tensor's size: ``lam`` is the pull on
one weight, the same for a 4k-weight embedding and a 1M-weight LSTM kernel (a per-tensor mean
made it ``lam / N``: small tensors were pulled hundreds of times harder than large ones). Inside
the grid ``|dpenalty/dw| = pi |cos(pi t)| / (c_{k+1} - c_k)``. The value of ``R`` grows with
``N`` (that is what keeps the per-weight pull fixed); note that the loop's gradient-norm clip
sees the regularizer's gradient too, so a large ``lam`` also shrinks the task gradient.

Defaults: ``mu = 5`` (GQ's default, so both methods start from the same grid) and ``lam = 1e-4``
(the low end of the 1e-4..1e-1 range to sweep on dev; not yet settled by measurement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from subbit.quant.baselines._common import TINY, CentroidQuantizer
from subbit.quant.mulaw import expand
from subbit.quant.options import MethodOptions
from subbit.quant.registry import register_method



@dataclass(frozen=True)
class S8BQATOptions(MethodOptions):
    """S8BQAT's options: ``mu`` (>= 0) and the per-weight regularizer strength ``lam`` (> 0)."""

    method = "s8bqat"
    mu: float = 5.0
    lam: float = 1e-4

    def __post_init__(self) -> None:
        self._number("mu")
        self._number("lam", positive=True)


def _region(wg: Tensor, c: Tensor) -> Tensor:
    """Index ``k`` of the region ``[c_k, c_{k+1}]`` of each weight (outermost regions extended)."""
    pos = torch.searchsorted(c.contiguous(), wg.detach().contiguous())
    return (pos - 1).clamp_(0, c.shape[1] - 2)


def _region_t(wg: Tensor, c: Tensor, region: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Position ``t`` of each weight in its region (0..1 inside the grid) and the region's width."""
    region = _region(wg, c) if region is None else region.long()
    lo = c.gather(1, region)
    width = (c.gather(1, region + 1) - lo).clamp_min_(TINY)
    return (wg - lo) / width, width


def _penalty_of_t(t: Tensor) -> Tensor:
    """``|sin(pi t)|`` inside the grid; beyond it (``e > 0``) ``sin(pi e)`` up to 1/2, then ``1/2 + e``."""
    e = (-t).relu() + (t - 1).relu()  # > 0 only beyond the outermost centroids
    return torch.sin(math.pi * t.clamp(0.0, 1.0)).abs() + torch.sin(math.pi * e.clamp(max=0.5)) + (e - 0.5).relu()


class _SumPenalty(torch.autograd.Function):
    """``sum(penalty(w))`` whose backward recomputes ``t`` from ``w`` and applies the closed-form
    derivative: autograd through :func:`_penalty_of_t` would keep ~10 floats per weight per layer
    until backward (3x fp32's training memory on the LSTM benchmark). Keeps ``w``, the
    centroids and one byte per weight (its region)."""

    @staticmethod
    def forward(ctx: Any, wg: Tensor, c: Tensor) -> Tensor:  # type: ignore[override]
        region = _region(wg, c)
        # one byte per weight (K <= 256) spares the backward a second searchsorted
        ctx.save_for_backward(wg, c, region.to(torch.uint8))
        t, _ = _region_t(wg, c, region)
        return _penalty_of_t(t).sum()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        wg, c, region = ctx.saved_tensors
        t, width = _region_t(wg, c, region)
        # inside (0 < t < 1): d|sin(pi t)|/dt = pi cos(pi t); sin > 0 there
        d = torch.cos(math.pi * t).mul_(math.pi).mul_((t > 0) & (t < 1))
        # beyond the grid: e = -t (t < 0) or t - 1 (t > 1); de/dt = -1 or +1
        e = (-t).relu_().add_((t - 1).relu_())
        slope = torch.cos(math.pi * e).mul_(math.pi).mul_(e < 0.5).add_(e >= 0.5)
        side = (t > 1).to(t.dtype).sub_((t < 0).to(t.dtype))
        d.add_(slope.mul_(side))
        return d.mul_(grad).div_(width), None


@register_method("s8bqat")
class S8BQATQuantizer(CentroidQuantizer):
    """Fixed mu-law grid, MRACos regularizer; options ``mu`` (>= 0, default 5) and ``lam`` (> 0, per
    weight, default 1e-4)."""

    Options = S8BQATOptions
    option_attributes = ("mu", "lam")

    def build(self, weight: Tensor) -> None:
        wg = self.grouped(weight.detach().float())
        s = wg.abs().amax(dim=1).clamp_min(TINY)
        v = torch.linspace(-1.0, 1.0, self.levels)
        grid = expand(v, self.mu)
        self.register_buffer("centroids", (s[:, None] * grid[None, :]).to(weight.dtype))

    def forward(self, w: Tensor) -> Tensor:
        if self.is_converted:
            return self.hard(w)
        return w.view_as(w)  # identity, but a new tensor: prepare's hooks never re-register the Parameter

    def penalty(self, w: Tensor) -> Tensor:
        """Per-weight MRACos term (shape ``[G, N/G]``), before ``lam`` and the sum."""
        wg = self.grouped(w)
        t, _ = _region_t(wg, self.centroids.to(wg.dtype))
        return _penalty_of_t(t)

    def regularization(self, w: Tensor) -> Tensor:
        """``lam * sum(penalty)``: per-weight strength ``lam`` (module docstring); the hand-written
        backward keeps only ``w``, the centroids and one byte per weight."""
        wg = self.grouped(w)
        return self.lam * _SumPenalty.apply(wg, self.centroids.to(wg.dtype))

    @torch.no_grad()
    def hardness(self, w: Tensor) -> float:
        """Closeness to the grid: ``1 - mean penalty`` clipped to [0, 1] (1 = all on centroids)."""
        return float((1.0 - self.penalty(w).clamp(max=1.0).mean()).clamp(0.0, 1.0))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mu={self.mu}, lam={self.lam}"

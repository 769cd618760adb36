"""Uniform symmetric fake quantization with a straight-through estimator (the "8-bit QAT" baseline).

The paper's memory and latency gains are measured against 8-bit QAT: that baseline is this
method with ``bits=8`` and ``granularity="channel"`` (one step per output channel). The
granularity is taken as the config gives it (the contract's default is ``"tensor"``), so a
config for the baseline must say ``channel`` explicitly.

Grid: integer levels ``-2**(b-1) .. 2**(b-1) - 1`` times a per-group ``step``; 1 bit uses
``{-step, +step}``. Without ``lsq`` the step follows the current weights (``max|w| / qmax``;
``mean|w|`` at 1 bit), as a min/max weight observer does. With ``lsq=True`` the step is a
parameter trained as in LSQ (Esser et al., ICLR 2020): gradient scale ``1 / sqrt(N_g * Qp)``
with ``N_g`` the weights of the group and ``Qp = 2**(b-1) - 1`` the top level (``Qn = -2**(b-1)``;
at 2 bits the grid is {-2, -1, 0, 1}, ``Qp = 1``; at 1 bit ``Qp`` is taken as 1).

LSQ step initialisation (option ``init``, used with ``lsq=True``): ``"mse"`` (default) picks per
group the step among ``max|w| / Qp * a``, ``a`` in 100 points of (0, 1], with the least squared
rounding error, so 2-3 bit grids do not start with most weights on 0 (min/max at 2 bits puts
the step at ``max|w|``); ``"lsq"`` is the paper's ``2 mean|w| / sqrt(Qp)``; ``"max"`` is the
observer's ``max|w| / Qp``.

Gradients (b >= 2): ``dq/dw = 1`` inside the clamp range and 0 outside; with LSQ
``dq/dstep = round(w/step) - w/step`` inside and the clamped level outside. At 1 bit
``dq/dw = 1`` everywhere (the step is scaled to the mean, so a clamp would stop most weights)
and ``dq/dstep = sign(w)``. The forward value is exactly ``level * step``, bit for bit the
value :meth:`hard` gathers from the codebook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from subbit.quant.base import WeightQuantizer
from subbit.quant.baselines._common import (
    TINY,
    int_levels,
    level_index,
    max_step,
    qrange,
    round_to_grid,
)
from subbit.quant.options import MethodOptions
from subbit.quant.registry import register_method


INITS = ("mse", "lsq", "max")
MSE_POINTS = 100


@dataclass(frozen=True)
class UniformOptions(MethodOptions):
    """Options of uniform QAT (``lsq=False``: min/max observer) and LSQ (``lsq=True``): ``init``
    is the LSQ step initialisation ("mse", "lsq", "max"; module docstring)."""

    method = "uniform"
    lsq: bool = False
    init: str = "mse"

    def __post_init__(self) -> None:
        self._bool("lsq")
        self._choice("init", INITS)


LSQOptions = UniformOptions  # LSQ is uniform QAT with a learned step: the same option type


@torch.no_grad()
def initial_step(wg: Tensor, bits: int, how: str) -> Tensor:
    """Per-group LSQ step ``[G]`` for a grouped weight ``[G, N]`` (see the module docstring)."""
    if how == "max" or bits == 1:  # 1 bit: mean|w| is already the least-squares scale of sign(w)
        return max_step(wg, bits)
    qp = qrange(bits)[1]
    if how == "lsq":
        return (2.0 * wg.abs().mean(dim=1) / math.sqrt(qp)).clamp_min(TINY)
    top = max_step(wg, bits)
    best, best_err = top.clone(), torch.full_like(top, float("inf"))
    for a in torch.linspace(1.0 / MSE_POINTS, 1.0, MSE_POINTS).tolist():
        step = top * a
        err = (round_to_grid(wg, step, bits) * step[:, None] - wg).square_().sum(dim=1)
        better = err < best_err
        best = torch.where(better, step, best)
        best_err = torch.where(better, err, best_err)
    return best


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by ``scale`` (LSQ's step gradient)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None


@register_method("uniform")
class UniformQuantizer(WeightQuantizer):
    """Symmetric uniform fake quantization with STE; options ``lsq`` (bool, default False) and
    ``init`` (LSQ step init: "mse" default, "lsq", "max")."""

    Options = UniformOptions
    option_attributes = ("lsq", "init")

    def build(self, weight: Tensor) -> None:
        bits = self.bits
        self.register_buffer("levels_", int_levels(bits).to(weight.dtype))
        if self.lsq:
            init = initial_step(self.grouped(weight.detach()), bits, self.init)
            self.step = nn.Parameter(init.clone())
            n = weight.numel() // self.num_groups
            self._grad_scale = 1.0 / math.sqrt(n * max(qrange(bits)[1], 1.0))

    def current_step(self, w: Tensor) -> Tensor:
        """Per-group step ``[G]``: the learned one (LSQ, kept positive) or the observer's."""
        if self.lsq:
            return self.step.abs().clamp_min(TINY)
        return max_step(self.grouped(w), self.bits)

    def forward(self, w: Tensor) -> Tensor:
        wg = self.grouped(w)
        step = self.current_step(w)
        if self.lsq:
            step = _ScaleGrad.apply(step, self._grad_scale)
        level = round_to_grid(wg, step.detach(), self.bits)
        s = step[:, None]
        if self.bits == 1:
            # value = level * s exactly; d/dw = 1, d/ds = level
            q = level * s + (wg - wg.detach())
        else:
            lo, hi = qrange(self.bits)
            x = (wg / s).clamp(lo, hi)
            # value = level * s exactly (x - x.detach() is 0); gradients as documented above
            q = level * s + (x - x.detach()) * s.detach()
        return q.reshape(w.shape)

    @torch.no_grad()
    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        step = self.current_step(w).detach()
        level = round_to_grid(self.grouped(w), step, self.bits)
        idx = level_index(level, self.bits).reshape(w.shape)
        codebook = step[:, None] * self.levels_[None, :]
        return idx, codebook

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lsq={self.lsq}" + (f", init={self.init}" if self.lsq else "")

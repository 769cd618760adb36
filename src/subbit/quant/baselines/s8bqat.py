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
the next "valley" of a periodic sine. Returned as ``lam * mean`` over the tensor's weights.

Defaults: ``mu = 5`` (GQ's default, so both methods start from the same grid) and ``lam = 0.1``
(the term is in [0, 1] per weight; sum over layers is what the loop adds to the task loss).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from subbit.quant.base import WeightQuantizer
from subbit.quant.baselines._common import TINY, merge_options, nearest_index, positive_float
from subbit.quant.mulaw import expand
from subbit.quant.registry import register_method

DEFAULTS = {"mu": 5.0, "lam": 0.1}


@register_method("s8bqat")
class S8BQATQuantizer(WeightQuantizer):
    """Fixed mu-law grid, MRACos regularizer; options ``mu`` (>= 0) and ``lam`` (> 0)."""

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validate ``options``; return them completed with defaults (ValueError names the option)."""
        opts = merge_options("s8bqat", options, DEFAULTS)
        mu = opts["mu"]
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not 0 <= mu < float("inf"):
            raise ValueError(f"s8bqat: option 'mu' must be a finite number >= 0, got {mu!r}")
        opts["mu"] = float(mu)
        opts["lam"] = positive_float("s8bqat", "lam", opts["lam"])
        return opts

    def __init__(self, weight: Tensor, bits: int, granularity: str = "tensor", **options: Any) -> None:
        super().__init__(weight, bits, granularity)
        opts = self.check_options(options)
        self.mu: float = opts["mu"]
        self.lam: float = opts["lam"]
        wg = self.grouped(weight.detach().float())
        s = wg.abs().amax(dim=1).clamp_min(TINY)
        v = torch.linspace(-1.0, 1.0, self.levels)
        grid = expand(v, self.mu)
        self.register_buffer("centroids", (s[:, None] * grid[None, :]).to(weight.dtype))

    def forward(self, w: Tensor) -> Tensor:
        if bool(self.converted):
            return self.hard(w)
        return w.view_as(w)  # identity, but a new tensor: prepare's hooks never re-register the Parameter

    def penalty(self, w: Tensor) -> Tensor:
        """Per-weight MRACos term (shape ``[G, N/G]``), before ``lam`` and the mean."""
        wg = self.grouped(w)
        c = self.centroids.to(wg.dtype)
        k = c.shape[1]
        pos = torch.searchsorted(c.contiguous(), wg.detach().contiguous())
        region = (pos - 1).clamp(0, k - 2)
        lo = c.gather(1, region)
        width = (c.gather(1, region + 1) - lo).clamp_min(TINY)
        t = (wg - lo) / width
        # e > 0 only beyond the outermost centroids (t is in [0, 1] inside the grid); written
        # with clamps and relus, not torch.where chains, which cost 2-3x more in backward
        e = (-t).relu() + (t - 1).relu()
        return (
            torch.sin(math.pi * t.clamp(0.0, 1.0)).abs()
            + torch.sin(math.pi * e.clamp(max=0.5))
            + (e - 0.5).relu()
        )

    def regularization(self, w: Tensor) -> Tensor:
        return self.lam * self.penalty(w).mean()

    @torch.no_grad()
    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        idx = nearest_index(self.grouped(w), self.centroids)
        return idx.reshape(w.shape), self.centroids.clone()

    @torch.no_grad()
    def hardness(self, w: Tensor) -> float:
        """Closeness to the grid: ``1 - mean penalty`` clipped to [0, 1] (1 = all on centroids)."""
        return float((1.0 - self.penalty(w).clamp(max=1.0).mean()).clamp(0.0, 1.0))

    def extra_repr(self) -> str:
        return super().extra_repr() + f", mu={self.mu}, lam={self.lam}"

"""DKM-style differentiable k-means palettization (Cho et al., ICLR 2022, arXiv 2108.12659).

Each forward: attention ``A_ij = softmax_j(-|w_i - c_j| / (s * tau))`` with a fixed ``tau``,
``iters`` soft k-means updates ``c_j = sum_i A_ij w_i / sum_i A_ij`` (autograd runs through
them), and the output ``w_i' = sum_j A_ij c_j``. No mu-law, no annealing, no regularizer.

Normalisation: distances are divided by the group's current ``s = max|w|`` (detached), so
``tau`` (default 1e-4) is a fraction of the weight range, whatever the layer's init scale.
At that default the assignment is nearly one-hot except close to the midpoints between
centroids; gradients reach the weights mostly through the centroid updates, as in DKM.

Memory (DKM's weak point is the ``N x K`` attention): the centroids are sorted in 1-D, so each
weight attends only to a ``window`` of its nearest centroids (default 4, found with
``searchsorted``; ``window >= 2**bits`` is the exact full softmax; entries outside the window
weigh below ``exp(-spacing / (s * tau))``). The k-means updates run on at most
``max_samples`` weights per tensor (spread over the groups, at least ``2**bits`` per group),
taken with a fixed stride (deterministic); only the final assignment covers every weight. The
updates, and the final assignment in blocks of ``chunk`` weights, run under activation
checkpointing (``_common.recompute``): autograd keeps their inputs only and recomputes them in
backward. Memory is
O(chunk * window) plus the output, not O(N * 2**bits); the price is one more forward pass of
the quantizer.

Centroids (raw weight units, ascending) start at the weight quantiles and persist in the
``centroids`` buffer: each training-mode forward starts from the previous result and stores the
new one. ``encode`` is nearest-centroid on that buffer.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from subbit.quant.base import WeightQuantizer
from subbit.quant.baselines._common import (
    TINY,
    fast_softmax,
    merge_options,
    nearest_index,
    positive_float,
    positive_int,
    quantile_init,
    recompute,
)
from subbit.quant.registry import register_method

DEFAULTS = {"tau": 1e-4, "iters": 3, "window": 4, "max_samples": 16384, "chunk": 65536}


@register_method("dkm")
class DKMQuantizer(WeightQuantizer):
    """Soft k-means attention; options ``tau``, ``iters``, ``window``, ``max_samples``, ``chunk``."""

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validate ``options``; return them completed with defaults (ValueError names the option)."""
        opts = merge_options("dkm", options, DEFAULTS)
        opts["tau"] = positive_float("dkm", "tau", opts["tau"])
        positive_int("dkm", "iters", opts["iters"], minimum=0)
        positive_int("dkm", "window", opts["window"], minimum=2)
        positive_int("dkm", "max_samples", opts["max_samples"], minimum=2)
        positive_int("dkm", "chunk", opts["chunk"], minimum=1)
        return opts

    def __init__(self, weight: Tensor, bits: int, granularity: str = "tensor", **options: Any) -> None:
        super().__init__(weight, bits, granularity)
        opts = self.check_options(options)
        self.tau: float = opts["tau"]
        self.iters: int = opts["iters"]
        self.window = min(opts["window"], self.levels)
        self.max_samples: int = opts["max_samples"]
        self.chunk: int = opts["chunk"]
        self.register_buffer("centroids", quantile_init(self.grouped(weight.detach()), self.levels))

    # -- pieces ------------------------------------------------------------------------
    def _window_start(self, x: Tensor, c: Tensor) -> Tensor:
        """First index ``[G, M]`` of each weight's window of nearest centroids (int32, no grad)."""
        pos = torch.searchsorted(c.detach().contiguous(), x.detach().contiguous(), out_int32=True)
        return (pos - self.window // 2).clamp_(0, c.shape[1] - self.window)

    def _attention(
        self, x: Tensor, c: Tensor, s: Tensor, start: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Windowed attention of ``x [G, M]`` over ascending ``c [G, K]``.

        Returns ``(A, cand, idx)``, all ``[G, W, M]``: window-major, so every op runs over long
        contiguous rows (a softmax over a last dim of 4 is several times slower on CPU).
        """
        g, win = c.shape[0], self.window
        if start is None:
            start = self._window_start(x, c)
        idx = start.long().unsqueeze(1) + torch.arange(win, device=x.device).view(1, win, 1)
        cand = c.gather(1, idx.reshape(g, -1)).reshape(idx.shape)
        d = (x.unsqueeze(1) - cand).abs() * (1.0 / (s * self.tau)).unsqueeze(1)
        return fast_softmax(-d, dim=1), cand, idx

    def _assign(self, x: Tensor, c: Tensor, s: Tensor, start: Tensor | None = None) -> Tensor:
        """``w' = sum_j A_ij c_j`` for a ``[G, M]`` block."""
        a, cand, _ = self._attention(x, c, s, start)
        return (a * cand).sum(dim=1)

    def _samples(self, wg: Tensor) -> Tensor:
        """At most ``max_samples`` weights per tensor (>= 2**bits per group), fixed stride."""
        g, n = wg.shape
        per_group = max(self.levels, self.max_samples // g)
        if n <= per_group:
            return wg
        return wg[:, :: -(-n // per_group)]

    def _kmeans(self, x: Tensor, c: Tensor, s: Tensor) -> Tensor:
        """``iters`` differentiable soft k-means updates; an unattended centroid stays put."""
        g, k = c.shape
        for _ in range(self.iters):
            a, _, idx = self._attention(x, c, s)
            idx = idx.reshape(g, -1)
            num = c.new_zeros(g, k).scatter_add(1, idx, (a * x.unsqueeze(1)).reshape(g, -1))
            den = c.new_zeros(g, k).scatter_add(1, idx, a.reshape(g, -1))
            c = torch.where(den > TINY, num / den.clamp_min(TINY), c)
            c = c.sort(dim=1).values
        return c

    def _scale(self, wg: Tensor) -> Tensor:
        return wg.detach().abs().amax(dim=1, keepdim=True).clamp_min(TINY)

    # -- contract ----------------------------------------------------------------------
    def forward(self, w: Tensor) -> Tensor:
        if bool(self.converted):
            return self.hard(w)
        wg = self.grouped(w)
        s = self._scale(wg)
        c0 = self.centroids.to(wg.dtype, copy=True)  # a copy: the buffer is updated below
        grad = torch.is_grad_enabled() and wg.requires_grad
        if grad:  # the iterations are recomputed in backward instead of kept
            c = recompute(self._kmeans, self._samples(wg), c0, s)
        else:
            c = self._kmeans(self._samples(wg), c0, s)
        if self.training:
            with torch.no_grad():
                self.centroids.copy_(c.detach())
        cols = max(1, self.chunk // wg.shape[0])
        if not grad or wg.shape[1] <= cols:
            return self._assign(wg, c, s).reshape(w.shape)
        # keep only the inputs of each block (and its int32 window starts, found once);
        # the attention is recomputed in backward
        start = self._window_start(wg, c)
        parts = [
            recompute(self._assign, wg[:, lo : lo + cols], c, s, start[:, lo : lo + cols])
            for lo in range(0, wg.shape[1], cols)
        ]
        return torch.cat(parts, dim=1).reshape(w.shape)

    @torch.no_grad()
    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        idx = nearest_index(self.grouped(w), self.centroids)
        return idx.reshape(w.shape), self.centroids.clone()

    @torch.no_grad()
    def hardness(self, w: Tensor) -> float:
        wg = self.grouped(w)
        a = self._attention(wg, self.centroids.to(wg.dtype), self._scale(wg))[0]
        return float(a.amax(dim=1).mean())

    def extra_repr(self) -> str:
        return super().extra_repr() + f", tau={self.tau}, iters={self.iters}, window={self.window}"

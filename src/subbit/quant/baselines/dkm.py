"""DKM-style differentiable k-means palettization (Cho et al., ICLR 2022, arXiv 2108.12659).

Each forward, on *every* weight of each group: attention ``A_ij = softmax_j(-d(w_i, c_j) / T)``
with a fixed temperature ``T``, ``iters`` soft k-means updates
``c_j = sum_i A_ij w_i / sum_i A_ij`` (autograd runs through them), and the output
``w_i' = sum_j A_ij c_j``. No mu-law, no annealing, no regularizer.

Temperature (as in DKM and Apple's implementation, coremltools ``palett_tau``): ``T = tau`` on
raw weight distances, default ``tau = 1e-4`` with ``distance="squared"``
(``d = (w - c)**2``, coremltools' ``cdist(...).square()``); ``distance="absolute"`` uses
``|w - c|``. ``tau_scale="max"`` measures distances in units of the group's current
``s = max|w|`` (detached) instead, i.e. ``T = tau * s**2`` (squared) or ``tau * s`` (absolute),
so ``tau`` no longer depends on a layer's init scale; that was this module's old behaviour.
With small raw weights the default is soft (a 4-bit grid over +-0.05 has gaps of ~6e-3, whose
square is well below 1e-4), so the soft forward differs from the deployed hard one: that is the
method as published; sweep ``tau`` to sharpen it.

Gradients reach every weight: through the attention of the final assignment and through the
centroids of every k-means update (each weight is in every update, none is subsampled).

Memory: the centroids are sorted in 1-D, so a weight attends to a ``window`` of its nearest
centroids (``searchsorted``). ``window="auto"`` (default) keeps every centroid whose logit is
within 30 of the nearest one's, from the current smallest centroid gap and ``T`` (the same bound
as GQ's ``needed_window``), so it is exact to ``exp(-30)``; an integer fixes the window
(``>= 2**bits`` is the full softmax). Every pass (each update and the final assignment) runs in
blocks of at most ``chunk`` attention entries (weights x window) under activation
checkpointing (``_common.recompute``): autograd keeps only each block's inputs (a view of the
weight, the centroids, ``T``) and rebuilds one block's graph at a time in backward. Memory is
O(N) plus O(chunk), never O(N * 2**bits); the price is a second forward pass in backward.

Centroids (raw weight units, ascending) start at the weight quantiles and persist in the
``centroids`` buffer: each training-mode forward starts from the previous result and stores the
new one. ``encode`` is nearest-centroid on that buffer.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from subbit.quant.baselines._common import (
    TINY,
    CentroidQuantizer,
    fast_softmax,
    quantile_init,
    recompute,
)
from subbit.quant.options import MethodOptions
from subbit.quant.registry import register_method

DISTANCES = ("squared", "absolute")
TAU_SCALES = ("raw", "max")


@dataclass(frozen=True)
class DKMOptions(MethodOptions):
    """DKM's options (module docstring)."""

    method = "dkm"
    tau: float = 1e-4
    distance: str = "squared"
    tau_scale: str = "raw"
    iters: int = 3
    window: int | str = "auto"
    chunk: int = 2**18

    def __post_init__(self) -> None:
        self._number("tau", positive=True)
        self._choice("distance", DISTANCES)
        self._choice("tau_scale", TAU_SCALES)
        self._int("iters", 0)
        if self.window != "auto":
            if isinstance(self.window, str):
                raise ValueError(f"dkm: option 'window' must be 'auto' or an integer >= 2, got {self.window!r}")
            self._int("window", 2)
        self._int("chunk", 1)


NEGLIGIBLE_LOGIT = 30.0  # a centroid whose logit trails the nearest by this weighs < 1e-13


@register_method("dkm")
class DKMQuantizer(CentroidQuantizer):
    """Soft k-means attention over all weights; options ``tau``, ``distance``, ``tau_scale``,
    ``iters``, ``window`` and ``chunk`` (see the module docstring)."""

    Options = DKMOptions
    option_attributes = ("tau", "distance", "tau_scale", "iters", "chunk")

    def build(self, weight: Tensor) -> None:
        window = self.options.window
        self.window: int | str = window if window == "auto" else min(int(window), self.levels)
        self.register_buffer("centroids", quantile_init(self.grouped(weight.detach()), self.levels))

    # -- pieces ------------------------------------------------------------------------
    def temperature(self, wg: Tensor) -> Tensor:
        """Per-group ``T`` ``[G, 1]`` (no gradient): ``tau``, or ``tau`` times ``max|w|`` (squared)."""
        g = wg.shape[0]
        if self.tau_scale == "raw":
            return wg.new_full((g, 1), self.tau)
        s = wg.detach().abs().amax(dim=1, keepdim=True).clamp_min(TINY)
        return self.tau * (s.square() if self.distance == "squared" else s)

    @torch.no_grad()
    def window_size(self, c: Tensor, temp: Tensor) -> int:
        """Centroids each weight attends to: fixed, or the ``auto`` bound of the module docstring.

        With ``u`` between neighbours and ``h`` centroids kept per side, an excluded centroid is
        at least ``h * gap_min`` farther than the nearest, so its logit trails by at least
        ``(h * gap_min)**2 / T`` (squared) or ``h * gap_min / T`` (absolute).
        """
        k = c.shape[1]
        if self.window != "auto":
            return int(self.window)
        if k <= 2:
            return k
        gmin = float((c[:, 1:] - c[:, :-1]).min())
        t = float(temp.max())
        if not gmin > 0:
            return k
        reach = math.sqrt(NEGLIGIBLE_LOGIT * t) if self.distance == "squared" else NEGLIGIBLE_LOGIT * t
        half = math.ceil(reach / gmin)
        return k if half >= k else min(k, 2 * max(1, half))

    def _attention(self, x: Tensor, c: Tensor, temp: Tensor, win: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """Attention of ``x [G, M]`` over ``win`` of the ascending ``c [G, K]``.

        Returns ``(A, cand, idx)``: ``A`` and ``idx`` are ``[G, W, M]`` (window-major, so every op
        runs over long contiguous rows); ``cand`` is ``[G, W, M]``, or ``[G, K, 1]`` with
        ``idx=None`` for the full softmax.
        """
        g, k = c.shape
        if win >= k:
            idx, cand = None, c.unsqueeze(-1)
        else:
            pos = torch.searchsorted(c.detach().contiguous(), x.detach().contiguous())
            start = (pos - win // 2).clamp_(0, k - win)
            idx = start.unsqueeze(1) + torch.arange(win, device=x.device).view(1, win, 1)
            cand = c.gather(1, idx.reshape(g, -1)).reshape(idx.shape)
        diff = x.unsqueeze(1) - cand
        dist = diff.square() if self.distance == "squared" else diff.abs()
        return fast_softmax(dist * (-1.0 / temp).unsqueeze(1), dim=1), cand, idx

    def _assign(self, x: Tensor, c: Tensor, temp: Tensor, *, win: int) -> Tensor:
        """``w' = sum_j A_ij c_j`` for a ``[G, M]`` block."""
        a, cand, _ = self._attention(x, c, temp, win)
        return (a * cand).sum(dim=1)

    def _stats(self, x: Tensor, c: Tensor, temp: Tensor, *, win: int) -> Tensor:
        """``[G, 2K]``: ``(sum_i A_ij w_i, sum_i A_ij)`` of one ``[G, M]`` block, side by side."""
        g, k = c.shape
        a, _, idx = self._attention(x, c, temp, win)
        if idx is None:
            num, den = (a * x.unsqueeze(1)).sum(dim=2), a.sum(dim=2)
        else:
            flat = idx.reshape(g, -1)
            num = c.new_zeros(g, k).scatter_add(1, flat, (a * x.unsqueeze(1)).reshape(g, -1))
            den = c.new_zeros(g, k).scatter_add(1, flat, a.reshape(g, -1))
        return torch.cat([num, den], dim=1)

    def _blocks(self, fn: Any, wg: Tensor, c: Tensor, temp: Tensor, win: int, grad: bool) -> list[Tensor]:
        """``fn`` on column blocks of at most ``chunk`` attention entries; checkpointed if ``grad``."""
        g, n = wg.shape
        cols = max(1, self.chunk // (g * win))
        part = functools.partial(fn, win=win)
        blocks = [wg] if n <= cols else [wg[:, lo : lo + cols] for lo in range(0, n, cols)]
        if grad:
            return [recompute(part, b, c, temp) for b in blocks]
        return [part(b, c, temp) for b in blocks]

    def _kmeans(self, wg: Tensor, c: Tensor, temp: Tensor, grad: bool) -> Tensor:
        """``iters`` differentiable soft k-means updates over all weights; an unattended centroid stays put."""
        k = c.shape[1]
        for _ in range(self.iters):
            parts = self._blocks(self._stats, wg, c, temp, self.window_size(c, temp), grad)
            stats = functools.reduce(torch.add, parts)
            num, den = stats[:, :k], stats[:, k:]
            c = torch.where(den > TINY, num / den.clamp_min(TINY), c)
            c = c.sort(dim=1).values
        return c

    # -- contract ----------------------------------------------------------------------
    def forward(self, w: Tensor) -> Tensor:
        if self.is_converted:
            return self.hard(w)
        wg = self.grouped(w)
        temp = self.temperature(wg)
        c0 = self.centroids.to(wg.dtype, copy=True)  # a copy: the buffer is updated below
        grad = torch.is_grad_enabled() and wg.requires_grad
        c = self._kmeans(wg, c0, temp, grad)
        if self.training:
            with torch.no_grad():
                self.centroids.copy_(c.detach())
        parts = self._blocks(self._assign, wg, c, temp, self.window_size(c, temp), grad)
        return torch.cat(parts, dim=1).reshape(w.shape)

    @torch.no_grad()
    def hardness(self, w: Tensor) -> float:
        wg = self.grouped(w)
        c = self.centroids.to(wg.dtype)
        temp = self.temperature(wg)
        win = self.window_size(c, temp)
        cols = max(1, self.chunk // (wg.shape[0] * win))
        total = 0.0
        for lo in range(0, wg.shape[1], cols):
            a = self._attention(wg[:, lo : lo + cols], c, temp, win)[0]
            total += float(a.amax(dim=1).sum())
        return total / wg.numel()

    def extra_repr(self) -> str:
        return super().extra_repr() + (
            f", tau={self.tau}, distance={self.distance}, tau_scale={self.tau_scale}, iters={self.iters}, "
            f"window={self.window}"
        )

"""The General Quantizer (GQ, Zhen et al., SLT 2022): learnable mu-law centroids, annealed softmax.

Per group (the whole tensor, or one output channel): a scale ``s`` (``max|W|`` at construction),
a mu-law parameter ``mu`` and ``K = 2**bits`` centroid parameters ``theta`` in the companded
domain, initialised evenly on [-1, 1], kept in [-1, 1] and sorted. The linear-domain codebook is
``c = s * expand(theta, mu)``. Training forward (see gq-method.md section 3)::

    u = compand(clamp(w / s, -1, 1), mu)
    a = softmax(-d(u, theta) / tau)            # over a window of the nearest centroids
    w_soft = s * expand(sum_k a_k theta_k, mu) # domain="companded" (default)
    w_soft = sum_k a_k c_k                     # domain="linear"

**Temperature.** Schedulers pass a *relative* temperature ``tau_rel`` (1.0 = soft, 1e-3 = one-hot
for all but weights within ~1% of a midpoint). The absolute one is scaled by the centroid spacing
in the companded domain, ``spacing = 2 / (K - 1)`` (1 bit: the current centroid gap, see
:func:`initial_centroids`), so one schedule serves every bit depth:
``tau = tau_rel * spacing**2`` for ``distance="squared"`` and ``tau = tau_rel * spacing`` for
``distance="absolute"`` (same units as the distance). ``tau_rel == 0`` selects the hard mode.

**Hard forward.** Once ``converted`` (or in hard mode, ``set_tau(0)``) the forward is exactly
``hard(w)``: the codebook gathered at ``encode(w)``'s indices. Gradients still reach the codebook
(``theta``, ``s``, ``mu``) and reach ``w`` straight through (identity) in hard mode.

**How the soft forward is computed (option ``impl``).** Three implementations of one function:
the exact window softmax (:mod:`subbit.quant.soft_window`, ``SoftAssign``: memory O(N), window
shrinking as ``tau`` falls), the tabulated function of :mod:`subbit.quant.soft_table` (values
within 1e-3 of a centroid gap, gradients within a few percent; much faster while its grid is
small), and the static window (``StaticWindow``: no host sync, no data-dependent branch, for
``torch.compile`` and accelerators). "auto" takes the static window on non-CPU devices and
while ``torch.compile`` traces, else the table while :func:`~subbit.quant.soft_table.choose_grid`
allows, else the exact window. Timings: RESULTS.md section 1.

**Host state without syncs.** Whether the quantizer is hard (``converted`` or ``tau == 0``) and
the relative ``tau`` are mirrored as Python values, re-read from the buffers only when a buffer
was written (its ``_version`` or storage changed), so a forward reads no device value to decide
its path; the soft math takes ``tau`` from the buffer as a tensor.

**Default mu = 5**, settled by measurement (RESULTS.md section 1.4: best or within 5% of best at
4 and 5 bits on Gaussian and Laplacian weights; at 2 bits a strong companding, ``mu`` 50-255,
does better: set ``options: {mu: 50}`` in a 2-bit rule).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from subbit.quant.base import WeightQuantizer
from subbit.quant.mulaw import compand, expand
from subbit.quant.options import MethodOptions
from subbit.quant.registry import register_method
from subbit.quant.soft_table import choose_grid, table_soft

# the kernel's names, importable from here as before the split
from subbit.quant.soft_window import (  # noqa: F401
    _EXACT_DTYPES,
    NEGLIGIBLE_LOGIT,
    AssignConfig,
    SoftAssign,
    StaticWindow,
    _assign,
    _windows,
    companded,
    locate,
    max_prob,
    nearest,
    needed_window,
    soft_assign,
    static_soft_assign,
    window_start,
)


def _grad_scale(x: Tensor, factor: float) -> Tensor:
    """Identity in value, gradient multiplied by ``factor`` (LSQ step-size scaling)."""
    return (x - x * factor).detach() + x * factor


def _round_int8(c: Tensor) -> Tensor:
    """Round a ``[G, K]`` codebook to a per-group int8 grid, straight-through in gradient."""
    s8 = c.detach().abs().amax(1, keepdim=True) / 127.0
    s8 = torch.where(s8 > 0, s8, torch.ones_like(s8))
    return c + (torch.round(c.detach() / s8) * s8 - c.detach())


@dataclass(frozen=True)
class GQOptions(MethodOptions):
    """GQ's options (see :class:`GeneralQuantizer` for what each does)."""

    method = "gq"
    mu: float = 5.0
    learn_mu: bool = False
    learn_scale: bool = False
    learn_centroids: bool = True
    domain: str = "companded"
    distance: str = "squared"
    symmetric: bool = False
    zero_centroid: bool = False
    straight_through: bool = False
    int8_codebook: bool = False
    window: int = 8
    chunk_size: int = 1 << 16
    impl: str = "auto"

    def __post_init__(self) -> None:
        self._bool("learn_mu", "learn_scale", "learn_centroids", "symmetric", "zero_centroid", "straight_through",
                   "int8_codebook")
        self._choice("domain", ("companded", "linear"))
        self._choice("distance", ("squared", "absolute"))
        self._choice("impl", IMPLS)
        self._number("mu")
        self._int("window", 2)
        self._int("chunk_size", 1)
        if self.symmetric and self.zero_centroid:
            raise ValueError("gq: options 'symmetric' and 'zero_centroid' exclude each other (K is even)")


IMPLS = ("auto", "table", "window", "static")


MIN_SPACING = 1e-3  # floor of the 1-bit temperature unit when the two centroids meet


def initial_centroids(x: Tensor, k: int, mu: Tensor) -> Tensor:
    """Initial companded centroids ``[G, K]`` for ``x = w / s`` ``[G, N]`` (``mu`` ``[G, 1]``).

    ``K > 2``: evenly spaced on [-1, 1] (the paper's init; the outer centroids sit at ``+-s``).
    ``K == 2`` (1 bit): that rule has no inner centroid and would start the codebook at
    ``+-max|W|``, several times the weights' scale (4-9x ``mean|W|`` on the RNN-T's recurrent
    kernels, spectral norm 4-6x fp32): once ``tau`` hardens the assignment the LSTM's recurrence
    explodes (gradient norm 1e10 then inf within 7 steps, runs/compare-small gq4-hh1). Instead
    the centroids start at ``+-mean|x|`` per group, the least-squares levels of the sign
    partition, companded; a group of zeros keeps ``+-1``. Their gap is below the nominal
    spacing 2, so 1-bit ``tau_rel`` is relative to the actual gap (``GeneralQuantizer.spacing``);
    with the nominal unit the anneal would start ~10x softer (step-1 loss 35 vs 12 on that run).
    """
    g = x.shape[0]
    if k != 2:
        return torch.linspace(-1.0, 1.0, k).repeat(g, 1)
    m = x.abs().clamp(max=1.0).mean(1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    c = compand(m, mu).clamp(max=1.0)
    return torch.cat([-c, c], 1)


@register_method("gq")
class GeneralQuantizer(WeightQuantizer):
    """GQ for one weight tensor; see the module docstring for the math, :class:`GQOptions` for
    the option types.

    Options: ``mu`` (float >= 0, default 5), ``learn_centroids`` (default True; False keeps the
    centroids at their mu-law initialisation, the fixed-centroid ablation), ``learn_mu``,
    ``learn_scale`` (LSQ gradient scaling ``1/sqrt(N_g * K)``), ``domain`` ("companded" |
    "linear"), ``distance`` ("squared" | "absolute"), ``symmetric`` (centroids mirrored around 0,
    K/2 free parameters), ``zero_centroid`` (the centroid nearest 0 is pinned at 0),
    ``straight_through`` (hard value forward, soft gradient), ``int8_codebook`` (the *hard*
    codebook, used by ``encode``, the straight-through and hard modes and after ``convert``, is
    rounded to a per-group int8 grid ``round(c / s8) * s8``, ``s8 = max|c| / 127``, as the packed
    runtime deploys it; the soft forward is not rounded, so combine it with ``straight_through``
    late in training), ``window`` (at most this many nearest centroids in the softmax, default
    ``min(K, 8)``; fewer once ``tau`` makes the rest negligible), ``chunk_size`` (weights per
    soft-assignment chunk), ``impl`` (how the soft forward is computed: "auto" (default, see the
    module docstring); "table" = the table even where it costs more than it saves, the grid
    clipped to ``MAX_GRID`` points, unless bunched centroids make its window work exceed
    ``MAX_WORK``; "window" = always the exact :class:`SoftAssign`; "static" = always the
    sync-free :class:`StaticWindow`).
    """

    Options = GQOptions
    option_attributes = ("domain", "distance", "symmetric", "zero_centroid", "straight_through", "int8_codebook",
                         "learn_scale", "learn_mu", "chunk_size", "impl")

    def build(self, weight: Tensor) -> None:
        opts = self.options
        k, g = self.levels, self.num_groups
        self.window = min(k, opts.window)

        w = self.grouped(weight.detach().float())
        s = w.abs().amax(1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        mu = torch.full((g,), opts.mu)
        if self.learn_scale:
            self.scale = nn.Parameter(s)
        else:
            self.register_buffer("scale", s)
        if self.learn_mu:
            self.mu = nn.Parameter(mu)
        else:
            self.register_buffer("mu", mu)
        init = initial_centroids(w / s.unsqueeze(1), k, mu.unsqueeze(1))
        free = init[:, k // 2 :] if self.symmetric else init
        # learn_centroids=False freezes them at the mu-law init: the ablation of GQ's central claim
        self.theta = nn.Parameter(free.contiguous(), requires_grad=opts.learn_centroids)
        self.register_buffer("tau", torch.tensor(1.0))  # relative; persistent so resumes match
        self._hard_mirror = False  # what a compiled forward reads (see is_hard)

    # -- parameters seen by the math ---------------------------------------------------
    @property
    def spacing(self) -> float:
        """Companded centroid spacing that ``tau_rel`` is relative to: ``2 / (K - 1)``, the gap
        of the evenly spaced init; for ``K == 2`` the current gap (mean over groups, at least
        ``MIN_SPACING``), since its init is data-driven (:func:`initial_centroids`)."""
        if self.levels == 2:
            return float(self._spacing_tensor())
        return 2.0 / (self.levels - 1)

    def _spacing_tensor(self) -> Tensor:
        th = self.centroids().detach()
        return (th[:, 1] - th[:, 0]).mean().clamp(min=MIN_SPACING)

    @property
    def abs_tau(self) -> float:
        """Absolute softmax temperature (see the module docstring)."""
        unit = self.spacing**2 if self.distance == "squared" else self.spacing
        return self._host_value("tau") * unit

    def abs_tau_tensor(self) -> Tensor:
        """:attr:`abs_tau` as a 0-d tensor on the quantizer's device, computed without a host sync."""
        unit: Tensor | float = self._spacing_tensor() if self.levels == 2 else 2.0 / (self.levels - 1)
        return self.tau * (unit * unit if self.distance == "squared" else unit)

    @property
    def is_hard(self) -> bool:
        """``converted`` or ``tau == 0``, from the host mirrors (no device read per call). While
        ``torch.compile`` traces, the last eager value (kept current by ``set_tau``, ``convert``
        and ``load_state_dict``) so the graph guards on one bool, not on ``tau``."""
        if torch.compiler.is_compiling():
            return self._hard_mirror
        self._hard_mirror = self.is_converted or self._host_value("tau") == 0.0
        return self._hard_mirror

    def centroids(self) -> Tensor:
        """Effective ``[G, K]`` companded centroids: mirrored, sorted, zero pinned (differentiable)."""
        theta = torch.cat([-self.theta.flip(1), self.theta], 1) if self.symmetric else self.theta
        theta = theta.sort(dim=1).values
        if self.zero_centroid:
            pin = torch.zeros_like(theta, dtype=torch.bool)
            pin.scatter_(1, theta.detach().abs().argmin(1, keepdim=True), True)
            theta = theta.masked_fill(pin, 0.0)
        return theta

    def _scale(self) -> Tensor:
        s = self.scale
        if self.learn_scale:
            n = self.shape_numel // self.num_groups
            s = _grad_scale(s, 1.0 / math.sqrt(n * self.levels))
        return s

    @property
    def shape_numel(self) -> int:
        return math.prod(self.shape)

    def codebook(self) -> Tensor:
        """Linear-domain ``[G, K]`` codebook ``s * expand(theta, mu)`` (int8-rounded if configured)."""
        c = self._scale().unsqueeze(1) * expand(self.centroids(), self.mu.unsqueeze(1))
        return _round_int8(c) if self.int8_codebook else c

    def _cfg(self, theta: Tensor) -> AssignConfig:
        chunk = max(1, self.chunk_size // self.num_groups)
        th = theta.detach()
        tau = self.abs_tau
        window = needed_window(th, tau, self.window, self.distance)
        # widest distance inside a window bounds the most negative logit
        span = 2.0 if window >= self.levels else min(2.0, (window - 1) * float((th[:, 1:] - th[:, :-1]).max()))
        worst = (span * span if self.distance == "squared" else span) / tau if tau > 0 else math.inf
        return AssignConfig(tau, window, self.distance, self.domain, chunk, guard=worst > 80.0)

    def uses_static(self, w: Tensor) -> bool:
        """Whether the soft forward of ``w`` takes the sync-free :class:`StaticWindow`."""
        if self.impl == "static":
            return True
        return self.impl == "auto" and (w.device.type != "cpu" or torch.compiler.is_compiling())

    def grid_size(self, theta: Tensor | None = None) -> int | None:
        """Points of the tabulated soft function the next soft forward uses; ``None`` = a window path."""
        if self.impl in ("window", "static") or self.is_hard:
            return None
        th = (self.centroids() if theta is None else theta).detach()
        if self.impl == "table":
            return choose_grid(th, self.abs_tau, self.shape_numel, self.distance, self.mu.detach(),
                               fraction=math.inf, clip=True)
        return choose_grid(th, self.abs_tau, self.shape_numel, self.distance, self.mu.detach())

    def _check(self, w: Tensor) -> None:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"gq: weight shape {tuple(w.shape)} does not match the quantizer's {self.shape}")

    # -- contract ----------------------------------------------------------------------
    def forward(self, w: Tensor) -> Tensor:
        self._check(w)
        if w.dtype not in _EXACT_DTYPES:
            # bf16 / fp16 weights: the assignment runs in float32 (bins, window starts and the
            # table's cells do not fit a 7-8 bit codebook in 8-11 mantissa bits); the result and
            # the gradient to ``w`` come back in ``w``'s dtype
            return self.forward(w.float()).to(w.dtype)
        if self.is_hard:
            idx, _ = self.encode(w)
            hard = self.codebook().gather(1, idx.reshape(self.num_groups, -1)).reshape(w.shape).to(w.dtype)
            if self.is_converted:
                return hard
            return hard + (w - w.detach())  # exact hard value, identity gradient to w
        wg = self.grouped(w)
        theta = self.centroids()
        s, mu = self._scale().unsqueeze(1).to(w.dtype), self.mu.unsqueeze(1).to(w.dtype)
        if self.uses_static(w):
            soft = static_soft_assign(wg, s, mu, theta.to(w.dtype), self.abs_tau_tensor(), self.window,
                                      self.distance, self.domain)
        else:
            size = self.grid_size(theta)
            if size is None:
                soft = soft_assign(wg, s, mu, theta.to(w.dtype), self._cfg(theta))
            else:
                soft = table_soft(wg, s, mu, theta.to(w.dtype), self.abs_tau, self.distance, self.domain, size)
        soft = soft.reshape(w.shape)
        if self.straight_through:
            return self.hard(w) + (soft - soft.detach())
        return soft

    @torch.no_grad()
    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        self._check(w)
        wg = self.grouped(w.detach().float())
        u = companded(wg, self.scale.float().unsqueeze(1), self.mu.float().unsqueeze(1))
        idx = nearest(u, self.centroids().float())
        return idx.reshape(w.shape), self.codebook().detach().float()

    def set_tau(self, tau: float) -> None:
        if not math.isfinite(tau) or tau < 0:
            raise ValueError(f"gq: tau must be a finite number >= 0, got {tau!r}")
        self.tau.fill_(float(tau))
        self._remember("tau", float(tau))
        self._hard_mirror = self.is_converted or self._host_value("tau") == 0.0

    def mark_converted(self) -> None:
        super().mark_converted()
        self._hard_mirror = True

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._hard_mirror = self.is_converted or self._host_value("tau") == 0.0

    @torch.no_grad()
    def hardness(self, w: Tensor) -> float:
        self._check(w)
        if self.is_hard:
            return 1.0
        wg = self.grouped(w.detach().float())
        theta = self.centroids().float()
        total = max_prob(wg, self.scale.float().unsqueeze(1), self.mu.float().unsqueeze(1), theta, self._cfg(theta))
        return float(total) / w.numel()

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project parameters back onto their domain; call after each optimizer step."""
        lo = 0.0 if self.symmetric else -1.0
        self.theta.clamp_(lo, 1.0)
        self.theta.copy_(self.theta.sort(dim=1).values)
        if self.zero_centroid:
            self.theta.scatter_(1, self.theta.abs().argmin(1, keepdim=True), 0.0)
        if self.learn_mu:
            self.mu.clamp_(min=0.0)
        if self.learn_scale:
            self.scale.clamp_(min=1e-12)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, tau={float(self.tau):.3g}, mu={self.options.mu}, window={self.window}, "
                f"impl={self.impl}")

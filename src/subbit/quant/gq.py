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

**Memory and speed.** The soft assignment never materialises ``N * K`` values:
:class:`SoftAssign` works on a window of the ``W`` nearest centroids (located by :func:`locate`,
an exact binned replacement for ``searchsorted``, 4x faster here), in chunks of 64k weights; it
saves only its inputs plus one uint8 window start per weight, and recomputes each chunk in
backward with closed-form softmax gradients. The window shrinks as ``tau`` falls
(:func:`needed_window`: it keeps every centroid within ``exp(-30)`` of the nearest, down to 2),
and logits below -80 are zeroed before ``exp`` (denormals cost 2-3x). Measured on the shared
2-core Xeon, 1 thread (``tests/quant/test_gq.py`` memory test; timings +-40% under load):

* peak RSS growth for an 8-bit ``Linear(1024, 1024)``, its Adam state and one fwd+bwd+Adam step:
  36.0 MB vs 28.7 MB fp32 (x1.25) with ``MALLOC_MMAP_THRESHOLD_=65536``; 54 MB vs 29 MB (x1.9)
  with glibc's adaptive threshold, which keeps freed chunk buffers in the heap;
* CPU time of the quantizer per 1M weights, fwd + bwd: 0.3-0.5 s soft (``tau_rel`` 1),
  0.2-0.3 s near the end of the anneal (``tau_rel`` 1e-3), against ~4 ms for the fp32 layer's
  own fwd+bwd at batch 16: the overhead is per weight, independent of batch and sequence length.

**Tabulated soft function (option ``impl``, default "auto").** For one group the soft forward
depends on ``x = w / s`` only, so :mod:`subbit.quant.soft_table` tabulates ``T(x)`` on a uniform
grid (``M`` points from ``tau``, the centroid gaps and ``mu``: 8 cells per transition width;
closed-form gradients to ``theta``/``mu``) and interpolates it linearly per weight: ~10 flat
passes per weight plus O(G M W) grid work, no ``N * K`` anywhere. Versus the exact softmax:
values within 1e-3 of a centroid gap, gradients to ``w`` within 6% and to ``theta``/``mu``
within 1% (relative L2; tests/quant/test_soft_table.py). "auto" takes it while the policy
allows (``M <= 2**18``, ``G M <= N / 4``): early and mid anneal; the end of the anneal and small
tensors use the exact window. CPU ms per 1M weights, fwd + bwd, one group, 1 thread, median of
9 on the shared 2-core Xeon (+-30%; ``python benchmarks/gq_soft_speed.py``; an fp32
64x1024x1024 matmul fwd + bwd takes 3.5 ms):

| bits | tau_rel 1: M / window / table | tau_rel 0.1 | tau_rel 0.01 |
|---|---|---|---|
| 1 | 257 / 119 / 14.5 ms (8x) | 448 / 123 / 11.0 (11x) | 4466 / 131 / 11.5 (11x) |
| 2 | 257 / 152 / 11.2 (14x) | 1341 / 179 / 11.2 (16x) | 13396 / 162 / 13.3 (12x) |
| 4 | 671 / 242 / 11.3 (21x) | 6699 / 184 / 10.6 (17x) | 66975 / 163 / 17.3 (9x) |
| 5 | 1386 / 257 / 14.2 (18x) | 13843 / 209 / 23.2 (9x) | 138413 / 244 / 24.7 (10x) |
| 8 | 11387 / 269 / 16.3 (17x) | 113854 / 192 / 27.6 (7x) | window (M > 2**18) |

``benchmarks/qat_overhead.py --quick`` (tau_rel 0.1; LSTM-4x512 / Transformer-4x256, batch 8 x
100 frames): GQ step time at 1-5 bits went from 3.1-4.9x / 3.0-4.7x fp32 (window) to
1.05-1.46x / 1.45-1.82x (table; wall time of 3 steps: +-30% on the shared machine, the fp32
twins read 0.83-0.92x). 8-bit LSTM layers (1M weights) take the table too (training memory
1.05x -> 1.5x fp32, peak RSS 1.35x: the saved cell and position, 8 bytes per weight, and the
grid); the 8-bit Transformer's (<= 262k weights) keep the window.

**Default mu = 5**, settled by measurement (``python examples/quant_toy.py --mu-sweep``): RMSE
of converted weights relative to their std, after 300 Adam steps (lr 1e-2) of GQ on a
weight-reconstruction loss (4096 i.i.d. weights, per-tensor, exp anneal 1 -> 1e-3 over 85% of
the steps, mean of 2 seeds; bold = best in the row):

| weights | mu=0 | mu=1 | mu=5 | mu=10 | mu=50 | mu=255 |
|---|---|---|---|---|---|---|
| gauss 2b | 0.5899 | 0.5606 | 0.4942 | 0.4570 | 0.3875 | **0.3831** |
| gauss 4b | 0.1395 | 0.1277 | **0.1137** | 0.1228 | 0.1343 | 0.1607 |
| gauss 5b | 0.0772 | 0.0664 | **0.0558** | 0.0591 | 0.0839 | 0.1017 |
| laplace 2b | 0.7016 | 0.6751 | 0.6143 | 0.5940 | 0.5300 | **0.4805** |
| laplace 4b | 0.2052 | 0.1610 | 0.1519 | **0.1446** | 0.1536 | 0.1711 |
| laplace 5b | 0.1018 | 0.0902 | **0.0692** | 0.0722 | 0.0825 | 0.1030 |

mu = 5 is best or within 5% of best at 4 and 5 bits for both distributions. At 2 bits the
max-|W| scale puts the outer centroids far out and a strong companding (mu 50-255) pulls them in:
set ``options: {mu: 50}`` in a 2-bit rule. (Lloyd-Max optima for a Gaussian, for reference:
0.34 / 0.098 / 0.050 at 2 / 4 / 5 bits.) 9.7 min wall, 1.9 min CPU on the shared machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from subbit.quant.base import WeightQuantizer
from subbit.quant.mulaw import compand, expand
from subbit.quant.registry import register_method
from subbit.quant.soft_table import choose_grid, table_soft


@dataclass(frozen=True)
class AssignConfig:
    """Static knobs of one soft-assignment call (hashable, kept on the autograd context)."""

    tau: float  # absolute temperature
    window: int  # number of nearest centroids in the softmax (K = exact)
    distance: str  # "squared" | "absolute"
    domain: str  # "companded" | "linear"
    chunk: int  # weights (columns of the [G, M] view) per chunk
    guard: bool = True  # some logit may fall below -80: zero those exactly, avoiding denormals


def companded(w: Tensor, s: Tensor, mu: Tensor) -> Tensor:
    """``u = F_mu(clamp(w / s, -1, 1))`` for a ``[G, M]`` view with per-group ``s``/``mu`` ``[G, 1]``."""
    return compand(torch.clamp(w / s, -1.0, 1.0), mu)


_EXACT_DTYPES = (torch.float32, torch.float64)  # dtypes the quantizer computes in; others go via float32


def locate(u: Tensor, theta: Tensor) -> Tensor:
    """``torch.searchsorted(theta, u)`` (count of centroids below each ``u``) for ``u`` in [-1, 1].

    Binary search costs ~100 ns per weight on this CPU, more than the rest of the soft assignment.
    Instead both ``u`` and ``theta`` are binned with the *same* float formula onto ``B = 4K`` bins
    of [-1, 1]: centroids in lower bins are below ``u``, those in higher bins above it, so only
    centroids sharing ``u``'s bin need a comparison, one vectorised step per centroid in the
    fullest bin (usually 1). Exact; falls back to ``searchsorted`` if centroids bunch up.
    """
    if u.dtype not in _EXACT_DTYPES or theta.dtype != u.dtype:
        # bf16/fp16 cannot hold the bin numbers of 7-8 bits (4K - 1 = 1023) nor order u against
        # theta finely enough: bin and compare in float32 (float64 stays float64)
        dt = torch.float64 if torch.float64 in (u.dtype, theta.dtype) else torch.float32
        u, theta = u.to(dt), theta.to(dt)
    g, k = theta.shape
    if u.numel() < 8192:  # small tensors: fewer ops wins over fewer cycles per weight
        return torch.searchsorted(theta.contiguous(), u.contiguous())
    nbins = 4 * k

    def binned(x: Tensor) -> Tensor:
        return (x + 1.0).mul_(nbins / 2).floor_().clamp_(0, nbins - 1).long()

    counts = torch.zeros(g, nbins, dtype=torch.long, device=theta.device)
    counts.scatter_add_(1, binned(theta), torch.ones_like(theta, dtype=torch.long))
    steps = int(counts.max())
    if steps > 4:
        return torch.searchsorted(theta.contiguous(), u.contiguous())
    below = torch.cumsum(counts, 1).sub_(counts)  # centroids in lower bins
    bu = binned(u)
    if g > 1:
        bu += torch.arange(g, device=u.device).mul_(nbins).unsqueeze(1)
    p = below.reshape(-1)[bu]
    if steps:
        padded = torch.cat([theta, theta.new_full((g, 1), float("inf"))], 1).reshape(-1)
        offset = torch.arange(g, device=u.device).mul_(k + 1).unsqueeze(1) if g > 1 else 0
        for _ in range(steps):
            p += padded[p + offset] < u
    return p


def nearest(u: Tensor, theta: Tensor) -> Tensor:
    """Index of the nearest centroid of each ``u`` (``theta`` sorted per row); ties go low."""
    k = theta.shape[1]
    if u.dtype not in _EXACT_DTYPES or theta.dtype != u.dtype:
        dt = torch.float64 if torch.float64 in (u.dtype, theta.dtype) else torch.float32
        u, theta = u.to(dt), theta.to(dt)
    p = locate(u, theta).clamp_(1, k - 1)
    left = theta.gather(1, p - 1)
    right = theta.gather(1, p)
    return torch.where(u - left <= right - u, p - 1, p)


NEGLIGIBLE_LOGIT = 30.0  # exp(-30) ~ 1e-13: a centroid this far behind the nearest adds nothing


def needed_window(theta: Tensor, tau: float, window: int, distance: str) -> int:
    """The smallest even window (<= ``window``) outside which every centroid's softmax weight is
    below ``exp(-30)`` of the nearest one's, from the current smallest centroid gap and ``tau``.

    With ``u`` between ``theta[p-1]`` and ``theta[p]`` (distances ``a``, ``b``), the window keeps
    ``h`` centroids per side. An excluded one, e.g. ``theta[p+h]``, is ``b + G`` away with
    ``G >= h * gap_min``, while the nearest is ``<= b`` away, so its logit trails by at least
    ``((b + G)^2 - b^2) / tau >= (h * gap_min)^2 / tau`` (``h * gap_min / tau`` for the absolute
    distance). Late in the anneal this shrinks the window to 2: a quarter of the default's work.
    """
    k = theta.shape[1]
    window = min(window, k)
    if k <= 2 or tau <= 0:
        return window
    gmin = float((theta[:, 1:] - theta[:, :-1]).min())
    if gmin <= 0:
        return window
    reach = math.sqrt(NEGLIGIBLE_LOGIT * tau) if distance == "squared" else NEGLIGIBLE_LOGIT * tau
    return min(window, 2 * max(1, math.ceil(reach / gmin)))


def window_start(u: Tensor, theta: Tensor, window: int) -> Tensor:
    """First index of a window of ``window`` centroids around each ``u`` (the nearest is inside).

    Returned as uint8 (K <= 256) so the forward can keep it for backward at 1 byte per weight.
    """
    k = theta.shape[1]
    if window >= k:
        return torch.zeros(u.shape, dtype=torch.uint8, device=u.device)
    return (locate(u, theta) - window // 2).clamp_(0, k - window).to(torch.uint8)


def _rows(start: Tensor, k: int, window: int) -> Tensor:
    """Flat row index into the ``[G * (K - W + 1), W]`` table of all windows (see :func:`_windows`)."""
    g = start.shape[0]
    base = torch.arange(g, device=start.device).mul_(k - window + 1).unsqueeze(1)
    return start.long().add_(base).reshape(-1)


def _windows(table: Tensor, rows: Tensor, window: int) -> Tensor:
    """``[G, C, W]`` window of ``table`` ``[G, K]`` for each weight: one row gather per weight,
    cheaper than gathering ``C * W`` scattered entries."""
    g = table.shape[0]
    all_windows = table.unfold(1, window, 1).reshape(-1, window)
    return all_windows.index_select(0, rows).reshape(g, -1, window)


def _fold_windows(grad_rows: Tensor, k: int) -> Tensor:
    """Adjoint of :func:`_windows`'s table: ``[G * (K - W + 1), W]`` window grads -> ``[G, K]``."""
    window = grad_rows.shape[1]
    n = k - window + 1
    g3 = grad_rows.reshape(-1, n, window)
    out = grad_rows.new_zeros(g3.shape[0], k)
    for j in range(window):
        out[:, j : j + n] += g3[:, :, j]
    return out


def _assign(u: Tensor, theta: Tensor, rows: Tensor, cfg: AssignConfig) -> tuple[Tensor, Tensor]:
    """Window softmax: ``(a [G, C, W], u - theta_window)``; no autograd (backward is analytic)."""
    diff = u.unsqueeze(-1) - _windows(theta, rows, cfg.window)
    logits = diff.square() if cfg.distance == "squared" else diff.abs()
    logits.mul_(-1.0 / cfg.tau)
    logits.sub_(logits.amax(-1, keepdim=True))
    # exp of logits below -87 gives denormals, 10-50x slower on x86 (all of them late in the
    # anneal); they are zero in the result anyway, so compute exp(-80) and zero them exactly
    if cfg.guard:
        negligible = logits < -80.0
        logits.clamp_(min=-80.0).exp_().masked_fill_(negligible, 0.0)
    else:
        logits.exp_()
    logits.div_(logits.sum(-1, keepdim=True))
    return logits, diff


def _values(theta: Tensor, s: Tensor, mu: Tensor, cfg: AssignConfig) -> Tensor:
    """What the softmax averages: companded centroids, or the linear codebook."""
    return theta if cfg.domain == "companded" else s * expand(theta, mu)


def _output(y: Tensor, s: Tensor, mu: Tensor, cfg: AssignConfig) -> Tensor:
    return s * expand(y, mu) if cfg.domain == "companded" else y


@torch.no_grad()
def max_prob(w: Tensor, s: Tensor, mu: Tensor, theta: Tensor, cfg: AssignConfig) -> Tensor:
    """Sum over weights of the largest assignment probability (for ``hardness``)."""
    total = w.new_zeros(())
    for lo in range(0, w.shape[1], cfg.chunk):
        u = companded(w[:, lo : lo + cfg.chunk], s, mu)
        rows = _rows(window_start(u, theta, cfg.window), theta.shape[1], cfg.window)
        a, _ = _assign(u, theta, rows, cfg)
        total += a.amax(-1).sum()
    return total


class SoftAssign(torch.autograd.Function):
    """``w [G, M], s [G, 1], mu [G, 1], theta [G, K] -> w_soft [G, M]``, chunked.

    Saves its inputs plus the window start of each weight (uint8) and recomputes the rest per
    chunk in backward. With ``y = sum_k a_k V_k`` (``V`` = theta or the linear codebook) and
    ``l_k = -d(u, theta_k) / tau``, the softmax gradients are closed-form:
    ``dy/du = sum_k r_k`` and ``dy/dtheta_k = -r_k`` (through ``d``) with
    ``r_k = a_k (V_k - y) dl_k/du``, and ``dy/dV_k = a_k``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, w: Tensor, s: Tensor, mu: Tensor, theta: Tensor, cfg: AssignConfig
    ) -> Tensor:
        out = torch.empty_like(w)
        starts = torch.empty(w.shape, dtype=torch.uint8, device=w.device)
        values = _values(theta, s, mu, cfg)
        for lo in range(0, w.shape[1], cfg.chunk):
            sl = slice(lo, lo + cfg.chunk)
            u = companded(w[:, sl], s, mu)
            starts[:, sl] = start = window_start(u, theta, cfg.window)
            rows = _rows(start, theta.shape[1], cfg.window)
            a, _ = _assign(u, theta, rows, cfg)
            # sum a_k V_k (not u - sum a_k (u - theta_k)): a one-hot ``a`` then gives exactly theta_k,
            # so at the end of the anneal the soft forward equals the hard forward bit for bit
            y = a.mul_(_windows(values, rows, cfg.window)).sum(-1)
            out[:, sl] = _output(y, s, mu, cfg)
        ctx.save_for_backward(w, s, mu, theta, starts)
        ctx.cfg = cfg
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        w, s, mu, theta, starts = ctx.saved_tensors
        cfg: AssignConfig = ctx.cfg
        need_w, need_s, need_mu, need_theta = ctx.needs_input_grad[:4]
        gw = torch.empty_like(w) if need_w else None
        g_s, g_mu = torch.zeros_like(s), torch.zeros_like(mu)
        k = theta.shape[1]
        g_theta_w = theta.new_zeros(theta.shape[0] * (k - cfg.window + 1), cfg.window)
        g_values_w = torch.zeros_like(g_theta_w) if cfg.domain == "linear" else g_theta_w
        values = _values(theta, s, mu, cfg)
        for lo in range(0, w.shape[1], cfg.chunk):
            sl = slice(lo, lo + cfg.chunk)
            rows = _rows(starts[:, sl], theta.shape[1], cfg.window)
            with torch.enable_grad():
                wl = w[:, sl].detach().requires_grad_(need_w)
                sv, mv = s.detach().requires_grad_(need_s), mu.detach().requires_grad_(need_mu)
                u = companded(wl, sv, mv)
            ud = u.detach()
            a, diff = _assign(ud, theta, rows, cfg)
            if cfg.domain == "companded":  # V_k - y = (u - y) - (u - theta_k)
                y = ud - (a * diff).sum(-1)
                vw = (ud - y).unsqueeze(-1) - diff
            else:
                vw = _windows(values, rows, cfg.window)
                y = (a * vw).sum(-1)
                vw.sub_(y.unsqueeze(-1))
            gy = grad[:, sl]
            if cfg.domain == "companded":
                with torch.enable_grad():
                    yl = y.requires_grad_()
                    out = _output(yl, sv, mv, cfg)
                    leaves = [yl] + [t for t, n in ((sv, need_s), (mv, need_mu)) if n]
                    grads = torch.autograd.grad(out, leaves, gy)
                gy = grads[0]
                for acc, gr in zip([t for t, n in ((g_s, need_s), (g_mu, need_mu)) if n], grads[1:]):
                    acc += gr
            dl = diff.mul_(-2.0 / cfg.tau) if cfg.distance == "squared" else diff.sign_().mul_(-1.0 / cfg.tau)
            r = vw.mul_(a).mul_(dl)  # a_k (V_k - y) dl_k/du
            gu = gy * r.sum(-1)
            if cfg.domain == "companded":  # theta gets both: a_k (as V) and -r_k (through d)
                g_theta_w.index_add_(0, rows, a.sub_(r).mul_(gy.unsqueeze(-1)).reshape(-1, cfg.window))
            else:
                g_theta_w.index_add_(0, rows, r.mul_(gy.unsqueeze(-1).neg()).reshape(-1, cfg.window))
                g_values_w.index_add_(0, rows, a.mul_(gy.unsqueeze(-1)).reshape(-1, cfg.window))
            leaves = [t for t, n in ((wl, need_w), (sv, need_s), (mv, need_mu)) if n]
            if leaves:
                grads = iter(torch.autograd.grad(u, leaves, gu))
                if need_w:
                    gw[:, sl] = next(grads)  # type: ignore[index]
                if need_s:
                    g_s += next(grads)
                if need_mu:
                    g_mu += next(grads)
        g_theta = _fold_windows(g_theta_w, k)
        if cfg.domain == "linear":
            g_values = _fold_windows(g_values_w, k)
            with torch.enable_grad():
                leaves = [t.detach().requires_grad_(n) for t, n in ((theta, need_theta), (s, need_s), (mu, need_mu))]
                vals = _values(*leaves, cfg)
                wanted = [t for t in leaves if t.requires_grad]
                grads = iter(torch.autograd.grad(vals, wanted, g_values) if wanted else ())
            for acc, n in ((g_theta, need_theta), (g_s, need_s), (g_mu, need_mu)):
                if n:
                    acc += next(grads)
        return (gw, g_s if need_s else None, g_mu if need_mu else None,
                g_theta if need_theta else None, None)


def soft_assign(w: Tensor, s: Tensor, mu: Tensor, theta: Tensor, cfg: AssignConfig) -> Tensor:
    """Differentiable soft quantization of a ``[G, M]`` weight view (see :class:`SoftAssign`)."""
    return SoftAssign.apply(w, s, mu, theta, cfg)

def _grad_scale(x: Tensor, factor: float) -> Tensor:
    """Identity in value, gradient multiplied by ``factor`` (LSQ step-size scaling)."""
    return (x - x * factor).detach() + x * factor


def _round_int8(c: Tensor) -> Tensor:
    """Round a ``[G, K]`` codebook to a per-group int8 grid, straight-through in gradient."""
    s8 = c.detach().abs().amax(1, keepdim=True) / 127.0
    s8 = torch.where(s8 > 0, s8, torch.ones_like(s8))
    return c + (torch.round(c.detach() / s8) * s8 - c.detach())


_DEFAULTS: dict[str, Any] = {
    "mu": 5.0,
    "learn_mu": False,
    "learn_scale": False,
    "learn_centroids": True,
    "domain": "companded",
    "distance": "squared",
    "symmetric": False,
    "zero_centroid": False,
    "straight_through": False,
    "int8_codebook": False,
    "window": 8,
    "chunk_size": 1 << 16,
    "impl": "auto",
}
_CHOICES = {
    "domain": ("companded", "linear"), "distance": ("squared", "absolute"), "impl": ("auto", "table", "window"),
}
_BOOLS = ("learn_centroids", "learn_mu", "learn_scale", "symmetric", "zero_centroid", "straight_through", "int8_codebook")


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
    """GQ for one weight tensor; see the module docstring for the math and the options.

    Options: ``mu`` (float >= 0, default 5), ``learn_centroids`` (default True; False keeps the
    centroids at their mu-law initialisation, the fixed-centroid ablation), ``learn_mu``, ``learn_scale`` (LSQ gradient scaling
    ``1/sqrt(N_g * K)``), ``domain`` ("companded" | "linear"), ``distance`` ("squared" |
    "absolute"), ``symmetric`` (centroids mirrored around 0, K/2 free parameters),
    ``zero_centroid`` (the centroid nearest 0 is pinned at 0), ``straight_through`` (hard value
    forward, soft gradient), ``int8_codebook`` (the *hard* codebook, used by ``encode``, the
    straight-through and hard modes and after ``convert``, is rounded to a per-group int8 grid
    ``round(c / s8) * s8``, ``s8 = max|c| / 127``, as the packed runtime deploys it; the soft
    forward is not rounded, so combine it with ``straight_through`` late in training),
    ``window`` (at most this many nearest centroids in the softmax, default ``min(K, 8)``; fewer
    once ``tau`` makes the rest negligible), ``chunk_size`` (weights per soft-assignment chunk),
    ``impl`` (how the soft forward is computed: "auto" (default) = the tabulated function of
    :mod:`subbit.quant.soft_table` when its policy :func:`~subbit.quant.soft_table.choose_grid`
    allows, else the exact window; "table" = the table even where it costs more than it saves,
    the grid clipped to ``MAX_GRID`` points, unless bunched centroids make its window work exceed
    ``MAX_WORK``; "window" = always the exact :class:`SoftAssign`).
    """

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validate ``options`` and return them completed with defaults (ValueError names the option)."""
        unknown = sorted(set(options) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"gq: unknown option {unknown[0]!r}; known options: {sorted(_DEFAULTS)}")
        opts = {**_DEFAULTS, **options}
        for name in _BOOLS:
            if not isinstance(opts[name], bool):
                raise ValueError(f"gq: option {name!r} must be a bool, got {opts[name]!r}")
        for name, choices in _CHOICES.items():
            if opts[name] not in choices:
                raise ValueError(f"gq: option {name!r} must be one of {choices}, got {opts[name]!r}")
        mu = opts["mu"]
        if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not math.isfinite(mu) or mu < 0:
            raise ValueError(f"gq: option 'mu' must be a finite number >= 0, got {mu!r}")
        for name, low in (("window", 2), ("chunk_size", 1)):
            v = opts[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"gq: option {name!r} must be an integer >= {low}, got {v!r}")
        if opts["symmetric"] and opts["zero_centroid"]:
            raise ValueError("gq: options 'symmetric' and 'zero_centroid' exclude each other (K is even)")
        return opts

    def __init__(self, weight: Tensor, bits: int, granularity: str = "tensor", **options: Any) -> None:
        super().__init__(weight, bits, granularity)
        opts = self.check_options(options)
        self.options = opts
        self.domain: str = opts["domain"]
        self.distance: str = opts["distance"]
        self.symmetric: bool = opts["symmetric"]
        self.zero_centroid: bool = opts["zero_centroid"]
        self.straight_through: bool = opts["straight_through"]
        self.int8_codebook: bool = opts["int8_codebook"]
        self.learn_scale: bool = opts["learn_scale"]
        self.learn_mu: bool = opts["learn_mu"]
        k, g = self.levels, self.num_groups
        self.window = min(k, opts["window"])
        self.chunk_size: int = opts["chunk_size"]
        self.impl: str = opts["impl"]

        w = self.grouped(weight.detach().float())
        s = w.abs().amax(1)
        s = torch.where(s > 0, s, torch.ones_like(s))
        mu = torch.full((g,), float(opts["mu"]))
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
        self.theta = nn.Parameter(free.contiguous(), requires_grad=bool(opts["learn_centroids"]))
        self.register_buffer("tau", torch.tensor(1.0))  # relative; persistent so resumes match

    # -- parameters seen by the math ---------------------------------------------------
    @property
    def spacing(self) -> float:
        """Companded centroid spacing that ``tau_rel`` is relative to: ``2 / (K - 1)``, the gap
        of the evenly spaced init; for ``K == 2`` the current gap (mean over groups, at least
        ``MIN_SPACING``), since its init is data-driven (:func:`initial_centroids`)."""
        if self.levels == 2:
            th = self.centroids().detach()
            return max(float((th[:, 1] - th[:, 0]).mean()), MIN_SPACING)
        return 2.0 / (self.levels - 1)

    @property
    def abs_tau(self) -> float:
        """Absolute softmax temperature (see the module docstring)."""
        unit = self.spacing**2 if self.distance == "squared" else self.spacing
        return float(self.tau) * unit

    @property
    def is_hard(self) -> bool:
        return bool(self.converted) or float(self.tau) == 0.0

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

    def grid_size(self, theta: Tensor | None = None) -> int | None:
        """Points of the tabulated soft function the next soft forward uses; ``None`` = exact window."""
        if self.impl == "window" or self.is_hard:
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
            if bool(self.converted):
                return hard
            return hard + (w - w.detach())  # exact hard value, identity gradient to w
        wg = self.grouped(w)
        theta = self.centroids()
        s, mu = self._scale().unsqueeze(1).to(w.dtype), self.mu.unsqueeze(1).to(w.dtype)
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
        return (f"{super().extra_repr()}, tau={float(self.tau):.3g}, mu={self.options['mu']}, window={self.window}, "
                f"impl={self.impl}")

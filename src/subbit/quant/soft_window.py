"""GQ's exact soft assignment: a softmax over a window of the nearest centroids, in chunks.

:class:`SoftAssign` never materialises ``N * K`` values: it works on a window of the ``W``
nearest centroids (located by :func:`locate`, an exact binned replacement for
``searchsorted``), in chunks of 64k weights; it saves only its inputs plus one uint8 window
start per weight, and recomputes each chunk in backward with closed-form softmax gradients. The
window shrinks as ``tau`` falls (:func:`needed_window`: it keeps every centroid within
``exp(-30)`` of the nearest, down to 2), and logits below -80 are zeroed before ``exp``
(denormals cost 2-3x). Measured costs: RESULTS.md section 1.

:class:`StaticWindow` is the same softmax with nothing decided on the host: a fixed window
located with ``searchsorted``, the temperature a tensor, no chunk loop. It serves
``torch.compile`` (no graph break) and accelerators (no device-to-host sync per tensor); on CPU
eager the adaptive :class:`SoftAssign` and the table of :mod:`subbit.quant.soft_table` are
faster. Both compute the same function (up to the ``exp(-30)`` window bound).

Shapes: a grouped weight view ``w [G, M]``, per-group ``s``/``mu`` ``[G, 1]``, sorted companded
centroids ``theta [G, K]``. Knows nothing about modules or options (:mod:`subbit.quant.gq`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from subbit.quant.mulaw import compand, expand

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
    # small tensors: fewer ops wins over fewer cycles per weight; accelerators and compiled
    # graphs: the bin count below is read on the host (a sync, a graph break)
    if u.numel() < 8192 or u.device.type != "cpu" or torch.compiler.is_compiling():
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


def _static_assign(
    u: Tensor, theta: Tensor, values: Tensor | None, tau: Tensor, window: int, squared: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(a, diff, V_window, idx)`` of the window softmax, ``[G, N, W]`` each (``idx`` flat
    ``[G, N * W]``), with the window start from ``searchsorted``: no host-side decision."""
    g, n = u.shape
    k = theta.shape[1]
    start = (torch.searchsorted(theta.contiguous(), u.contiguous()) - window // 2).clamp_(0, k - window)
    idx = (start.unsqueeze(-1) + torch.arange(window, device=u.device)).view(g, -1)
    th = theta.gather(1, idx).view(g, n, window)
    diff = u.unsqueeze(-1) - th
    logits = (diff.square() if squared else diff.abs()) / (-tau)
    logits = logits - logits.amax(-1, keepdim=True)
    # floor before exp (denormals) and zero what was below the floor, as :func:`_assign` does,
    # so a one-hot window gives a centroid exactly
    e = logits.clamp(min=-80.0).exp().masked_fill(logits < -80.0, 0.0)
    a = e / e.sum(-1, keepdim=True)
    vals = th if values is None else values.gather(1, idx).view(g, n, window)
    return a, diff, vals, idx


class StaticWindow(torch.autograd.Function):
    """``u [G, N], theta [G, K], values [G, K] | None (= theta), tau (0-d tensor) -> y [G, N]``,
    ``y = sum_k a_k V_k`` over a fixed window of ``window`` nearest centroids.

    Saves only its inputs and recomputes the window in backward (closed-form gradients as in
    :class:`SoftAssign`: ``dy/du = sum_k r_k``, ``dy/dtheta_k = -r_k`` through the distance,
    ``dy/dV_k = a_k``, ``r_k = a_k (V_k - y) dl_k/du``). Every op is a plain tensor op with
    static shapes, so ``torch.compile`` traces forward and backward in one graph each.
    """

    @staticmethod
    def forward(ctx, u: Tensor, theta: Tensor, values: Tensor | None, tau: Tensor,  # type: ignore[override]
                window: int, squared: bool) -> Tensor:
        a, _, vals, _ = _static_assign(u, theta, values, tau, window, squared)
        ctx.save_for_backward(u, theta, values, tau)
        ctx.window, ctx.squared = window, squared
        return (a * vals).sum(-1)

    @staticmethod
    def backward(ctx, gy: Tensor):  # type: ignore[override]
        u, theta, values, tau = ctx.saved_tensors
        a, diff, vals, idx = _static_assign(u, theta, values, tau, ctx.window, ctx.squared)
        g = u.shape[0]
        y = (a * vals).sum(-1, keepdim=True)
        dl = diff * (-2.0 / tau) if ctx.squared else diff.sign() / (-tau)
        r = a * (vals - y) * dl * gy.unsqueeze(-1)  # upstream-weighted r_k
        gu = r.sum(-1)
        ga = a * gy.unsqueeze(-1)
        zeros = torch.zeros_like(theta)
        if values is None:  # theta is both the distance's centroid and the averaged value
            g_theta = zeros.scatter_add(1, idx, (ga - r).reshape(g, -1))
            return gu, g_theta, None, None, None, None
        g_theta = zeros.scatter_add(1, idx, (-r).reshape(g, -1))
        g_values = zeros.scatter_add(1, idx, ga.reshape(g, -1))
        return gu, g_theta, g_values, None, None, None


def static_soft_assign(
    w: Tensor, s: Tensor, mu: Tensor, theta: Tensor, tau: Tensor, window: int, distance: str, domain: str,
) -> Tensor:
    """Differentiable soft quantization of a ``[G, M]`` view with no host sync (see
    :class:`StaticWindow`); ``tau`` is the absolute temperature as a tensor."""
    u = companded(w, s, mu)
    values = None if domain == "companded" else s * expand(theta, mu)
    y = StaticWindow.apply(u, theta, values, tau.to(u.dtype), min(window, theta.shape[1]), distance == "squared")
    return s * expand(y, mu) if domain == "companded" else y

"""GQ's soft assignment through a tabulated function: O(N) per weight, no ``N * K`` work.

For one group, GQ's soft forward is a function of the scalar ``x = clamp(w / s, -1, 1)`` only::

    T(x) = expand(sum_k softmax_k(-d(compand(x), theta_k) / tau) theta_k, mu)   # "companded"
    T(x) = sum_k softmax_k(-d(compand(x), theta_k) / tau) expand(theta_k, mu)   # "linear"
    w_soft = s * T(x)

So :func:`tabulate` evaluates ``T`` on a uniform grid of ``M`` points of [-1, 1] (with autograd
on ``theta`` and ``mu``: ``M * W`` work for a window of ``W`` centroids) and :class:`TableLookup`
evaluates its piecewise-linear interpolant per weight. Autograd then gives exactly the gradient
of the interpolant: to ``w`` the cell slope, to the table two weighted bin counts that flow
back through the grid graph into ``theta``/``mu``, to ``s`` ``T(x) - x T'(x)``.

**Why the grid lives in x = w / s, not in the companded u.** Per weight, a u-grid needs
``compand`` before and ``expand`` after the lookup (about 10 elementwise passes forward and as
many backward); the x-grid folds both into the table. The price is a finer grid: companding
stretches x by up to ``compand'(0) = mu / ln(1 + mu)`` (2.8 at mu = 5), which :func:`choose_grid`
accounts for per transition.

**Grid size.** Between neighbours ``theta_k < theta_{k+1}`` (gap ``g``) the assignment flips
along a sigmoid of width ``w_u = tau / (2 g)`` (squared distance) or ``tau / 2`` (absolute) in
u, i.e. ``w_u / compand'(x_mid)`` in x. Linear interpolation with cells of ``1 / CELLS_PER_WIDTH``
of the narrowest width keeps the value error below ``~2e-4 g`` and the slope (gradient) error
per weight below a few percent at the steepest point (the slope over a cell is the exact mean
slope there, so summed gradients are closer still; tests/quant/test_soft_table.py measures it).
At least ``MIN_GRID`` points: the companding alone bends ``T`` near ``x = 0``. When ``tau``
anneals down the grid grows as ``1 / tau``; past the budget (more than ``MAX_GRID`` points, more
grid points than ``GRID_FRACTION`` of the weights, or more than ``MAX_WORK`` grid x window
entries) the policy returns ``None`` and the caller uses the exact windowed path: early and mid
anneal use the table, the very end the window.

**Cost** (per weight, fwd + bwd): about 10 flat passes (scale, int32 cell, one gather of
``(A, B)`` pairs, a multiply-add; a gather for the slope and two ``scatter_add_`` back), plus
``G * M * W`` grid work; measured 7-21x faster than the window path (1-8 bits), see
``benchmarks/gq_soft_speed.py`` and GeneralQuantizer's docstring.

**C path.** For contiguous float32 CPU tensors :class:`TableLookup` runs the per-weight work as
one fused C pass forward and one backward (:mod:`subbit.quant.native`: grad to ``w``, the table
gradient scattered into a float64 buffer, grad to ``s``), and saves nothing per weight (the
cell is recomputed from ``w``; the torch ops keep 8 bytes per weight). Its position is computed
in float64, so it matches a float64 evaluation to float32 rounding (the torch ops in float32
lose up to ~1e-4 relative in the table gradient, see tests/quant/test_native.py). CUDA, float64
and a missing library take the torch ops; ``SUBBIT_NATIVE=0`` forces them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from subbit.quant import native
from subbit.quant.mulaw import compand, expand

CELLS_PER_WIDTH = 8  # grid cells per transition width (value error ~ 2e-4 of a gap)
MAX_GRID = 1 << 18  # points per group; beyond this the window path is cheaper and exact
# total grid points (all groups) at most this share of the weights. A grid point costs about a
# window-path weight (the same softmax, in GridSoftmax) and a table weight a fraction of one, so
# the table wins up to about one grid point per weight: 0.25 -> 1.0 took the 8-bit
# Transformer-256x4 of benchmarks/qat_overhead.py from 3.5x to ~2.2x fp32 (RESULTS 1.7)
GRID_FRACTION = 1.0
MAX_WORK = 1 << 22  # grid points x window: bounds the grid's autograd memory (~16 MB a tensor)
MIN_GRID = 257  # the companding curvature near x = 0 needs cells even when f is flat
NEGLIGIBLE_LOGIT = 30.0  # centroids trailing the nearest by more than this add exp(-30)

_DISTANCES = ("squared", "absolute")
_DOMAINS = ("companded", "linear")


def _check(distance: str, domain: str = "companded") -> None:
    if distance not in _DISTANCES:
        raise ValueError(f"soft_table: distance must be one of {_DISTANCES}, got {distance!r}")
    if domain not in _DOMAINS:
        raise ValueError(f"soft_table: domain must be one of {_DOMAINS}, got {domain!r}")


def _mu_rows(mu: float | Tensor, groups: int, like: Tensor) -> Tensor:
    """``mu`` as a ``[G, 1]`` tensor (a float or any shape with G or 1 elements)."""
    if isinstance(mu, Tensor):  # keep the autograd graph (learned mu)
        m = mu.to(like.dtype).reshape(-1, 1)
    else:
        m = torch.full((1, 1), float(mu), dtype=like.dtype, device=like.device)
    if m.shape[0] not in (1, groups):
        raise ValueError(f"soft_table: mu has {m.shape[0]} values for {groups} groups")
    return m.expand(groups, 1)


@torch.no_grad()
def choose_grid(
    theta: Tensor, tau: float, numel: int, distance: str, mu: float | Tensor = 0.0,
    *, max_grid: int = MAX_GRID, fraction: float = GRID_FRACTION, clip: bool = False,
) -> int | None:
    """Grid size ``M`` for :func:`tabulate`, or ``None`` when the exact window path should run.

    ``theta`` [G, K] sorted companded centroids, ``tau`` the absolute temperature, ``numel``
    the weights the table will serve, ``mu`` the mu-law parameter(s). ``None`` for the hard
    mode (``tau <= 0``), when ``M > max_grid`` (with ``clip``: ``M = max_grid`` instead, coarser
    than the accuracy target), when ``G * M > fraction * numel`` (the grid would cost about
    what it saves), and when the grid's window work ``G * M * W`` exceeds ``MAX_WORK``
    (centroids bunched together widen the window, see :func:`tabulate`).
    """
    _check(distance)
    if theta.dim() != 2 or theta.shape[1] < 2:
        raise ValueError(f"soft_table: theta must be [G, K >= 2], got {tuple(theta.shape)}")
    if tau <= 0 or not math.isfinite(tau):
        return None
    g, k = theta.shape
    th = theta.detach()
    gaps = (th[:, 1:] - th[:, :-1]).clamp_(min=0.0)
    width = torch.full_like(gaps, tau / 2.0) if distance == "absolute" else (tau / 2.0) / gaps
    # compand'(x) at x = expand(u) is (mu / L) exp(-|u| L), L = ln(1 + mu): the x-width of a
    # transition centred at u is its u-width times (L / mu) exp(|u| L)
    mu_t = _mu_rows(mu, g, th).detach().clamp(min=1e-6)
    log_mu = torch.log1p(mu_t)
    mid = ((th[:, 1:] + th[:, :-1]) / 2).abs_().clamp_(max=1.0)
    width_x = width * (log_mu / mu_t) * torch.exp(mid * log_mu)  # [G, K-1]; equal centroids: inf
    narrowest, gmin = torch.stack([width_x.min(), gaps.min()]).tolist()  # one sync
    cells = 2.0 * CELLS_PER_WIDTH / narrowest if math.isfinite(narrowest) and narrowest > 0 else 0.0
    if cells > max_grid:  # also keeps huge values away from the int conversion
        if not clip:
            return None
        cells = max_grid
    m = min(max(MIN_GRID, math.ceil(cells) + 1), max(max_grid, 2))
    if g * m > fraction * numel or g * m * _window_size(k, gmin, tau, distance) > MAX_WORK:
        return None
    return m


def _window_size(k: int, gmin: float, tau: float, distance: str) -> int:
    """Centroids per side x 2 beyond which softmax weights are below ``exp(-30)`` of the nearest,
    given the smallest centroid gap (the argument of gq.needed_window)."""
    if k <= 2 or gmin <= 0:
        return k
    reach = math.sqrt(NEGLIGIBLE_LOGIT * tau) if distance == "squared" else NEGLIGIBLE_LOGIT * tau
    return min(k, 2 * max(1, math.ceil(reach / gmin)))


def _window(theta: Tensor, tau: float, distance: str) -> int:
    """:func:`_window_size` for the current centroids."""
    k = theta.shape[1]
    return k if k <= 2 else _window_size(k, float((theta[:, 1:] - theta[:, :-1]).min()), tau, distance)


def _count_below(theta: Tensor, u: Tensor) -> Tensor:
    """``searchsorted(theta, u)`` (centroids below each ``u``) for rows of ``u`` sorted ascending,
    by merging: search the K centroids in the M grid values, then a cumulative count. O(K log M + M)
    instead of O(M log K); the grid is the long side."""
    g, m = u.shape
    first_above = torch.searchsorted(u.contiguous(), theta.contiguous(), right=True)  # [G, K]
    counts = torch.zeros(g, m + 1, dtype=torch.long, device=u.device)
    counts.scatter_add_(1, first_above, torch.ones_like(first_above))
    return counts.cumsum_(1)[:, :m]


def tabulate(
    theta: Tensor, mu: float | Tensor, tau: float, distance: str, domain: str, size: int,
) -> Tensor:
    """``T`` [G, size] on the grid ``linspace(-1, 1, size)`` of ``x = w / s`` (differentiable in
    ``theta`` and ``mu``); see the module docstring for ``T``. Uses a window of the nearest
    centroids (:class:`GridSoftmax`), so the cost is ``G * size * W``, never ``G * size * K``
    unless ``W = K``.
    """
    _check(distance, domain)
    if tau <= 0:
        raise ValueError(f"soft_table: tau must be > 0 for a soft table, got {tau!r}")
    if size < 2:
        raise ValueError(f"soft_table: grid size must be >= 2, got {size!r}")
    g, k = theta.shape
    mu_t = _mu_rows(mu, g, theta)
    x = torch.linspace(-1.0, 1.0, size, dtype=theta.dtype, device=theta.device).expand(g, size)
    u = compand(x, mu_t)  # [G, M], rows ascending
    values = theta if domain == "companded" else expand(theta, mu_t)
    win = _window(theta.detach(), tau, distance)
    start = None
    if win < k:  # window start per grid point, one byte each (K <= 256) while saved for backward
        start = (_count_below(theta.detach(), u.detach()) - win // 2).clamp_(0, k - win).to(torch.uint8)
    f = GridSoftmax.apply(u, theta, values, start, win, tau, distance == "squared")
    return expand(f, mu_t) if domain == "companded" else f


class GridSoftmax(torch.autograd.Function):
    """``f[g, m] = sum_k a_k V_k``, ``a = softmax_k(-d(u[g, m], theta_k) / tau)`` over the window
    of ``window`` centroids from ``start`` ([G, M] uint8, or ``None`` = all K) with closed-form gradients:
    ``df/du = sum_k r_k``, ``df/dtheta_k = -r_k`` (through ``d``), ``df/dV_k = a_k``, where
    ``r_k = a_k (V_k - f) dl_k/du``. Against autograd over the same ops: half the passes and no
    graph (it was most of a layer's fixed cost at 65k weights).

    The window axis comes before the grid axis ([G, W, M]) so reductions over it are vectorised
    elementwise passes (``torch.softmax`` over a last axis of 4 was 20x slower), and logits are
    floored at -80: ``exp`` below -87 gives float32 denormals, 10-50x slower on x86, for weights
    that are zero in effect.

    Saved for backward: the inputs, ``f`` and a uint8 window start per grid point; the softmax,
    the distances and the centroid indices are recomputed (saving them, int64 indices included,
    cost ~7x more: at 8 bits the grids of a Transformer's layers have about as many points as
    the layers have weights, and that memory took its 8-bit peak RSS from 1.1x to 1.35x fp32).
    """

    @staticmethod
    def _idx(start: Tensor | None, window: int) -> Tensor | None:
        if start is None:
            return None
        g, m = start.shape
        return (start.long().unsqueeze(1) + torch.arange(window, device=start.device).view(1, window, 1)).view(g, -1)

    @staticmethod
    def _softmax(u: Tensor, theta: Tensor, values: Tensor, idx: Tensor | None, tau: float,
                 squared: bool, same: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``(a, diff, V)`` over the window, each ``[G, W, M]`` (broadcast ``[G, K, 1]`` for V
        without a window)."""
        g, m = u.shape
        if idx is None:
            th, vals = theta.unsqueeze(2), values.unsqueeze(2)  # broadcast [G, K, 1]
        else:
            th = theta.gather(1, idx).view(g, -1, m)
            vals = th if same else values.gather(1, idx).view(g, -1, m)  # same: values are theta
        diff = u.unsqueeze(1) - th  # [G, W, M]
        logits = diff.square() if squared else diff.abs()
        logits.mul_(-1.0 / tau)
        logits.sub_(logits.amax(1, keepdim=True)).clamp_(min=-80.0).exp_()
        return logits.div_(logits.sum(1, keepdim=True)), diff, vals

    @staticmethod
    def forward(ctx, u: Tensor, theta: Tensor, values: Tensor, start: Tensor | None, window: int,  # type: ignore[override]
                tau: float, squared: bool) -> Tensor:
        same = values is theta
        a, _, vals = GridSoftmax._softmax(u, theta, values, GridSoftmax._idx(start, window), tau, squared, same)
        f = (a * vals).sum(1)
        ctx.save_for_backward(u, theta, values, start, f)
        ctx.tau, ctx.squared, ctx.window, ctx.same = tau, squared, window, same
        return f

    @staticmethod
    def backward(ctx, gf: Tensor):  # type: ignore[override]
        u, theta, values, start, f = ctx.saved_tensors
        g, k = theta.shape
        idx = GridSoftmax._idx(start, ctx.window)
        a, diff, vals = GridSoftmax._softmax(u, theta, values, idx, ctx.tau, ctx.squared, ctx.same)
        dl = diff.mul(-2.0 / ctx.tau) if ctx.squared else diff.sign().mul_(-1.0 / ctx.tau)  # dl/du
        gfe = gf.unsqueeze(1)
        r = (vals - f.unsqueeze(1)).mul_(a).mul_(dl).mul_(gfe)  # upstream-weighted r_k
        gu = r.sum(1)
        gv_w = a * gfe
        if idx is None:
            gth, gv = -r.sum(2), gv_w.sum(2)
        else:
            gth = theta.new_zeros(g, k).scatter_add_(1, idx, r.view(g, -1)).neg_()
            gv = theta.new_zeros(g, k).scatter_add_(1, idx, gv_w.view(g, -1))
        return gu, gth, gv, None, None, None, None  # theta passed twice (companded): autograd sums


def _lines(table: Tensor) -> tuple[Tensor, Tensor]:
    """Per-cell lines ``T(x) = A_j + pos * B_j`` (``pos = (x + 1) (M - 1) / 2``), ``[G, M]`` each:
    ``B_j = T_{j+1} - T_j``, ``A_j = T_j - j B_j``.

    Row ``M - 1`` repeats row ``M - 2`` so ``pos = M - 1`` (``x = 1``) needs no index clamp. In
    float32 ``A_j`` cancels against ``pos * B_j`` up to ``~1e-7 * M * |B|``, ~1e-4 of a centroid
    gap at the largest grids: below the interpolation error.
    """
    step = table[:, 1:] - table[:, :-1]
    step = torch.cat([step, step[:, -1:]], 1)
    j = torch.arange(table.shape[1], dtype=table.dtype, device=table.device)
    return table - j * step, step


def _lines_backward(ga: Tensor, gb: Tensor) -> Tensor:
    """Adjoint of :func:`_lines`: gradients on ``(A, B)`` -> gradient on the table."""
    m = ga.shape[1]
    j = torch.arange(m, dtype=ga.dtype, device=ga.device)
    gstep = gb - j * ga
    gstep[:, -2] += gstep[:, -1]  # row M - 1 repeats row M - 2
    gt = ga.clone()
    gt[:, 1:] += gstep[:, :-1]
    gt[:, :-1] -= gstep[:, :-1]
    return gt


def _pairs(ab: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """``(A[idx], B[idx])`` with one gather of 8-byte pairs (viewed as complex) where the dtype
    allows: a 2-column ``index_select`` measured ~7x slower, two 1-D gathers ~1.7x."""
    if ab.dtype in (torch.float32, torch.float64):
        rows = torch.view_as_real(torch.view_as_complex(ab).index_select(0, idx))
        return rows[:, 0], rows[:, 1]
    return ab[:, 0].index_select(0, idx), ab[:, 1].contiguous().index_select(0, idx)


class TableLookup(torch.autograd.Function):
    """``w [G, N], s [G, 1], table [G, M] -> s T(x)`` interpolated: ``s (A_j + pos B_j)`` with
    ``pos = (clamp(w / s, -1, 1) + 1) c``, ``c = (M - 1) / 2``, ``j = floor(pos)`` (:func:`_lines`).

    Every per-weight step is one flat pass (a scaled copy, a truncation to int32, one gather of
    ``(A, B)`` pairs with ``s`` folded in, one fused multiply-add); a broadcast ``addcmul``
    measured 4-7x slower than a scalar multiply. Saves the int32 cell and ``pos`` (8 bytes per
    weight); backward is one gather for the slope and two ``scatter_add_`` for the table
    gradient (faster than ``index_add_``/``bincount`` here, with int64 indices), then the small
    adjoint of the lines (analytic: an autograd graph over ``G * M`` cost more than the rest at
    65k weights). Contiguous float32 CPU inputs go to the fused C kernels instead (module
    docstring, "C path").
    """

    @staticmethod
    def forward(ctx, w: Tensor, s: Tensor, table: Tensor) -> Tensor:  # type: ignore[override]
        g, n = w.shape
        m = table.shape[1]
        if native.supports(w, s, table):  # one fused C pass; backward recomputes the cell
            ctx.native = True
            ctx.save_for_backward(w, s, table)
            return native.table_forward(w, s, table)
        ctx.native = False
        c = (m - 1) / 2.0
        a, b = _lines(table)
        ab = torch.stack([a * s, b * s], -1).reshape(g * m, 2)
        # decided on w, not pos: rounding may put the largest weight's pos an ulp past M - 1,
        # harmless (row M - 1 exists) but it would cost backward a clamp mask
        lo, hi = torch.aminmax(w, dim=1, keepdim=True) if g > 1 else torch.aminmax(w)
        clamped = bool(torch.maximum(-lo, hi).gt(s.reshape(lo.shape)).any())
        pos = w.mul(c / float(s)) if g == 1 else w.mul(c / s)
        pos.add_(c)
        if clamped:
            pos.clamp_(0.0, m - 1.0)
        idx = pos.to(torch.int32)  # pos >= 0: truncation is floor
        if g > 1:
            idx += torch.arange(0, g * m, m, dtype=torch.int32, device=w.device).unsqueeze(1)
        idx, pos = idx.view(-1), pos.view(-1)
        ga, gb = _pairs(ab, idx)
        out = torch.addcmul(ga, pos, gb)
        ctx.save_for_backward(w, s, a, b, idx, pos)
        ctx.clamped, ctx.c = clamped, c
        return out.view(g, n)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        need_w, need_s, need_table = ctx.needs_input_grad[:3]
        if ctx.native:
            w, s, table = ctx.saved_tensors
            gw, gtab, gs = native.table_backward(
                w, grad.contiguous(), s, table, need_w=need_w, need_table=need_table,
                need_s=need_s)
            if gs is not None:
                gs = gs.to(s.dtype).view_as(s)
            return (gw if need_w else None), gs, gtab
        w, s, a, b, idx, pos = ctx.saved_tensors
        g, n = w.shape
        m = a.shape[1]
        gw = gs = gtab = None
        flat = grad.contiguous().view(-1)
        idx = idx.long()  # scatter_add_ converts int32 itself, per call and slower
        if need_w or need_s:
            slope = (b * ctx.c).reshape(-1)  # dT/dx per cell; s cancels against 1 / s
            gw = slope.index_select(0, idx).mul_(flat).view(g, n)
            if ctx.clamped:  # like torch.clamp: |w| == s still passes gradient
                gw.masked_fill_(w.abs() > s, 0.0)
        if need_s or need_table:
            ga = a.new_zeros(g * m).scatter_add_(0, idx, flat).view(g, m)
            gb = b.new_zeros(g * m).scatter_add_(0, idx, flat * pos).view(g, m)
            if need_s:  # through the table (s A, s B) and through pos (d pos / ds = -(w / s) c / s)
                gs = (ga * a + gb * b).sum(1, keepdim=True) - (gw * w).sum(1, keepdim=True) / s
            if need_table:
                gtab = _lines_backward(ga * s, gb * s)
        return (gw if need_w else None), gs, gtab


def table_lookup(w: Tensor, s: Tensor, table: Tensor) -> Tensor:
    """Differentiable ``s * T(clamp(w / s, -1, 1))`` for a ``[G, N]`` view (see :class:`TableLookup`)."""
    if w.dim() != 2 or table.dim() != 2 or table.shape[0] != w.shape[0]:
        raise ValueError(f"soft_table: w [G, N] and table [G, M] needed, got {tuple(w.shape)}, {tuple(table.shape)}")
    if table.shape[1] < 2:
        raise ValueError(f"soft_table: table needs >= 2 points, got {table.shape[1]}")
    s = s.reshape(-1, 1).to(w.dtype)
    if s.shape[0] != w.shape[0]:
        raise ValueError(f"soft_table: s has {s.shape[0]} values for {w.shape[0]} groups")
    return TableLookup.apply(w.contiguous(), s.contiguous(), table.to(w.dtype).contiguous())


def table_soft(
    w: Tensor, s: Tensor, mu: float | Tensor, theta: Tensor, tau: float, distance: str, domain: str,
    size: int,
) -> Tensor:
    """GQ's soft forward of a ``[G, N]`` weight view via a ``size``-point table (pick ``size``
    with :func:`choose_grid`); values and gradients approximate ``SoftAssign``'s."""
    return table_lookup(w, s, tabulate(theta, mu, tau, distance, domain, size))

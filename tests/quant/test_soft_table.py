"""The tabulated soft function against the textbook full softmax: values, gradients, policy, memory."""

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from subbit.quant.mulaw import compand, expand
from subbit.quant.soft_table import (
    GRID_FRACTION, MAX_GRID, choose_grid, table_lookup, table_soft, tabulate,
)

torch.set_num_threads(1)

# Stated tolerances (linear interpolation with 8 cells per transition width, see the module
# docstring): values within 1e-3 of a centroid gap (times s), gradients to w (and s, which goes
# through the slope) within 6% and to theta / mu within 1% in relative L2 norm over the weights
# of a random tensor.
VALUE_TOL, GRAD_W_TOL, GRAD_PARAM_TOL = 1e-3, 6e-2, 1e-2


def exact(w, s, mu, theta, tau, distance="squared", domain="companded"):
    """Full softmax over all K centroids with plain autograd (``[G, N]`` views)."""
    u = compand(torch.clamp(w / s, -1, 1), mu)
    d = u.unsqueeze(-1) - theta.unsqueeze(1)
    d = d.square() if distance == "squared" else d.abs()
    a = torch.softmax(-d / tau, -1)
    if domain == "companded":
        return s * expand((a * theta.unsqueeze(1)).sum(-1), mu)
    return (a * (s * expand(theta, mu)).unsqueeze(1)).sum(-1)


def setup(bits, groups=1, n=3000, seed=0, dtype=torch.float64, mu=5.0):
    g = torch.Generator().manual_seed(seed)
    k = 2**bits
    w = torch.randn(groups, n, generator=g, dtype=dtype)
    s = w.abs().amax(1, keepdim=True)
    spacing = 2.0 / (k - 1)
    jitter = torch.rand(groups, k, generator=g, dtype=dtype) - 0.5
    theta = torch.linspace(-1, 1, k, dtype=dtype) + 0.3 * spacing * jitter
    theta = theta.clamp(-1, 1).sort(1).values
    return w, s, torch.full((groups, 1), mu, dtype=dtype), theta, spacing


def compare(w, s, mu, theta, tau, distance, domain, size):
    """Values and gradients (w, theta, mu) of the table and the exact function, same upstream grad."""
    gy = torch.linspace(-1, 2, w.numel(), dtype=w.dtype).reshape(w.shape)
    outs = []
    for fn in (lambda *a: table_soft(*a, tau, distance, domain, size), lambda *a: exact(*a, tau, distance, domain)):
        leaves = [t.clone().requires_grad_() for t in (w, s, mu, theta)]
        y = fn(*leaves)
        (y * gy).sum().backward()
        outs.append([y.detach()] + [t.grad for t in leaves])
    return outs


def rel(a, b):
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("tau_rel", [1.0, 0.1, 0.02])
def test_matches_full_softmax(bits, tau_rel):
    w, s, mu, theta, spacing = setup(bits, seed=bits)
    tau = tau_rel * spacing**2
    size = choose_grid(theta, tau, 10**9, "squared", mu)
    if size is None:  # cold and fine: the policy falls back to the window; check the table anyway
        size = choose_grid(theta, tau, 10**9, "squared", mu, max_grid=4 * MAX_GRID)
        assert size is not None and size > MAX_GRID
    (y, gw, gs, gmu, gth), (y0, gw0, gs0, gmu0, gth0) = compare(w, s, mu, theta, tau, "squared", "companded", size)
    assert float((y - y0).abs().max()) <= VALUE_TOL * spacing * float(s)
    assert rel(gw, gw0) <= GRAD_W_TOL
    assert rel(gth, gth0) <= GRAD_PARAM_TOL
    assert rel(gmu, gmu0) <= GRAD_PARAM_TOL
    assert rel(gs, gs0) <= GRAD_W_TOL  # through x T'(x): the slope's accuracy


@pytest.mark.parametrize("distance", ["squared", "absolute"])
@pytest.mark.parametrize("domain", ["companded", "linear"])
@pytest.mark.parametrize("groups", [1, 3])
def test_distances_domains_and_groups(distance, domain, groups):
    w, s, mu, theta, spacing = setup(4, groups=groups, seed=groups)
    mu = mu * torch.linspace(0.5, 1.5, groups, dtype=mu.dtype).unsqueeze(1)  # per-group mu
    tau = 0.2 * (spacing**2 if distance == "squared" else spacing)
    size = choose_grid(theta, tau, 10**9, distance, mu)
    (y, gw, gs, gmu, gth), (y0, gw0, gs0, gmu0, gth0) = compare(w, s, mu, theta, tau, distance, domain, size)
    # the absolute distance has a kink at every centroid that the grid smooths over one cell
    factor = 1.0 if distance == "squared" else 3.0
    assert float((y - y0).abs().max()) <= factor * VALUE_TOL * spacing * float(s.max())
    assert rel(gw, gw0) <= factor * GRAD_W_TOL
    for a, b in ((gth, gth0), (gmu, gmu0)):
        assert rel(a, b) <= factor * GRAD_PARAM_TOL
    assert rel(gs, gs0) <= factor * GRAD_W_TOL


def test_interpolant_exact_on_grid_and_gradcheck():
    """At grid points the lookup returns the table; between them its backward is the exact
    derivative of the interpolant (gradcheck in float64, weights away from cell edges)."""
    w, s, mu, theta, _ = setup(3, groups=2, n=50)
    tau, size = 0.1 * (2 / 7) ** 2, 101
    table = tabulate(theta, mu, tau, "squared", "companded", size)
    x = torch.linspace(-1, 1, size, dtype=w.dtype).expand(2, size)
    assert torch.allclose(table_lookup(x * s, s, table), s * table, atol=1e-12)
    h = 2.0 / (size - 1)
    cells = torch.randint(0, size - 1, (2, 50), generator=torch.Generator().manual_seed(3))
    frac = torch.rand(2, 50, generator=torch.Generator().manual_seed(4), dtype=w.dtype) * 0.6 + 0.2
    wc = (-1 + (cells + frac) * h) * s  # inside cells, >= 0.2 h from an edge

    def fn(w_, s_, mu_, th_):
        return table_soft(w_, s_, mu_, th_, tau, "squared", "linear", size)

    args = [t.clone().requires_grad_() for t in (wc, s, mu, theta)]
    assert torch.autograd.gradcheck(fn, args, eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("distance", ["squared", "absolute"])
def test_monotone_in_w(distance):
    w, s, mu, theta, spacing = setup(3, dtype=torch.float32)
    tau = 0.05 * (spacing**2 if distance == "squared" else spacing)
    size = choose_grid(theta, tau, 10**9, distance, mu)
    ws = (torch.linspace(-1.2, 1.2, 20001).unsqueeze(0) * s).requires_grad_()
    y = table_soft(ws, s, mu, theta, tau, distance, "companded", size)
    y.sum().backward()
    outside = ws.detach().abs() > s
    assert bool((ws.grad[outside] == 0).all())  # clamped weights get no gradient
    # float32 rounding in the table leaves flat stretches with slopes of ~ +-1 ulp / cell
    assert float(ws.grad[~outside].min()) >= -1e-3 * float(ws.grad.max())
    y = y.detach()
    # float32 rounding of A_j + pos B_j may wobble by an ulp-scale amount at cell edges
    assert float(y.diff().min()) >= -1e-6 * float(s)
    assert float(y[0, 0]) == pytest.approx(float(y[0, 1]))  # clamped below -s: flat


def test_policy_grid_size_and_fallback():
    _, _, mu, theta, spacing = setup(4)
    n = 1 << 20
    sizes = [choose_grid(theta, t * spacing**2, n, "squared", mu) for t in (1.0, 0.1, 0.01)]
    assert sizes[0] < sizes[1] < sizes[2]  # colder -> sharper transitions -> finer grid
    assert 5 < sizes[2] / sizes[1] < 20  # ~ 1 / tau
    assert choose_grid(theta, 0.0, n, "squared", mu) is None  # hard mode
    assert choose_grid(theta, 1e-9, n, "squared", mu) is None  # past MAX_GRID: exact window
    # grid too big for N: more than GRID_FRACTION grid points per weight
    budget = math.ceil(sizes[1] / GRID_FRACTION)
    assert choose_grid(theta, 0.1 * spacing**2, budget - 1, "squared", mu) is None
    assert choose_grid(theta, 0.1 * spacing**2, budget, "squared", mu) == sizes[1]
    # stronger companding stretches the transitions near 0 in x = w / s: finer grid
    assert choose_grid(theta, 0.1 * spacing**2, n, "squared", 50.0) > sizes[1]
    # G groups share the budget
    th3 = theta.expand(3, -1)
    assert choose_grid(th3, 0.1 * spacing**2, 3 * budget - 1, "squared", mu[:1]) is None
    # two equal centroids force the full window (W = K): the grid's window work is capped
    _, _, mu8, theta8, spacing8 = setup(8)
    tau8 = 0.1 * spacing8**2
    assert choose_grid(theta8, tau8, 10**9, "squared", mu8, fraction=math.inf) is not None
    theta8[0, 100] = theta8[0, 101]
    assert choose_grid(theta8, tau8, 10**9, "squared", mu8, fraction=math.inf) is None
    # clip: a forced table keeps MAX_GRID points however cold
    assert choose_grid(theta, 1e-9, 10**9, "squared", mu, fraction=math.inf, clip=True) == MAX_GRID


def test_bad_input_named():
    _, s, mu, theta, _ = setup(2)
    with pytest.raises(ValueError, match="distance"):
        choose_grid(theta, 0.1, 1000, "cosine")
    with pytest.raises(ValueError, match="domain"):
        tabulate(theta, mu, 0.1, "squared", "log", 100)
    with pytest.raises(ValueError, match="tau"):
        tabulate(theta, mu, 0.0, "squared", "linear", 100)
    with pytest.raises(ValueError, match="mu"):
        tabulate(theta, torch.ones(3), 0.1, "squared", "linear", 100)
    with pytest.raises(ValueError, match="table"):
        table_lookup(torch.zeros(2, 5), torch.ones(2, 1), torch.zeros(1, 10))


class _Largest(TorchDispatchMode):
    """Records the largest tensor any aten op produces."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_memory_linear_in_n_not_n_times_k():
    """8 bits (K = 256), soft: no op in forward or backward makes a tensor near N * K values, and
    autograd keeps O(1) values per weight."""
    w, s, mu, theta, spacing = setup(8, n=1 << 14, dtype=torch.float32)
    tau = 1.0 * spacing**2
    size = choose_grid(theta, tau, 10**9, "squared", mu)
    assert size is not None
    n = w.numel()
    saved = []
    leaves = [t.clone().requires_grad_() for t in (w, s, mu, theta)]
    mode = _Largest()

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = table_soft(*leaves, tau, "squared", "companded", size)
        y.sum().backward()
    # [N, 2] gathered pairs or the [W, M] grid window (W <= 32 here) at most; N * K would be 256 N
    assert mode.largest <= max(2 * n, 32 * size) < n * 256 // 4
    assert sum(saved) <= 16 * n + 4096 * size  # w, int32 cell and pos per weight plus the grid graph
    assert leaves[3].grad is not None and torch.isfinite(leaves[3].grad).all()


def test_float32_close_to_float64():
    w, s, mu, theta, spacing = setup(5)
    tau = 0.1 * spacing**2
    size = choose_grid(theta, tau, 10**9, "squared", mu)
    y64 = table_soft(w, s, mu, theta, tau, "squared", "companded", size)
    y32 = table_soft(w.float(), s.float(), mu.float(), theta.float(), tau, "squared", "companded", size)
    assert float((y32.double() - y64).abs().max()) <= VALUE_TOL * spacing * float(s)
    assert math.isfinite(float(y32.sum()))


# -- integration in GeneralQuantizer ----------------------------------------------------------
@pytest.mark.parametrize("gran,opts", [("tensor", {}), ("channel", {"domain": "linear", "learn_mu": True}),
                                       ("tensor", {"distance": "absolute", "learn_scale": True})])
def test_quantizer_table_close_to_window(gran, opts):
    from subbit.quant.gq import GeneralQuantizer

    torch.manual_seed(0)
    w = torch.randn(8, 512)
    outs = []
    for impl in ("table", "window"):
        q = GeneralQuantizer(w, 4, gran, impl=impl, **opts)
        q.set_tau(0.1)
        assert (q.grid_size() is None) == (impl == "window")
        wl = w.clone().requires_grad_()
        y = q(wl)
        (y * torch.linspace(-1, 2, y.numel()).reshape(y.shape)).sum().backward()
        outs.append([y.detach(), wl.grad] + [p.grad for p in q.parameters()])
    gap = float(w.abs().max()) * 2 / 15
    factor = 3.0 if opts.get("distance") == "absolute" else 1.0
    (y, gw, *gp), (y0, gw0, *gp0) = outs
    assert float((y - y0).abs().max()) <= factor * VALUE_TOL * gap * 5  # expand stretches by <= mu
    assert rel(gw, gw0) <= factor * GRAD_W_TOL
    for a, b in zip(gp, gp0):
        assert rel(a, b) <= factor * GRAD_W_TOL


def test_quantizer_auto_policy():
    from subbit.quant.gq import GeneralQuantizer

    w = torch.randn(256, 256)
    q = GeneralQuantizer(w, 4)
    assert q.impl == "auto"
    q.set_tau(0.1)
    assert q.grid_size() is not None  # big tensor, moderate tau: table
    q.set_tau(1e-4)
    assert q.grid_size() is None  # end of the anneal: exact window
    q.set_tau(0.0)
    assert q.grid_size() is None  # hard mode
    small = GeneralQuantizer(torch.randn(16, 16), 4)
    small.set_tau(0.1)
    assert small.grid_size() is None  # grid would outweigh the weights
    forced = GeneralQuantizer(torch.randn(16, 16), 4, impl="table")
    forced.set_tau(1e-6)
    assert forced.grid_size() == MAX_GRID  # forced table, capped
    with pytest.raises(ValueError, match="impl"):
        GeneralQuantizer(w, 4, impl="fast")

"""The fused C table lookup (subbit.quant.native) against the PyTorch path of soft_table.

Reference = TableLookup's torch ops in float64 on the same (float32) inputs, so differences
are the C kernel's float32 rounding only: values within 1e-6 of s, gradients within 1e-5 of
the largest reference entry. Tables come from soft_table.tabulate for real GQ centroids.
"""

import logging

import pytest
import torch

from subbit.quant import native, soft_table
from subbit.quant.soft_table import choose_grid, table_lookup, table_soft, tabulate

torch.set_num_threads(1)

needs_lib = pytest.mark.skipif(native._load() is None, reason="quant/_native library not built")
VALUE_TOL, GRAD_TOL = 1e-6, 1e-5


def gq_table(bits, groups, tau_rel=0.1, seed=0, mu=5.0, max_grid=4096):
    """A float32 GQ table [G, M] for jittered centroids (as in test_soft_table), grid from the policy."""
    g = torch.Generator().manual_seed(seed)
    k = 2**bits
    spacing = 2.0 / (k - 1)
    theta = torch.linspace(-1, 1, k) + 0.3 * spacing * (torch.rand(groups, k, generator=g) - 0.5)
    theta = theta.clamp(-1, 1).sort(1).values
    tau = tau_rel * spacing**2
    m = choose_grid(theta, tau, 10**9, "squared", mu, max_grid=max_grid, clip=True)
    return tabulate(theta, mu, tau, "squared", "companded", m).detach()


def weights(groups, n, seed=1, outside=0.1):
    """w [G, N] and s [G, 1] with about ``outside`` of the weights beyond +-s (clamped)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(groups, n, generator=g)
    s = torch.quantile(w.abs(), 1.0 - outside, dim=1, keepdim=True)
    return w, s


def lookup_grads(w, s, table, gy):
    leaves = [t.clone().requires_grad_() for t in (w, s, table)]
    y = table_lookup(*leaves)
    y.backward(gy)
    return [y.detach()] + [t.grad for t in leaves]


def check(got, ref, s):
    y, gw, gs, gt = got
    ry, rgw, rgs, rgt = ref
    assert float((y.double() - ry).abs().max()) <= VALUE_TOL * float(s.abs().max())
    for name, a, b in (("w", gw, rgw), ("s", gs, rgs), ("table", gt, rgt)):
        err = float((a.double() - b).abs().max() / b.abs().max().clamp(min=1e-30))
        assert err <= GRAD_TOL, f"grad {name}: {err:.2e}"


@needs_lib
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("groups", [1, 3])
def test_parity_with_float64_torch_path(bits, groups, monkeypatch):
    monkeypatch.delenv("SUBBIT_NATIVE", raising=False)  # this test is about the C path: force it on
    table = gq_table(bits, groups, seed=bits)
    w, s = weights(groups, 4000, seed=bits)
    gy = torch.randn(w.shape, generator=torch.Generator().manual_seed(7))
    calls = []
    monkeypatch.setattr(native, "table_forward", lambda *a: calls.append(1) or _fwd(*a))
    got = lookup_grads(w, s, table, gy)
    assert calls, "float32 CPU input did not take the C path"
    ref = lookup_grads(w.double(), s.double(), table.double(), gy.double())
    assert len(calls) == 1, "float64 input must take the torch path"
    check(got, ref, s)


_fwd = native.table_forward


@needs_lib
def test_matches_float32_torch_path(monkeypatch):
    """Against the previous float32 implementation (torch ops): both against float64, the C
    path is at least as accurate in every output (the torch path's float32 position picks the
    neighbouring cell near borders, and its table gradient loses ~1e-4 to cancellation)."""
    table = gq_table(4, 2)
    w, s = weights(2, 5000)
    gy = torch.randn(w.shape, generator=torch.Generator().manual_seed(3))
    got = lookup_grads(w, s, table, gy)
    ref = lookup_grads(w.double(), s.double(), table.double(), gy.double())
    monkeypatch.setenv("SUBBIT_NATIVE", "0")
    assert not native.available()
    old = lookup_grads(w, s, table, gy)
    for name, a, b, r in zip(("value", "w", "s", "table"), got, old, ref):
        err_c, err_torch = (float((x.double() - r).norm() / r.norm()) for x in (a, b))
        assert err_c <= max(err_torch, 1e-7), f"{name}: C {err_c:.2e} vs torch {err_torch:.2e}"
        assert err_torch < 1e-3, name


@needs_lib
def test_clamped_weights():
    """|w| > s: value s * T(+-1), zero gradient to w; |w| == s still passes gradient."""
    table = gq_table(3, 1)
    s = torch.tensor([[0.5]])
    w = torch.tensor([[-2.0, -0.5, -0.2, 0.0, 0.3, 0.5, 0.9, 7.0]])
    gw, gt, gs = native.table_backward(w, torch.ones_like(w), s, table)
    y = native.table_forward(w, s, table)
    assert torch.equal(y[0, [0, 7]], s[0] * table[0, [0, -1]])
    assert torch.equal(gw[0, [0, 6, 7]], torch.zeros(3))
    assert bool((gw[0, [1, 5]] != 0).all())
    # table gradient: clamped weights put their whole (s-scaled) upstream gradient on an end point
    assert torch.allclose(gt.sum(), s[0, 0] * w.numel())


@needs_lib
def test_isa_paths_agree():
    table = gq_table(5, 2)
    w, s = weights(2, 3001)
    gy = torch.randn(w.shape, generator=torch.Generator().manual_seed(5))
    in_use = native.isa()  # portable under SUBBIT_KERNEL=portable, else the best
    outs = []
    try:
        best = native.set_isa(None)
        for path in sorted({"portable", best}):
            assert native.set_isa(path) == path
            outs.append((native.table_forward(w, s, table), *native.table_backward(w, gy, s, table)))
    finally:
        native.set_isa(in_use)
    assert native.isa() == in_use
    for a, b in zip(outs[0], outs[-1]):
        assert float((a - b).abs().max() / b.abs().max()) <= 1e-6
    with pytest.raises(ValueError, match="isa"):
        native.set_isa("sse9")


@needs_lib
def test_partial_gradients_and_zero_scale():
    table = gq_table(2, 1)
    w, s = weights(1, 100)
    gy = torch.ones_like(w)
    gw, gt, gs = native.table_backward(w, gy, s, table, need_w=False, need_s=False)
    assert gw is None and gs is None
    assert torch.allclose(gt, native.table_backward(w, gy, s, table)[1])
    y = native.table_forward(w, torch.zeros(1, 1), table)  # s = 0: finite, zero output
    assert torch.equal(y, torch.zeros_like(y))
    empty = torch.zeros(1, 0)
    assert native.table_forward(empty, s, table).shape == (1, 0)
    gw, gt, gs = native.table_backward(empty, empty, s, table)
    assert gw.shape == (1, 0) and not gt.any() and not gs.any()


@needs_lib
def test_bad_buffers_raise():
    table = gq_table(2, 1)
    w, s = weights(1, 64)
    with pytest.raises(ValueError, match="w must be a contiguous"):
        native.table_forward(w.double(), s, table)
    with pytest.raises(ValueError, match="w must be a contiguous"):
        native.table_forward(torch.randn(64, 2).t(), s, table.expand(2, -1).contiguous())
    with pytest.raises(ValueError, match="s has 2 elements"):
        native.table_forward(w, torch.ones(2), table)
    with pytest.raises(ValueError, match="code -1"):
        native.table_forward(w, s, table[:, :1].contiguous())


@needs_lib
def test_gq_soft_gradients_match_torch_path(monkeypatch):
    """Through tabulate (float32 grid work either way): gradients to w, s, mu and theta are at
    least as close to a float64 evaluation as the float32 torch path's."""
    bits, groups = 4, 2
    g = torch.Generator().manual_seed(11)
    w = torch.randn(groups, 6000, generator=g)
    s = w.abs().amax(1, keepdim=True)
    theta = torch.linspace(-1, 1, 2**bits).expand(groups, -1).contiguous()
    mu = torch.full((groups, 1), 5.0)
    tau = 0.1 * (2.0 / (2**bits - 1)) ** 2
    m = choose_grid(theta, tau, 10**9, "squared", 5.0)  # the policy's grid, whatever N
    gy = torch.randn(w.shape, generator=g)

    def grads(dtype):
        leaves = [t.to(dtype).clone().requires_grad_() for t in (w, s, mu, theta)]
        table_soft(*leaves, tau, "squared", "companded", m).backward(gy.to(dtype))
        return [t.grad.double() for t in leaves]

    got, ref = grads(torch.float32), grads(torch.float64)
    monkeypatch.setenv("SUBBIT_NATIVE", "0")
    old = grads(torch.float32)
    for name, a, b, r in zip(("w", "s", "mu", "theta"), got, old, ref):
        err_c, err_torch = (float((x - r).norm() / r.norm()) for x in (a, b))
        assert err_c <= 1.5 * err_torch + 1e-6, f"{name}: C {err_c:.2e} vs torch {err_torch:.2e}"
        assert err_c < 1e-3, name


def test_torch_path_gradcheck_float64():
    """The torch path (float64; what the C path is checked against) against finite differences."""
    g = torch.Generator().manual_seed(2)
    w = (torch.rand(2, 12, generator=g, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    s = torch.tensor([[1.0], [0.9]], dtype=torch.float64, requires_grad=True)
    table = torch.randn(2, 9, generator=g, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(table_lookup, (w, s, table), eps=1e-7, atol=1e-6)


def test_missing_library_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("SUBBIT_NATIVE", raising=False)  # SUBBIT_NATIVE=0 would skip the load it checks
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_tried", False)
    monkeypatch.setattr(native, "_library_file", lambda: None)
    w, s = weights(1, 500)
    table = gq_table(3, 1)
    with caplog.at_level(logging.WARNING, logger=native.__name__):
        assert not native.available() and not native.available()
        y = table_lookup(w, s, table)
    assert sum("not built" in r.getMessage() for r in caplog.records) == 1
    ref = soft_table.TableLookup.apply(w.double(), s.double(), table.double())
    assert float((y.double() - ref).abs().max()) < 1e-4
    with pytest.raises(RuntimeError, match="not built"):
        native.table_forward(w, s, table)

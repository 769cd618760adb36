import pytest
import torch

from subbit.quant.mulaw import compand, expand

torch.set_num_threads(1)


@pytest.mark.parametrize("mu", [0.0, 1e-6, 1e-3, 1.0, 10.0, 255.0])
def test_round_trip_odd_monotone(mu):
    x = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    y = compand(x, mu)
    assert torch.allclose(expand(y, mu), x, atol=1e-9)
    assert torch.allclose(compand(-x, mu), -y)
    assert torch.all(y[1:] > y[:-1])
    assert y[0] == -1 and y[-1] == 1


def test_mu_zero_is_identity_and_small_mu_is_continuous():
    x = torch.linspace(-1, 1, 101, dtype=torch.float64)
    assert torch.equal(compand(x, 0.0), x)
    assert torch.equal(expand(x, 0.0), x)
    # the series branch (mu < 1e-4) joins the exact formula without a jump
    below, above = compand(x, 0.99e-4), compand(x, 1.01e-4)
    assert torch.allclose(below, above, atol=1e-7)


def test_compression_grows_with_mu():
    x = torch.tensor([0.1], dtype=torch.float64)
    vals = [compand(x, mu).item() for mu in (0.0, 1.0, 10.0, 255.0)]
    assert vals == sorted(vals) and vals[0] == pytest.approx(0.1)


@pytest.mark.parametrize("fn", [compand, expand])
@pytest.mark.parametrize("mu0", [0.0, 5e-5, 0.5, 10.0, 255.0])
def test_gradcheck_x_and_mu(fn, mu0):
    x = (torch.rand(3, 5, dtype=torch.float64) * 2 - 1).requires_grad_()
    mu = torch.full((3, 1), mu0, dtype=torch.float64, requires_grad=True)
    if mu0 == 0.0:  # one-sided at the boundary: compare with a forward difference instead
        mu = mu.detach().requires_grad_(False)
    assert torch.autograd.gradcheck(lambda a, m: fn(a, m), (x, mu), eps=1e-7, atol=1e-5)


def test_gradient_nonzero_at_zero():
    # sign(x) * f(|x|) would give 0 here and freeze a weight sitting on a zero centroid
    x = torch.zeros(1, requires_grad=True)
    compand(x, 10.0).sum().backward()
    assert x.grad.item() == pytest.approx(10.0 / torch.log1p(torch.tensor(10.0)).item(), rel=1e-5)


def test_negative_mu_rejected():
    with pytest.raises(ValueError, match="mu"):
        compand(torch.zeros(2), -1.0)

import math

import pytest
import torch
from torch import nn

from subbit.quant import GQScheduler, QuantConfig, prepare, quantized_tensors

torch.set_num_threads(1)


def prepared(bits: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return prepare(nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 1)), QuantConfig.from_dict({"default": {"bits": bits}}))


@pytest.mark.parametrize("anneal", ["exp", "cosine", "linear"])
def test_tau_reaches_end_at_anneal_end_and_stays(anneal):
    model = prepared()
    sched = GQScheduler(model, total_steps=100, tau_start=1.0, tau_end=1e-3, anneal=anneal, anneal_end=0.8)
    taus = [sched.tau]
    for _ in range(100):
        sched.step()
        taus.append(sched.tau)
    assert taus[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    assert taus[79] > 1e-3 and taus[80] == pytest.approx(1e-3) and taus[100] == pytest.approx(1e-3)
    for qt in quantized_tensors(model):
        assert float(qt.quantizer.tau) == pytest.approx(1e-3)
    if anneal == "exp":
        assert taus[40] == pytest.approx(math.sqrt(1e-3))


def test_step_constrains_centroids():
    model = prepared()
    sched = GQScheduler(model, 10)
    q = next(quantized_tensors(model)).quantizer
    with torch.no_grad():
        q.theta.copy_(torch.tensor([[3.0, -2.0, 0.1, 0.0]]))
    sched.step()
    assert torch.equal(q.theta, torch.tensor([[-1.0, 0.0, 0.1, 1.0]]))


def test_project_every_tq_steps():
    model = prepared()
    sched = GQScheduler(model, 10, quant_every=3)
    qts = list(quantized_tensors(model))
    for step in range(1, 7):
        with torch.no_grad():
            for qt in qts:
                qt.latent.add_(0.01 * torch.randn_like(qt.latent))  # an optimizer step
        sched.step()
        on_grid = all(torch.equal(qt.latent, qt.quantizer.hard(qt.latent)) for qt in qts)
        assert on_grid == (step % 3 == 0)
        if on_grid:
            assert all(qt.latent.unique().numel() <= 4 for qt in qts)


def test_forward_mode_quantizes_only_every_tq_steps():
    model = prepared()
    x = torch.randn(5, 6)
    sched = GQScheduler(model, 10, quant_every=2, quant_mode="forward")
    qt = next(quantized_tensors(model))
    for step in range(4):
        model(x)
        used = qt.module.weight
        if step % 2 == 0:
            assert torch.allclose(used, qt.quantizer(qt.latent))
        else:
            assert torch.equal(used, qt.latent.detach())
        sched.step()


def test_state_dict_resume():
    model = prepared()
    a = GQScheduler(model, 50, anneal="cosine", quant_every=5)
    for _ in range(17):
        a.step()
    b = GQScheduler(model, 1)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict() and b.tau == a.tau
    a.step()
    b.step()
    assert b.tau == a.tau
    with pytest.raises(ValueError, match="step_count"):
        b.load_state_dict({k: v for k, v in a.state_dict().items() if k != "step_count"})


@pytest.mark.parametrize(
    "kwargs, name",
    [({"total_steps": 0}, "total_steps"), ({"tau_start": -1.0}, "tau_start"), ({"tau_end": 2.0}, "tau_end"),
     ({"anneal": "step"}, "anneal"), ({"anneal_end": 1.5}, "anneal_end"), ({"quant_every": -1}, "quant_every"),
     ({"quant_mode": "both"}, "quant_mode")],
)
def test_bad_arguments_named(kwargs, name):
    args = {"total_steps": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        GQScheduler(prepared(), **args)


def test_requires_prepared_model():
    with pytest.raises(ValueError, match="prepare"):
        GQScheduler(nn.Linear(2, 2), 10)


@pytest.mark.parametrize("new_total", [40, 60, 160])
def test_set_total_steps_keeps_tau_monotone_and_ends_at_the_new_total(new_total):
    model = prepared()
    sched = GQScheduler(model, total_steps=100, tau_start=1.0, tau_end=1e-3, anneal="linear", anneal_end=0.8)
    taus = [sched.tau]
    for _ in range(30):
        sched.step()
        taus.append(sched.tau)
    before = sched.tau
    sched.set_total_steps(new_total)
    assert sched.tau == pytest.approx(before)  # no jump at the change
    for _ in range(new_total - 30):
        sched.step()
        taus.append(sched.tau)
    assert all(a >= b for a, b in zip(taus, taus[1:]))
    # progress is linear from step 30 to the new end: tau_end at 80% of the overall progress
    assert sched.progress_at(new_total) == pytest.approx(1.0) and taus[-1] == pytest.approx(1e-3)
    assert taus[-2] == pytest.approx(1e-3)  # the hard tail is still there


def test_rebased_schedule_round_trips_and_old_state_loads():
    model = prepared()
    sched = GQScheduler(model, total_steps=50)
    for _ in range(10):
        sched.step()
    sched.set_total_steps(30)
    state = sched.state_dict()
    other = GQScheduler(model, total_steps=7)
    other.load_state_dict(state)
    assert [other.tau_at(s) for s in range(10, 31)] == [sched.tau_at(s) for s in range(10, 31)]
    legacy = {k: v for k, v in state.items() if not k.startswith("rebase_")}
    other.load_state_dict(legacy)  # a checkpoint from before rebasing: plain step / total
    assert other.progress_at(15) == pytest.approx(15 / 30)
    with pytest.raises(ValueError, match="rebase_progress"):
        other.load_state_dict({**state, "rebase_progress": 1.5})
    with pytest.raises(ValueError, match="total_steps"):
        sched.set_total_steps(0)

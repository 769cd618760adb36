"""The training loop's split gradient clip (``latent_clip``, issue 12 item 7): off by default and
then bit-identical to the one global clip; on, each latent is bounded on its own and the other
parameters are clipped without the latents."""

from __future__ import annotations

import argparse
import math

import pytest
import torch
from torch import nn

import subbit.asr.training.loop as loop
from subbit.asr.checkpoint import RunPaths, load_checkpoint, read_run_config
from subbit.asr.train import TrainConfig, read_log, train
from subbit.commands.train import add_schedule_options, config_from_args
from subbit.quant import QuantConfig, prepare, quantized_tensors

torch.set_num_threads(1)


def _prepared(bits: int = 2) -> nn.Module:
    torch.manual_seed(0)
    return prepare(nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)),
                   QuantConfig.from_dict({"default": {"bits": bits}}))


def _backward(model: nn.Module, scale: float = 100.0, latent_scale: float = 1.0) -> None:
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    (model(torch.randn(8, 16)) * scale).square().sum().backward()
    if latent_scale != 1.0:
        for qt in quantized_tensors(model):
            qt.latent.grad.mul_(latent_scale)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _split(model: nn.Module) -> tuple[set[str], set[str]]:
    ids = {id(qt.latent) for qt in quantized_tensors(model)}
    latents = {n for n, p in model.named_parameters() if id(p) in ids}
    return latents, {n for n, _ in model.named_parameters()} - latents


def test_off_is_the_global_clip_bit_for_bit() -> None:
    a, b = _prepared(), _prepared()
    _backward(a)
    _backward(b)
    total = loop.clip_gradients(a, 5.0)
    ref = nn.utils.clip_grad_norm_(b.parameters(), 5.0)
    assert torch.equal(total, ref) and ref > 5.0  # the clip binds here
    ga, gb = _grads(a), _grads(b)
    assert ga.keys() == gb.keys() and all(torch.equal(ga[k], gb[k]) for k in ga)


def test_on_bounds_each_latent_and_clips_the_others_without_them() -> None:
    model = _prepared()
    latents, others = _split(model)
    assert latents and others
    _backward(model)
    before = _grads(model)
    total = loop.clip_gradients(model, 5.0, latent_clip=0.5)
    after = _grads(model)
    # the returned norm is the norm of every gradient before clipping (what log.csv shows)
    assert float(total) == pytest.approx(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in before.values()]))),
                                         rel=1e-5)
    for n in latents:  # each latent alone at the bound, direction kept
        assert before[n].norm() > 0.5
        assert float(after[n].norm()) == pytest.approx(0.5, rel=1e-4)
        assert torch.allclose(after[n], before[n] * (after[n].norm() / before[n].norm()))
    other_norm = float(torch.linalg.vector_norm(torch.stack([before[n].norm() for n in others])))
    assert other_norm > 5.0
    for n in others:  # one common factor, from the other parameters' own norm
        assert torch.allclose(after[n], before[n] * (5.0 / other_norm), rtol=1e-4, atol=1e-7)

    # the latents' size does not reach the other parameters: 1000x larger latent gradients give
    # the same clipped others, while the global clip would shrink them 1000-fold
    model2 = _prepared()
    _backward(model2, latent_scale=1000.0)
    loop.clip_gradients(model2, 5.0, latent_clip=0.5)
    big = _grads(model2)
    assert all(torch.equal(big[n], after[n]) for n in others)
    model3 = _prepared()
    _backward(model3, latent_scale=1000.0)
    loop.clip_gradients(model3, 5.0)
    assert all(float(_grads(model3)[n].norm()) < 0.01 * float(after[n].norm()) + 1e-12 for n in others
               if float(after[n].norm()) > 0)


def test_on_under_the_bounds_changes_nothing_and_fp32_is_the_global_clip() -> None:
    model = _prepared()
    _backward(model, scale=1e-3)
    before = _grads(model)
    loop.clip_gradients(model, 5.0, latent_clip=10.0)
    after = _grads(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.manual_seed(0)
    fp32 = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    twin = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 4))
    twin.load_state_dict(fp32.state_dict())
    _backward(fp32)
    _backward(twin)
    assert torch.equal(loop.clip_gradients(fp32, 5.0, latent_clip=0.5), nn.utils.clip_grad_norm_(twin.parameters(), 5.0))
    assert all(torch.equal(p.grad, q.grad) for p, q in zip(fp32.parameters(), twin.parameters()))


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), True, "1"])
def test_config_refuses_a_bad_latent_clip(bad) -> None:
    with pytest.raises(ValueError, match="latent_clip"):
        TrainConfig(data="d", out="o", steps=1, latent_clip=bad)


def test_config_default_off_and_old_train_args_load() -> None:
    cfg = TrainConfig(data="d", out="o", steps=1)
    assert cfg.latent_clip is None
    old = cfg.to_dict()
    del old["latent_clip"]  # a run written before the option existed
    assert TrainConfig.from_dict(old).latent_clip is None
    assert TrainConfig.from_dict({**old, "latent_clip": 2}).latent_clip == 2


def test_cli_flag_reaches_the_config() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data")
    p.add_argument("--out")
    add_schedule_options(p)
    args = p.parse_args(["--data", "d", "--out", "o", "--steps", "3", "--latent-clip", "0.75"])
    assert config_from_args(args).latent_clip == 0.75
    args = p.parse_args(["--data", "d", "--out", "o", "--steps", "3"])
    assert config_from_args(args).latent_clip is None


# -- the loop itself, on the dummy corpus ---------------------------------------------------------
def _qat(corpus, tmp_path, name: str, **kw) -> RunPaths:
    """A few steps of 2-bit GQ from scratch on the dummy corpus (seed 0, one thread)."""
    rules = tmp_path / "gq2.json"
    QuantConfig.from_dict({"default": {"method": "gq", "bits": 2}}).save(rules)
    cfg = TrainConfig(data=str(corpus), out=str(tmp_path / name), model="rnnt", preset="tiny", steps=5, batch_size=4,
                      tokenizer="char", warmup_steps=1, ckpt_every=0, progress=False, threads=1, augment=False,
                      quant=str(rules), lr=1e-3, **kw)
    train(cfg)
    return RunPaths(tmp_path / name)


def _weights(paths: RunPaths) -> dict[str, torch.Tensor]:
    return load_checkpoint(paths.last)["model"]


def test_qat_run_off_equals_the_loop_before_the_option(corpus, tmp_path, monkeypatch) -> None:
    off = _qat(corpus, tmp_path, "off")
    # the loop as it was: the inline global clip, with no latent path at all
    monkeypatch.setattr(loop, "clip_gradients",
                        lambda model, grad_clip, latent_clip=None: nn.utils.clip_grad_norm_(model.parameters(), grad_clip))
    old = _qat(corpus, tmp_path, "old")
    a, b = _weights(off), _weights(old)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la, lb = read_log(off.log), read_log(old.log)
    assert [(r["loss"], r["grad_norm"]) for r in la] == [(r["loss"], r["grad_norm"]) for r in lb]
    assert read_run_config(off.root)["train_args"]["latent_clip"] is None


def test_qat_run_on_bounds_the_latents_in_the_loop(corpus, tmp_path, monkeypatch) -> None:
    seen: list[tuple[float, float]] = []  # (max latent grad norm, others' norm) after each step's clip
    real = loop.clip_gradients

    def spy(model, grad_clip, latent_clip=None):
        total = real(model, grad_clip, latent_clip)
        latents, _ = _split(model)
        named = dict(model.named_parameters())
        lat = max(float(named[n].grad.norm()) for n in latents if named[n].grad is not None)
        oth = torch.linalg.vector_norm(torch.stack([p.grad.norm() for n, p in named.items()
                                                    if n not in latents and p.grad is not None]))
        seen.append((lat, float(oth)))
        return total

    monkeypatch.setattr(loop, "clip_gradients", spy)
    on = _qat(corpus, tmp_path, "on", latent_clip=1e-3, grad_clip=1.0)
    assert len(seen) == 5
    assert all(lat <= 1e-3 * (1 + 1e-4) and oth <= 1.0 * (1 + 1e-4) for lat, oth in seen)
    assert read_run_config(on.root)["train_args"]["latent_clip"] == 1e-3
    rows = read_log(on.log)
    assert all(math.isfinite(r["grad_norm"]) and r["grad_norm"] > 1e-3 for r in rows)  # the unclipped norm
    monkeypatch.setattr(loop, "clip_gradients", real)
    off = _qat(corpus, tmp_path, "off", grad_clip=1.0)
    a, b = _weights(on), _weights(off)
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the option changed the training

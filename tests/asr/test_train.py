"""The training loop on the dummy corpus: run directory, schedules, NaN guard, QAT, load_run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from subbit.asr.checkpoint import RunPaths, load_checkpoint, read_run_config
from subbit.asr.train import LRSchedule, TrainConfig, TrainingDiverged, read_log, train
from subbit.runs import load_run
from subbit.testing.dummies import dummy_batch

torch.set_num_threads(1)


def tiny(corpus, out, **kw) -> TrainConfig:
    args = dict(data=str(corpus), out=str(out), model="rnnt", preset="tiny", steps=6, batch_size=4,
                tokenizer="char", warmup_steps=2, ckpt_every=3, progress=False, threads=1)
    args.update(kw)
    return TrainConfig(**args)


@pytest.mark.slow
def test_train_writes_the_run_directory(corpus, tmp_path) -> None:
    result = train(tiny(corpus, tmp_path / "run"))
    paths = RunPaths(tmp_path / "run")
    assert result.steps == 6 and result.stopped == "done"
    for f in (paths.config, paths.tokenizer, paths.last, paths.final, paths.log):
        assert f.is_file(), f
    cfg = read_run_config(paths.root)
    assert cfg["quant"] is None and cfg["tokenizer"]["kind"] == "char"
    assert cfg["model"]["arch"] == "rnnt" and cfg["train_args"]["steps"] == 6
    rows = read_log(paths.log)
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    assert all(math.isfinite(r["loss"]) and r["audio_sec_per_sec"] > 0 for r in rows)
    # cosine decay from the peak (the warmup is capped at 10% of the steps: one step here)
    lrs = [r["lr"] for r in rows]
    assert lrs[0] == pytest.approx(2e-3) and all(a >= b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < lrs[0]
    ckpt = load_checkpoint(paths.last)
    assert ckpt["step"] == 6 and ckpt["total_steps"] == 6
    assert set(ckpt["rng"]) >= {"python", "numpy", "torch"} and set(ckpt["data"]) == {"epoch", "index"}


@pytest.mark.slow
def test_refuses_to_overwrite_a_run(corpus, tmp_path) -> None:
    train(tiny(corpus, tmp_path / "run", steps=2))
    with pytest.raises(ValueError, match="already holds a run"):
        train(tiny(corpus, tmp_path / "run", steps=2))


@pytest.mark.slow
def test_loss_goes_down(corpus, tmp_path) -> None:
    train(tiny(corpus, tmp_path / "run", steps=40, lr=5e-3, warmup_steps=4, ckpt_every=0, augment=False))
    losses = [r["loss"] for r in read_log(RunPaths(tmp_path / "run").log)]
    assert sum(losses[-5:]) / 5 < 0.8 * sum(losses[:5]) / 5


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path) -> None:
    def poison(step: int, loss: torch.Tensor) -> torch.Tensor:
        return loss * float("nan") if step == 5 else loss

    paths = RunPaths(tmp_path / "run")
    with pytest.raises(TrainingDiverged, match="non-finite loss at step 5"):
        train(tiny(corpus, paths.root, steps=10, ckpt_every=2), loss_hook=poison)
    ckpt = load_checkpoint(paths.last)
    assert ckpt["step"] == 4  # the four good steps, not the poisoned one
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert not paths.final.exists()
    assert max(int(r["step"]) for r in read_log(paths.log)) == 4


@pytest.mark.slow
def test_nan_guard_cli_exit_code(corpus, tmp_path, monkeypatch, capsys) -> None:
    import subbit.asr.train as train_mod
    from subbit import cli

    real = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda cfg: real(cfg, loss_hook=lambda s, l: l + float("inf")))
    code = cli.main(["train", "--model", "rnnt", "--preset", "tiny", "--data", str(corpus), "--out",
                     str(tmp_path / "run"), "--steps", "3", "--tokenizer", "char", "--no-progress"])
    assert code == 3
    assert "non-finite loss at step 1" in capsys.readouterr().err


def test_lr_schedule_shape() -> None:
    s = LRSchedule(peak=1.0, warmup=10, total=100, final_ratio=0.1)
    assert s(0) == pytest.approx(0.1) and s(9) == pytest.approx(1.0)
    assert s(100) == pytest.approx(0.1) and s(55) == pytest.approx(0.55)
    assert LRSchedule(1.0, 2, None)(50) == 1.0  # total unknown while calibrating


def test_config_validation_names_the_field(corpus, tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one of minutes"):
        tiny(corpus, tmp_path, steps=None)
    with pytest.raises(ValueError, match="batch_size"):
        tiny(corpus, tmp_path, batch_size=0)
    with pytest.raises(ValueError, match="preset"):
        tiny(corpus, tmp_path, preset="huge")
    with pytest.raises(FileNotFoundError, match="train.jsonl"):
        train(tiny(tmp_path / "nowhere", tmp_path / "run"))


@pytest.mark.slow
def test_time_budget_sets_total_steps(corpus, tmp_path) -> None:
    result = train(tiny(corpus, tmp_path / "run", steps=None, minutes=0.03, calib_steps=4))
    assert result.stopped in ("done", "time")
    assert result.total_steps >= 4 and result.steps >= 4
    assert RunPaths(tmp_path / "run").final.is_file()


def _gq_rules(path, bits: int = 2):
    path.write_text(json.dumps({"default": {"method": "gq", "bits": bits},
                                "rules": {"Embedding": {"bits": 3}}}))
    return path


@pytest.mark.slow
def test_qat_anneals_and_writes_converted_final(corpus, tmp_path) -> None:
    import subbit.quant as sq

    rules = _gq_rules(tmp_path / "rules.json")
    out = tmp_path / "qrun"
    train(tiny(corpus, out, steps=12, quant=str(rules), tau_start=1.0, tau_end=1e-3, anneal_end=0.75))
    rows = read_log(RunPaths(out).log)
    assert rows[0]["tau"] > 0.1 and rows[-1]["tau"] == pytest.approx(1e-3)
    assert read_run_config(out)["quant"]["default"]["bits"] == 2
    loaded = load_run(out, "final")
    assert loaded.quantized and loaded.converted
    n = 0
    for qt in sq.quantized_tensors(loaded.model):
        w = qt.quantizer(qt.latent).detach()
        groups = w.reshape(qt.quantizer.num_groups, -1)
        for g in groups:
            assert torch.unique(g).numel() <= 2**qt.quantizer.bits, qt.name
        n += 1
    assert n > 0


@pytest.mark.slow
def test_load_run_round_trip(corpus, tmp_path) -> None:
    import subbit.quant as sq

    out = tmp_path / "run"
    train(tiny(corpus, out, steps=4))
    batch = dummy_batch(batch_size=2, frames=24, vocab_size=load_run(out).model.vocab_size)
    args = (batch["feats"], batch["feat_lens"], batch["targets"], batch["target_lens"])
    final, last = load_run(out, "final"), load_run(out, "last")
    assert not final.quantized
    assert torch.equal(final.model(*args), last.model(*args))
    # QAT: the converted final.pt equals converting the soft model of the last checkpoint
    rules = _gq_rules(tmp_path / "rules.json")
    qout = tmp_path / "qrun"
    train(tiny(corpus, qout, steps=4, quant=str(rules), init=str(out)))
    qfinal, qlast = load_run(qout, "final"), load_run(qout, "last")
    assert qlast.quantized and not qlast.converted
    sq.convert(qlast.model)
    assert torch.allclose(qfinal.model(*args), qlast.model(*args), atol=1e-6)
    assert qfinal.tokenizer.to_bytes() == final.tokenizer.to_bytes()  # warm start keeps the tokenizer
    assert read_run_config(qout)["features"] == read_run_config(out)["features"]  # and the feature stats


def test_load_run_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path)
    with pytest.raises(ValueError, match="which"):
        load_run(tmp_path, which="middle")


def test_lr_schedule_rebases_to_a_new_total_without_rising() -> None:
    sched = LRSchedule(peak=1.0, warmup=5, total=100, final_ratio=0.1)
    lrs = [sched(s) for s in range(40)]
    sched.set_total(60, 40)  # the run got slower: fewer steps than first thought
    lrs += [sched(s) for s in range(40, 55)]
    sched.set_total(80, 55)  # ... then faster again
    lrs += [sched(s) for s in range(55, 81)]
    after_warmup = lrs[5:]
    assert all(a >= b for a, b in zip(after_warmup, after_warmup[1:]))
    assert lrs[80] == pytest.approx(0.1) and lrs[79] > 0.1
    state = sched.state_dict()
    again = LRSchedule(peak=1.0, warmup=5)
    again.load_state_dict(state)
    assert [again(s) for s in range(55, 81)] == lrs[55:]
    with pytest.raises(ValueError, match="unknown key"):
        again.load_state_dict({"bogus": 1})


@pytest.mark.slow
def test_qat_time_budget_holds_when_steps_get_slower(corpus, tmp_path) -> None:
    """The estimate made at the start is corrected: a run whose steps turn 5x slower half-way
    still ends within 10% of its budget, and the anneal still reaches tau_end."""
    import time

    rules = _gq_rules(tmp_path / "rules.json")
    budget_min = 0.06  # 3.6 s
    start = time.perf_counter()

    def slower_later(step: int, loss: torch.Tensor) -> torch.Tensor:
        # fixed sleeps dominate the tiny model's step time, so the slow-down is real on any machine
        time.sleep(0.01 if time.perf_counter() - start < budget_min * 60 / 3 else 0.05)
        return loss

    out = tmp_path / "qrun"
    result = train(tiny(corpus, out, steps=None, minutes=budget_min, quant=str(rules), calib_steps=4,
                        reestimate_every=5, ckpt_every=0, tau_end=1e-3), loss_hook=slower_later)
    assert result.stopped == "done" and result.steps == result.total_steps
    assert result.elapsed <= 1.1 * budget_min * 60, result
    rows = read_log(RunPaths(out).log)
    taus = [r["tau"] for r in rows]
    assert taus[-1] == pytest.approx(1e-3)
    assert all(a >= b - 1e-12 for a, b in zip(taus, taus[1:]))

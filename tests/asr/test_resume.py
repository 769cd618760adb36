"""Resume gives the same losses as an uninterrupted run; checkpoints are atomic and checked."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from subbit.asr.checkpoint import (
    RunPaths,
    atomic_torch_save,
    load_checkpoint,
    read_run_config,
    run_dir_of,
)
from subbit.asr.train import TrainConfig, read_log, train
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    # 10 utterances in batches of 4: an epoch boundary falls inside the run
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=10, n_eval=2)


def cfg(corpus, out, **kw) -> TrainConfig:
    args = dict(data=str(corpus), out=str(out), model="rnnt", preset="tiny", steps=9, batch_size=4,
                tokenizer="char", warmup_steps=2, ckpt_every=0, progress=False, threads=1,
                model_overrides={"dropout": 0.2})  # dropout + augmentation: RNG state matters
    args.update(kw)
    return TrainConfig(**args)


def _losses(out) -> list[float]:
    return [r["loss"] for r in read_log(RunPaths(out).log)]


@pytest.mark.slow
@pytest.mark.parametrize("quant", [False, True], ids=["fp32", "gq"])
def test_resume_gives_identical_losses(corpus, tmp_path, quant) -> None:
    extra = {}
    if quant:
        rules = tmp_path / "rules.json"
        rules.write_text(json.dumps({"default": {"method": "gq", "bits": 3}}))
        extra = {"quant": str(rules), "quant_every": 2}
    train(cfg(corpus, tmp_path / "full", **extra))
    interrupted = train(cfg(corpus, tmp_path / "split", stop_after=5, **extra))
    assert interrupted.stopped == "stop_after" and interrupted.steps == 5
    assert not RunPaths(tmp_path / "split").final.exists()
    resumed = train(cfg(corpus, tmp_path / "split", resume=True))
    assert resumed.steps == 9 and resumed.stopped == "done"
    full, split = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert len(full) == len(split) == 9
    assert full == split  # exactly: same batches, same augmentation, same dropout, same updates
    a = torch.load(RunPaths(tmp_path / "full").final, weights_only=True)
    b = torch.load(RunPaths(tmp_path / "split").final, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_resume_without_checkpoint_is_an_error(corpus, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(cfg(corpus, tmp_path / "none", resume=True))


@pytest.mark.slow
def test_resume_after_a_crash_redoes_the_lost_steps(corpus, tmp_path) -> None:
    out = tmp_path / "run"
    paths = RunPaths(out)
    train(cfg(corpus, out, steps=6, keep_every=4, stop_after=5))
    before = _losses(out)
    assert len(before) == 5
    # a crash after step 5 whose last checkpoint was written at step 4
    shutil.copyfile(paths.periodic(4), paths.last)
    assert load_checkpoint(paths.last)["step"] == 4
    train(cfg(corpus, out, steps=6, resume=True))
    rows = read_log(paths.log)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]  # step 5 logged once, redone
    assert [r["loss"] for r in rows[:5]] == before


def test_atomic_save_leaves_no_temp_files(tmp_path) -> None:
    target = tmp_path / "ck" / "last.pt"
    atomic_torch_save({"x": torch.arange(3)}, target)
    atomic_torch_save({"x": torch.arange(4)}, target)
    assert torch.equal(load_checkpoint(target)["x"], torch.arange(4))
    assert [p.name for p in target.parent.iterdir()] == ["last.pt"]


def test_failed_save_keeps_the_old_file(tmp_path) -> None:
    target = tmp_path / "last.pt"
    atomic_torch_save({"x": torch.ones(2)}, target)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"x": Unpicklable()}, target)
    assert torch.equal(load_checkpoint(target)["x"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_corrupt_checkpoint_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "last.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="last.pt: cannot read checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_run_config_errors_name_file_and_field(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{\"schema_version\": 1}")
    with pytest.raises(ValueError, match="config.json: missing field"):
        read_run_config(tmp_path)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        read_run_config(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    assert run_dir_of(tmp_path / "checkpoints" / "last.pt") == tmp_path


@pytest.mark.slow
def test_loader_workers_change_nothing_but_speed(corpus, tmp_path) -> None:
    train(cfg(corpus, tmp_path / "w0", steps=4))
    train(cfg(corpus, tmp_path / "w1", steps=4, num_workers=1))
    assert _losses(tmp_path / "w0") == _losses(tmp_path / "w1")

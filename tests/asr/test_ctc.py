"""Auxiliary CTC loss: off changes nothing, on it learns, and it never reaches the deployed model."""

from __future__ import annotations

import pytest
import torch

from subbit.asr.checkpoint import RunPaths, load_checkpoint, read_run_config
from subbit.asr.models import Transducer, build_from_config, build_model
from subbit.asr.train import TrainConfig, train
from subbit.runs import load_run
from subbit.testing.dummies import dummy_batch, make_dummy_corpus

torch.set_num_threads(1)


def _pair(weight: float, arch: str = "rnnt") -> tuple[Transducer, Transducer]:
    torch.manual_seed(0)
    base = build_model(arch, "tiny", vocab_size=8).eval()
    with_ctc = build_from_config({**base.config, "ctc_weight": weight})
    with_ctc.load_state_dict(base.state_dict(), strict=False)
    return base, with_ctc.eval()


def _args(b: dict) -> tuple:
    return b["feats"], b["feat_lens"], b["targets"], b["target_lens"]


@pytest.mark.parametrize("arch", ["rnnt", "conformer"])
def test_ctc_weight_zero_leaves_the_transducer_loss_unchanged(arch: str) -> None:
    base, zero = _pair(0.0, arch)
    assert zero.ctc_head is None and zero.config["ctc_weight"] == 0.0
    assert "ctc_weight" not in base.config  # old configs stay as they were
    b = dummy_batch(batch_size=3, vocab_size=8)
    torch.testing.assert_close(zero(*_args(b)), base(*_args(b)), rtol=0, atol=0)


def test_ctc_loss_is_added_with_its_weight() -> None:
    base, m = _pair(0.25)
    b = dummy_batch(batch_size=3, vocab_size=8)
    enc, enc_lens = m.encode(b["feats"], b["feat_lens"])
    ctc = m.ctc_nll(enc, enc_lens, b["targets"], b["target_lens"]).mean()
    assert ctc.item() > 0
    torch.testing.assert_close(m(*_args(b)), base(*_args(b)) + 0.25 * ctc)


def test_ctc_loss_decreases_when_training() -> None:
    torch.manual_seed(0)
    m = build_from_config({**build_model("rnnt", "tiny", vocab_size=8).config, "ctc_weight": 0.5})
    b = dummy_batch(batch_size=4, frames=48, vocab_size=8, max_target=4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)

    def ctc() -> float:
        with torch.no_grad():
            enc, lens = m.encode(b["feats"], b["feat_lens"])
            return m.ctc_nll(enc, lens, b["targets"], b["target_lens"]).mean().item()

    before = ctc()
    for _ in range(30):
        opt.zero_grad()
        m(*_args(b)).backward()
        opt.step()
    assert ctc() < 0.5 * before


def test_bad_ctc_weight_is_refused_by_name() -> None:
    cfg = build_model("rnnt", "tiny", vocab_size=8).config
    for bad in (-0.1, 1.0, "0.3", True):
        with pytest.raises(ValueError, match="ctc_weight"):
            build_from_config({**cfg, "ctc_weight": bad})


def test_without_ctc_shares_modules_and_drops_the_head() -> None:
    _, m = _pair(0.3)
    d = m.without_ctc()
    assert d.ctc_head is None and "ctc_weight" not in d.config and d.encoder is m.encoder
    assert not any(k.startswith("ctc_head.") for k in d.state_dict())
    d.load_state_dict(m.state_dict())  # a training checkpoint loads into the deployable model


@pytest.mark.slow
def test_training_run_keeps_the_head_out_of_final_and_config(tmp_path) -> None:
    corpus = make_dummy_corpus(tmp_path / "corpus", n_train=8, n_eval=2)
    cfg = TrainConfig(data=str(corpus), out=str(tmp_path / "run"), model="rnnt", preset="tiny", steps=3,
                      batch_size=4, tokenizer="char", warmup_steps=1, progress=False, threads=1, ctc_weight=0.3)
    train(cfg)
    paths = RunPaths(tmp_path / "run")
    run_cfg = read_run_config(paths.root)
    assert "ctc_weight" not in run_cfg["model"] and run_cfg["train_args"]["ctc_weight"] == 0.3
    assert any(k.startswith("ctc_head.") for k in load_checkpoint(paths.last)["model"])
    final = torch.load(paths.final, map_location="cpu", weights_only=True)
    assert not any(k.startswith("ctc_head.") for k in final)
    for which in ("final", "last"):
        assert load_run(paths.root, which=which).model.ctc_head is None


def test_train_config_refuses_bad_ctc_weight(tmp_path) -> None:
    with pytest.raises(ValueError, match="ctc_weight"):
        TrainConfig(data="x", out=str(tmp_path), steps=1, ctc_weight=1.5)

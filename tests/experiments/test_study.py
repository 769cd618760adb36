"""``subbit study --quick``: contract of results.json, claims, resume from cell files alone."""

from __future__ import annotations

import json

import pytest

from subbit import cli
from subbit.experiments import study
from subbit.experiments.study import SECTIONS, StudyConfig, plan

ROW_KEYS = ("name", "arch", "method", "bits_avg", "size_bytes", "seeds", "wer_seen", "wer_heldout",
            "wer_heldout_ci", "delta_vs_fp32_ci", "lossless")


def test_plan_covers_every_section_and_puts_seeds_on_claim_cells() -> None:
    for arch in ("rnnt", "conformer"):
        cells, _ = plan(arch, quick=False, seeds=3)
        by = {c.recipe.name: c for c in cells}
        covered = {s for c in cells for s in c.sections}
        assert covered >= {"baselines", "bit-allocation", "quant-frequency", "centroids"}
        # gq4-fixed: the learned-vs-fixed-centroids claim rests on it, so it gets every seed too
        for name in ("fp32", "qat8", "gq5", "gq4", "gq3", "gq4-fixed"):
            assert by[name].seeds == (0, 1, 2), name
        # a one-seed ablation stays one seed unless it is a named follow-up of that architecture
        assert by["gq4-mu25"].seeds == ((0, 1, 2) if arch == "conformer" else (0,)), arch
        assert by["gq4-mu100"].seeds == (0,)
        # gq2 is a one-seed baseline, except on the RNN-T where the split-clip pair needs 3 seeds
        assert by["gq2"].seeds == ((0, 1, 2) if arch == "rnnt" else (0,)), arch
        assert "gq4-fixed" in by and by["gq4-fixed"].recipe.quant["default"]["options"]["learn_centroids"] is False
    quick, _ = plan("rnnt", quick=True, seeds=3)
    assert {c.recipe.name for c in quick} >= {"fp32", "qat8", "gq4", "gq4-fixed", "gq3-hh1"}


def test_bad_config_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(ValueError, match="--archs"):
        StudyConfig(out=str(tmp_path), archs=("lstm",))
    with pytest.raises(ValueError, match="--sections"):
        StudyConfig(out=str(tmp_path), sections=("everything",))
    with pytest.raises(ValueError, match="--steps"):
        StudyConfig(out=str(tmp_path), steps=0)


@pytest.mark.slow
def test_quick_study_writes_the_contract_and_resumes_from_cells(tmp_path, monkeypatch, capsys) -> None:
    out = tmp_path / "study"
    args = ["study", "--quick", "--out", str(out), "--archs", "rnnt", "--no-progress", "--threads", "1",
            "--fp32-steps", "60", "--steps", "3"]
    assert cli.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["rows"]}
    for r in rows.values():
        assert all(k in r for k in ROW_KEYS), r["name"]
    fp32, gq4 = rows["fp32"], rows["gq4"]
    assert fp32["seeds"] == [0, 1] and gq4["seeds"] == [0, 1] and rows["gq2"]["seeds"] == [0]
    assert fp32["bits_avg"] == 32.0 and gq4["bits_avg"] == pytest.approx(4.0)
    assert 0 < gq4["size_bytes"] < fp32["size_bytes"]
    lo, hi = gq4["wer_heldout_ci"]
    assert lo <= gq4["wer_heldout"] <= hi
    assert fp32["delta_vs_fp32_ci"] == [0.0, 0.0] and fp32["lossless"] is True
    assert isinstance(gq4["lossless"], bool)
    # the same rule on seen voices: the control against itself is lossless there too
    assert fp32["delta_seen_vs_fp32_ci"] == [0.0, 0.0] and fp32["lossless_seen"] is True
    assert isinstance(gq4["lossless_seen"], bool)
    # what is served: the exported file streamed through the packed runtime, same utterances
    assert gq4["runtime_wer_heldout"] is not None and gq4["torch_wer_heldout_same_utts"] is not None
    claims = results["claims"]
    assert claims and all(c["verdict"] in ("reproduced", "not reproduced", "not run") for c in claims)
    assert all(c["evidence"].startswith("[quick toy run") for c in claims)
    assert (out / "report.md").read_text().startswith("# subbit study")
    assert (out / "pareto-rnnt.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "wrote results" in printed
    # the dev search ran first (two lrs for GQ in --quick) and its winner is the gq4 cells' lr
    tune = sorted((out / "cells" / "rnnt" / "tune").glob("*.json"))
    assert len(tune) == 2
    dev = {json.loads(f.read_text())["fingerprint"]["finetune"]["lr"]: json.loads(f.read_text())["eval"]["dev"]["wer"]
           for f in tune}
    assert gq4["lr"] == min(dev, key=lambda lr: (dev[lr], abs(lr - 5e-4)))
    assert "tuning on dev" in (out / "report.md").read_text()
    assert len(gq4["fp32_base"]) == 16 and gq4["cells_on_other_bases"] == 0
    # convergence: dev WER was logged during the fine-tune (3 steps, every 3 // 2 = 1 step)
    assert [s for s, _ in gq4["dev_curve"]] == [1, 2] and all(0 <= w for _, w in gq4["dev_curve"])
    assert (out / "curves-rnnt.png").stat().st_size > 0

    # a fresh machine with only the committed cell files: nothing is trained again
    import shutil

    shutil.rmtree(out / "work")
    monkeypatch.setattr(study, "run_compare", lambda *a, **k: pytest.fail("a finished cell was re-run"))
    monkeypatch.setattr(study, "ensure_fp32_base", lambda *a, **k: pytest.fail("fp32 base retrained"))
    monkeypatch.setattr(study, "ensure_corpus", lambda cfg: tmp_path / "corpus-again")
    (tmp_path / "corpus-again").mkdir()
    monkeypatch.setattr(study, "corpus_identity", lambda data: results["meta"]["corpus_id"])
    assert cli.main(args) == 0
    again = json.loads((out / "results.json").read_text())
    assert [r["wer_heldout"] for r in again["rows"]] == [r["wer_heldout"] for r in results["rows"]]


def test_sections_are_the_contract() -> None:
    # the sections, plus the dev search that every family's lr comes from
    assert SECTIONS == ("baselines", "bit-allocation", "quant-frequency", "centroids", "bifocal", "serve", "tuning")

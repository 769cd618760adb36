"""The dev search of the study: choices, defaults while unfinished, and one fp32 base per row."""

from __future__ import annotations

import pytest

from subbit.experiments import study_tuning as st
from subbit.experiments.recipes import RECIPES
from subbit.experiments.study import active_base


def _cells() -> list[st.TuneCell]:
    return st.tune_cells(quick=False, default_lr=5e-4)


def test_every_training_family_is_searched_on_its_representative() -> None:
    cells = _cells()
    fams = {c.family for c in cells if c.knob == "lr"}
    assert fams == set(st.REPRESENTATIVES)
    for c in cells:
        assert st.family(c.recipe) == c.family
    assert len({c.key for c in cells}) == len(cells)  # one cell file per point
    assert {c.value for c in cells if c.knob == "lam"} == set(st.S8BQAT_LAMS)
    assert st.family(RECIPES["ptq4-uniform"]) is None and st.family(RECIPES["lsq2"]) == "lsq"
    assert st.family(RECIPES["qat8"]) == "qat" and st.family(RECIPES["gq3-channel"]) == "gq"


def test_choice_waits_for_the_whole_grid_and_takes_the_lowest_dev_wer() -> None:
    cells = _cells()
    gq = [c for c in cells if c.family == "gq" and c.knob == "lr"]
    dev = {gq[0].key: 0.30, gq[1].key: 0.20}
    partial = st.choose(cells, dev, "lr", "gq", 5e-4)
    assert not partial.tuned and partial.value == 5e-4
    dev[gq[2].key] = 0.25
    full = st.choose(cells, dev, "lr", "gq", 5e-4)
    assert full.tuned and full.value == gq[1].value
    # a tie goes to the default, so an unchanged winner keeps older cells valid
    tie = {c.key: 0.2 for c in gq}
    assert st.choose(cells, tie, "lr", "gq", 5e-4).value == 5e-4


def test_lam_changes_the_recipe_only_away_from_the_default() -> None:
    base = RECIPES["s8bqat4"]
    assert st.with_lam(base, st.S8BQAT_DEFAULT_LAM) is base
    other = st.with_lam(base, 1e-3)
    assert other.name == base.name and other.quant["default"]["options"]["lam"] == pytest.approx(1e-3)
    assert other.to_dict() != base.to_dict()
    other.quant_config([])  # still a valid QuantConfig


def test_rows_use_the_base_of_the_fp32_control() -> None:
    old = {"base": {"sha256": "a" * 16}}
    new = {"base": {"sha256": "b" * 16}}
    legacy: dict = {}
    loaded = {"fp32": [old, old, new], "gq4": [new, new, new, old]}
    assert active_base(loaded) == "a" * 16
    assert active_base({"fp32": [legacy, legacy], "gq4": [new]}) == "unrecorded"
    assert active_base({}) is None


def _row(name: str, **kw) -> dict:
    return {"arch": "bifocal", "name": name, "status": "done", "wer_heldout": 0.1, **kw}


def test_bifocal_claim_needs_memory_latency_and_the_interval() -> None:
    from subbit.experiments.study import bifocal_claim, plan

    assert bifocal_claim([])["verdict"] == "not run"
    q = _row("qat8", size_bytes=1000, runtime_p90_ms=10.0)
    good = _row("gq5", size_bytes=650, runtime_p90_ms=6.5, lossless=True, delta_vs_fp32_ci=[-0.01, 0.001])
    assert bifocal_claim([q, good])["verdict"] == "reproduced"
    slow = {**good, "runtime_p90_ms": 9.0}
    assert bifocal_claim([q, slow])["verdict"] == "not reproduced"
    lossy = {**good, "lossless": False}
    assert bifocal_claim([q, lossy])["verdict"] == "not reproduced"
    cells, _ = plan("bifocal", quick=False, seeds=3)
    assert {c.recipe.name: c.seeds for c in cells} == {n: (0, 1, 2) for n in ("fp32", "qat8", "gq5", "gq4")}


def test_open_sentences_are_scored_only_when_the_corpus_has_them(tmp_path) -> None:
    from subbit.experiments.study import SPLITS, corpus_identity, eval_splits

    (tmp_path / "train.jsonl").write_text("{}\n")
    assert eval_splits(tmp_path) == SPLITS
    before = corpus_identity(tmp_path)
    (tmp_path / "test_open.jsonl").write_text("{}\n")
    assert eval_splits(tmp_path) == SPLITS + ("test_open",)
    assert corpus_identity(tmp_path) != before  # another corpus, other cells


def test_automatic_allocation_cells_come_from_the_committed_rules(tmp_path) -> None:
    import json

    from subbit.experiments.study import AUTO_BITS, StudyConfig, auto_recipes, plan

    cfg = StudyConfig(out=str(tmp_path))
    cells, missing = plan("rnnt", quick=False, seeds=3, auto=auto_recipes(cfg, "rnnt"))
    assert {f"gq-auto{b}" for b in AUTO_BITS} <= set(missing)  # not measured yet: listed, not invented
    rules = {"version": 1, "default": {"method": "gq", "bits": 3, "granularity": "tensor"},
             "rules": {"encoder.lstm.weight_hh_l0": {"bits": 1}}}
    (tmp_path / "alloc").mkdir()
    (tmp_path / "alloc" / "rnnt-avg3.json").write_text(json.dumps({"avg_bits": 3, "rules": rules}))
    cells, missing = plan("rnnt", quick=False, seeds=3, auto=auto_recipes(cfg, "rnnt"))
    auto3 = next(c for c in cells if c.recipe.name == "gq-auto3")
    assert auto3.seeds == (0, 1, 2) and auto3.recipe.quant == rules and "gq-auto3" not in missing


def test_a_worker_runs_only_the_tuning_families_it_is_given(tmp_path, monkeypatch) -> None:
    """--only tune:FAMILY splits the dev search over workers; plain recipe names start none of it."""
    from subbit.experiments import study

    assert study.tune_families(("tune:gq", "gq4", "tune:s8bqat-lam")) == {"gq", "s8bqat-lam"}
    assert study.tune_families(("gq4",)) == set() and study.tune_families(None) == set()
    ran: list[str] = []

    def fake_compare(cc, recipes, name):
        ran.append(recipes[0].name)
        raise StopIteration  # stop before anything is trained or written

    monkeypatch.setattr(study, "ensure_fp32_base", lambda cfg, arch, data: tmp_path / "base")
    monkeypatch.setattr(study, "base_identity", lambda p: {})
    monkeypatch.setattr(study, "run_compare", fake_compare)
    cfg = study.StudyConfig(out=str(tmp_path / "out"), data=str(tmp_path))
    for fams, expected in (({"dkm"}, "dkm4"), ({"s8bqat-lam"}, "s8bqat4")):
        ran.clear()
        with pytest.raises(StopIteration):
            study.run_tuning(cfg, "rnnt", tmp_path, "c0", fams)
        assert ran == [expected]
    points = st.tune_cells(False, 5e-4)
    assert {c.family for c in points if c.knob == "lam"} == {"s8bqat"}

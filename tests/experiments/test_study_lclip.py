"""The study's split-gradient-clip cells (``gq4-lclip``, ``gq2-lclip``; issue 12 item 7): what
they change, where the plan puts them, that their setting reaches the training loop, and that
the cells already recorded keep their recipes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from subbit.asr.tokenizer import Tokenizer
from subbit.asr.train import TrainConfig
from subbit.experiments import compare
from subbit.experiments.compare import CompareConfig
from subbit.experiments.recipes import RECIPES
from subbit.experiments.study_plan import LATENT_CLIP, SECTIONS, plan, study_recipes
from subbit.experiments.study_tuning import family
from subbit.runs import write_run
from subbit.testing.dummies import dummy_transducer

NEW = ("gq4-lclip", "gq2-lclip")
STUDY_FULL = Path(__file__).resolve().parents[2] / "results" / "study-full"


@pytest.mark.parametrize("bits", [4, 2])
def test_variant_differs_from_its_base_only_in_the_latent_clip(bits: int) -> None:
    base, new = RECIPES[f"gq{bits}"], study_recipes()[f"gq{bits}-lclip"]
    a, b = base.to_dict(), new.to_dict()
    assert b.pop("schedule") == {**a.pop("schedule"), "latent_clip": LATENT_CLIP}
    for d in (a, b):
        d.pop("name"), d.pop("description")
    assert a == b
    assert family(new) == family(base) == "gq"  # the dev-tuned GQ lr, as gq4/gq2
    assert 0 < LATENT_CLIP < TrainConfig(data="d", out="o", steps=1).grad_clip


def test_plan_puts_them_on_rnnt_with_every_seed() -> None:
    cells, missing = plan("rnnt", quick=False, seeds=3)
    by = {c.recipe.name: c for c in cells}
    for name in NEW:
        assert by[name].seeds == (0, 1, 2) and by[name].sections == ("quant-frequency",)
    assert by["gq4"].seeds == (0, 1, 2)
    assert not set(NEW) & set(missing)
    no_qf, _ = plan("rnnt", quick=False, seeds=3, sections=[s for s in SECTIONS if s != "quant-frequency"])
    assert not set(NEW) & {c.recipe.name for c in no_qf}
    for arch, quick in (("conformer", False), ("bifocal", False), ("rnnt", True)):
        assert not set(NEW) & {c.recipe.name for c in plan(arch, quick=quick, seeds=3)[0]}, (arch, quick)


def test_plan_is_unchanged_apart_from_the_new_cells(monkeypatch) -> None:
    with_new, _ = plan("rnnt", quick=False, seeds=3)
    import subbit.experiments.study_plan as sp

    real = sp.study_recipes
    monkeypatch.setattr(sp, "study_recipes", lambda: {k: v for k, v in real().items() if k not in NEW})
    without, missing = sp.plan("rnnt", quick=False, seeds=3)
    assert set(missing) >= set(NEW)
    assert [c for c in with_new if c.recipe.name not in NEW] == without


def test_the_schedule_reaches_the_training_config(tmp_path, monkeypatch) -> None:
    tok = Tokenizer("char", chars=list("abc "))
    init = tmp_path / "fp32"
    write_run(init, dummy_transducer("rnnt", vocab_size=tok.vocab_size, n_mels=16), tok, quant=None,
              train_args={}, data_dir=str(tmp_path))
    seen: list[TrainConfig] = []

    class Stop(Exception):
        pass

    def fake_train(tc: TrainConfig):
        seen.append(tc)
        raise Stop

    monkeypatch.setattr(compare, "_train", fake_train)
    cfg = CompareConfig(out=str(tmp_path / "cmp"), data=str(tmp_path), steps=3, batch_size=2, augment=False,
                        progress=False)
    for recipe in (study_recipes()["gq4-lclip"], RECIPES["gq4"]):
        with pytest.raises(Stop):
            compare._train_recipe(recipe, cfg, init, tmp_path / "runs" / recipe.name)
    assert [tc.latent_clip for tc in seen] == [LATENT_CLIP, None]
    assert json.loads((tmp_path / "runs" / "gq4-lclip" / "quant.json").read_text())["default"]["bits"] == 4


@pytest.mark.skipif(not (STUDY_FULL / "cells").is_dir(), reason="no committed study-full cells")
def test_recorded_cells_keep_their_recipes() -> None:
    """Every committed cell's recipe is still the one the plan makes (so its fingerprint holds)."""
    checked = 0
    for arch_dir in sorted((STUDY_FULL / "cells").iterdir()):
        if not arch_dir.is_dir():
            continue
        by = {c.recipe.name: c.recipe for c in plan(arch_dir.name, quick=False, seeds=3)[0]}
        for f in sorted(arch_dir.glob("*.json")):
            stored = json.loads(f.read_text())["fingerprint"]["recipe"]
            if stored["name"] not in by:  # the automatic allocations need their allocation files
                continue
            planned = by[stored["name"]].to_dict()
            planned.pop("description")
            assert planned == stored, f
            checked += 1
    assert checked > 0

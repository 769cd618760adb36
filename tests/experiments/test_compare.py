"""``subbit compare`` on the dummy corpus: recipes, results.json rows, plots, resume, ablations."""

from __future__ import annotations

import json

import pytest
import torch

from subbit import cli
from subbit.experiments.ablations import ABLATIONS, ablation_recipes, all_variants
from subbit.experiments.compare import ROW_KEYS, CompareConfig, markdown_table, run_compare
from subbit.experiments.recipes import RECIPES, Recipe, get_recipe, parse_recipes, quantizable_names
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)

PAPER_RECIPES = ("fp32", "qat8", "s8bqat4", "s8bqat5", "gq8", "gq5", "gq4", "gq3", "gq2", "gq-mixed", "dkm4",
                 "ptq4-uniform", "ptq4-kmeans")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=8, n_eval=3)


@pytest.fixture(scope="module")
def tiny_model():
    from subbit.asr.models.presets import build_from_config, preset_config

    return build_from_config(preset_config("rnnt", "tiny", 16))


def tiny_cfg(corpus, out, **kw) -> CompareConfig:
    args = dict(out=str(out), data=str(corpus), model="rnnt", preset="tiny", fp32_steps=2, steps=2, batch_size=4,
                tokenizer="char", warmup_steps=1, threads=1, progress=False, ckpt_every=1)
    args.update(kw)
    return CompareConfig(**args)


def test_every_paper_recipe_exists_and_builds_a_config(tiny_model) -> None:
    names = quantizable_names(tiny_model)
    assert set(PAPER_RECIPES) <= set(RECIPES)
    for name in PAPER_RECIPES:
        r = RECIPES[name]
        qc = r.quant_config(names)
        assert (qc is None) == (name == "fp32")
    assert RECIPES["qat8"].quant["default"] == {"method": "uniform", "bits": 8, "granularity": "channel"}
    assert not RECIPES["ptq4-uniform"].train and not RECIPES["ptq4-kmeans"].train


def test_mixed_recipe_names_parameters_exactly(tiny_model) -> None:
    qc = RECIPES["gq-mixed"].quant_config(quantizable_names(tiny_model))
    hh = [k for k in qc.rules if k.startswith("encoder") and "weight_hh" in k]
    assert hh and all(qc.rules[k].bits == 2 for k in hh)
    assert qc.rules["joiner.out.weight"].bits == 8 and qc.rules["predictor.embed.weight"].bits == 8
    # the encoder's input kernels and the predictor's recurrent kernel keep the default
    assert not any("weight_ih" in k for k in qc.rules) and "predictor.lstms.0.weight_hh_l0" not in qc.rules
    assert qc.default.bits == 4


def test_bad_recipes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown recipe 'gq9'"):
        parse_recipes("gq4,gq9")
    with pytest.raises(ValueError, match="schedule: unknown key 'tau'"):
        Recipe("x", "gq", "", {"default": {"bits": 4}}, schedule={"tau": 1.0})
    with pytest.raises(ValueError, match="bits"):
        Recipe("x", "gq", "", {"default": {"bits": 9}})
    assert [r.name for r in parse_recipes("gq4, qat8,gq4")] == ["gq4", "qat8"]


def test_ablations_change_one_knob_and_share_the_reference() -> None:
    for name in ABLATIONS:
        variants = ablation_recipes(name)
        assert variants[0] is RECIPES["gq4"]
        assert len({r.name for r in variants}) == len(variants) > 2
        assert len({json.dumps(r.to_dict() | {"name": "", "description": ""}, sort_keys=True) for r in variants}) \
            == len(variants), f"{name}: two variants are the same experiment"
    tq = {r.name: r.schedule for r in ablation_recipes("quant-frequency")}
    assert tq["gq4-tq10-project"] == {"quant_every": 10, "quant_mode": "project"}
    assert tq["gq4-tq100-forward"] == {"quant_every": 100, "quant_mode": "forward"}
    assert get_recipe("gq4-mu0").quant["default"]["options"]["mu"] == 0.0
    assert set(all_variants()) >= {"gq4-abs-lin", "gq4-hh1"}
    with pytest.raises(ValueError, match="unknown ablation"):
        ablation_recipes("nope")


@pytest.mark.slow
def test_compare_writes_rows_table_plots_and_resumes(corpus, tmp_path, monkeypatch) -> None:
    out = tmp_path / "cmp"
    cfg = tiny_cfg(corpus, out, splits=("test_seen", "test_heldout"))
    res = run_compare(cfg, parse_recipes("fp32,gq4,ptq4-uniform"))
    doc = json.loads((out / "results.json").read_text())
    rows = {r["recipe"]: r for r in doc["rows"]}
    assert list(rows) == ["fp32-init", "fp32", "gq4", "ptq4-uniform"]
    for r in rows.values():
        assert set(ROW_KEYS) <= set(r), r
        assert set(r["wer"]) == {"test_seen", "test_heldout"}
        assert all(0.0 <= w for w in r["wer"].values())
        assert r["status"] == "done"
    assert rows["fp32"]["steps"] == 2 and rows["gq4"]["steps"] == 2 and rows["ptq4-uniform"]["steps"] == 0
    assert rows["fp32"]["bits"] == 32.0 and rows["gq4"]["bits"] == 4.0
    # the .subbit files exist and their sizes are what the rows say; 4-bit is far smaller than fp32
    for name in ("gq4", "ptq4-uniform"):
        f = out / "runs" / name / "model.subbit"
        assert rows[name]["size_file_bytes"] == f.stat().st_size == rows[name]["size_bytes"]
    assert rows["fp32"]["size_vs_fp32"] == pytest.approx(1.0, rel=0.02)
    assert rows["gq4"]["size_vs_fp32"] < 0.5 and rows["gq4"]["size_theory_bytes"] < rows["fp32"]["size_theory_bytes"]
    assert rows["gq4"]["size_deploy_bytes"] <= rows["gq4"]["size_theory_bytes"]
    assert rows["ptq4-uniform"]["deploy_vs_fp32"] < rows["ptq4-uniform"]["size_vs_fp32"]
    for s in ("test_seen", "test_heldout"):
        png = out / f"results_wer_vs_size_{s}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "results.md").read_text()
    assert "| gq4 | gq | 4.00 |" in md and "WER test_heldout %" in md
    assert res.rows[2]["recipe"] == "gq4"

    # a rerun trains nothing and evaluates nothing
    import subbit.experiments.compare as cmp

    def boom(*a, **k):
        raise AssertionError("a finished recipe was redone")

    monkeypatch.setattr(cmp, "_train", boom)
    monkeypatch.setattr(cmp, "_evaluate", boom)
    again = run_compare(cfg, parse_recipes("fp32,gq4,ptq4-uniform"))
    assert [r["wer"] for r in again.rows] == [r["wer"] for r in doc["rows"]]
    # other settings for the same output directory are refused, not silently mixed
    with pytest.raises(ValueError, match="other settings.*budget"):
        run_compare(tiny_cfg(corpus, out, steps=3), parse_recipes("gq4"))


@pytest.mark.slow
def test_a_killed_recipe_resumes_and_a_new_split_is_only_evaluated(corpus, tmp_path, monkeypatch) -> None:
    import subbit.experiments.compare as cmp

    out = tmp_path / "cmp"
    cfg = tiny_cfg(corpus, out, steps=3, splits=("test_seen",), export=False)
    real_train = cmp._train
    calls = []

    def killed_once(tc):  # the first recipe run stops after one step, as if killed
        calls.append(tc.resume)
        if len(calls) == 2:
            tc.stop_after = 1
        return real_train(tc)

    monkeypatch.setattr(cmp, "_train", killed_once)
    with pytest.raises(Exception):
        run_compare(cfg, parse_recipes("gq4"))
    assert (out / "runs" / "gq4" / "checkpoints" / "last.pt").is_file()
    assert not (out / "runs" / "gq4" / "final.pt").is_file()
    res = run_compare(cfg, parse_recipes("gq4"))
    assert calls == [False, False, True]  # fp32 base, killed gq4, resumed gq4
    assert res.rows[1]["steps"] == 3 and res.rows[1]["size_file_bytes"] is None

    def no_training(*a, **k):
        raise AssertionError("retrained")

    monkeypatch.setattr(cmp, "_train", no_training)
    both = run_compare(tiny_cfg(corpus, out, steps=3, splits=("test_seen", "test_heldout"), export=False),
                       parse_recipes("gq4"))
    assert both.rows[1]["wer"]["test_seen"] == res.rows[1]["wer"]["test_seen"]
    assert both.rows[1]["wer"]["test_heldout"] is not None


@pytest.mark.slow
def test_cli_ablation_and_list(corpus, tmp_path, capsys) -> None:
    assert cli.main(["compare", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PAPER_RECIPES) and "ablation mu:" in listed
    out = tmp_path / "abl"
    rc = cli.main(["compare", "--data", str(corpus), "--out", str(out), "--preset", "tiny", "--tokenizer", "char",
                   "--fp32-steps", "2", "--steps", "2", "--batch-size", "4", "--split", "test_seen",
                   "--ablation", "distance", "--threads", "1", "--no-progress", "--no-export",
                   "--json", str(tmp_path / "a.json")])
    assert rc == 0
    doc = json.loads((tmp_path / "a.json").read_text())
    assert [r["recipe"] for r in doc["rows"]] == ["fp32-init"] + [r.name for r in ablation_recipes("distance")]
    assert (out / "ablation-distance.png").read_bytes()[:4] == b"\x89PNG"
    assert "gq4-abs-lin" in (out / "ablation-distance.md").read_text()


@pytest.mark.slow
def test_cli_errors_name_the_problem(corpus, tmp_path, capsys) -> None:
    rc = cli.main(["compare", "--data", str(corpus), "--out", str(tmp_path / "o"), "--steps", "2",
                   "--split", "test_nope", "--fp32-steps", "1", "--recipes", "gq4"])
    assert rc == 2 and "test_nope" in capsys.readouterr().err
    rc = cli.main(["compare", "--data", str(corpus), "--out", str(tmp_path / "o"), "--recipes", "gq4"])
    assert rc == 2 and "--minutes or --steps" in capsys.readouterr().err


def test_markdown_table_marks_unfinished_rows() -> None:
    rows = [{"recipe": "gq2", "method": "gq", "bits": None, "wer": {"a": None}, "size_bytes": None,
             "size_vs_fp32": None, "train_minutes": 0.5, "steps": 7, "status": "diverged"}]
    assert "| gq2 (diverged) | gq | - | - | - | - | - | - | - | 0.5 | 7 |" in markdown_table(rows, ["a"])


def test_lossless_uses_the_fp32_row_and_the_papers_yardstick() -> None:
    from subbit.experiments.compare import mark_lossless

    def row(name, wer):
        return {"recipe": name, "status": "done", "wer": {"a": wer}}

    rows = [row("fp32-init", 0.30), row("fp32", 0.20), row("gq4", 0.2039), row("gq2", 0.2041), row("gq8", 0.0021)]
    assert mark_lossless(rows, ["a"]) == "fp32"
    assert [r["lossless"]["a"] for r in rows] == [False, True, True, False, True]
    low = [row("fp32", 0.001), row("gq4", 0.0029), row("gq3", 0.0031)]  # 0.2 absolute wins at low WER
    mark_lossless(low, ["a"])
    assert [r["lossless"]["a"] for r in low] == [True, True, False]


def test_deploy_bytes_counts_indices_codebooks_and_floats(tiny_model) -> None:
    import copy
    import math

    import subbit.quant as sq
    from subbit.experiments.compare import deploy_bytes

    shapes = {n: tuple(p.shape) for n, p in tiny_model.named_parameters()}
    qnames = quantizable_names(tiny_model)
    floats = 4 * sum(math.prod(s) for n, s in shapes.items() if n not in qnames)
    assert deploy_bytes(tiny_model) == 4 * sum(math.prod(s) for s in shapes.values())
    # uniform 8-bit per channel: 1 byte per weight + one fp32 step per row (its grid is evenly spaced
    # and symmetric, stored as the file stores it: subbit.sizes.affine_bytes)
    m = sq.prepare(copy.deepcopy(tiny_model), RECIPES["qat8"].quant_config(qnames))
    expect = sum(s[0] * (math.prod(s[1:]) + 4) for n, s in shapes.items() if n in qnames) + floats
    assert deploy_bytes(sq.convert(m)) == expect
    # GQ 4-bit per tensor: half a byte per weight + 16 fp32 centroids per tensor (mu-law: not evenly spaced)
    m = sq.prepare(copy.deepcopy(tiny_model), RECIPES["gq4"].quant_config(qnames))
    expect = sum(math.ceil(math.prod(s) * 4 / 8) + 16 * 4 for n, s in shapes.items() if n in qnames) + floats
    assert deploy_bytes(sq.convert(m)) == expect


@pytest.mark.slow
def test_fine_tuning_inherits_the_fp32_runs_batch_and_augmentation(corpus, tmp_path) -> None:
    from subbit.asr.checkpoint import read_run_config

    first = run_compare(tiny_cfg(corpus, tmp_path / "a", augment=False, splits=("test_seen",), export=False),
                        parse_recipes("fp32"))
    assert first.rows[1]["status"] == "done"
    cfg = tiny_cfg(corpus, tmp_path / "b", fp32_steps=None, fp32_run=str(tmp_path / "a" / "fp32-base"),
                   batch_size=None, steps=1, splits=("test_seen",), export=False)
    run_compare(cfg, parse_recipes("fp32"))
    args = read_run_config(tmp_path / "b" / "runs" / "fp32")["train_args"]
    assert args["batch_size"] == 4 and args["augment"] is False and args["steps"] == 1

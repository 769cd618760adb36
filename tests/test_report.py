"""``subbit report`` on a tiny quantized run, its .subbit export, and an fp32 run."""

from __future__ import annotations

import json

import pytest
import torch

from subbit import cli
from subbit.commands.report import report_run, report_subbit
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    from subbit.asr.train import TrainConfig, train
    from subbit.quant import QuantConfig

    root = tmp_path_factory.mktemp("report")
    corpus = make_dummy_corpus(root / "corpus", n_train=6, n_eval=2)
    rules = root / "rules.json"
    # 3 bits by default, 2 on the joiner output, the embedding left in float
    QuantConfig.from_dict({"default": {"method": "gq", "bits": 3},
                           "rules": {"joiner.out.weight": {"bits": 2}, "Embedding": None}}).save(rules)
    common = dict(data=str(corpus), model="rnnt", preset="tiny", steps=2, batch_size=3, tokenizer="char",
                  warmup_steps=1, progress=False, threads=1)
    train(TrainConfig(out=str(root / "fp32"), **common))
    train(TrainConfig(out=str(root / "q"), quant=str(rules), **common))
    assert cli.main(["export", str(root / "q"), "--out", str(root / "q.subbit")]) == 0
    return root


@pytest.mark.slow
def test_report_of_a_quantized_run_lists_every_tensor(runs, tmp_path, capsys) -> None:
    from subbit.runs import load_run
    import subbit.quant as sq

    capsys.readouterr()
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    assert cli.main(["report", str(runs / "q"), "--json", str(js), "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    model = load_run(runs / "q").model
    qnames = [qt.name for qt in sq.quantized_tensors(model)]
    fnames = [n for n, _ in model.named_parameters() if ".subbit_quant." not in f".{n}"]
    assert qnames and fnames
    for name in qnames + fnames:
        assert name in out, name
    rep = json.loads(js.read_text())
    bits = {t["name"]: t["bits"] for t in rep["tensors"]}
    assert bits["joiner.out.weight"] == 2 and bits["encoder.proj.weight"] == 3
    assert bits["predictor.embed.weight"] is None  # the rule left it in float
    t = rep["totals"]
    assert t["total_bytes"] == sum(x["bytes"] for x in rep["tensors"])
    assert t["fp32_bytes"] == 4 * sum(x["numel"] for x in rep["tensors"])
    assert t["total_bytes"] < t["int8_bytes"] < t["fp32_bytes"]
    assert 2 < t["mean_bits"] < 3
    assert rep["converted"] and all(x["hardness"] == pytest.approx(1.0) for x in rep["tensors"] if x["bits"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_of_a_subbit_file_matches_the_run(runs, capsys) -> None:
    capsys.readouterr()
    assert cli.main(["report", str(runs / "q.subbit")]) == 0
    out = capsys.readouterr().out
    rep_file = report_subbit(runs / "q.subbit")
    rep_run = report_run(runs / "q")
    for t in rep_file["tensors"]:
        assert t["name"] in out
    q_file = {t["name"]: t for t in rep_file["tensors"] if t["kind"] == "quantized"}
    q_run = {t["name"]: t for t in rep_run["tensors"] if t["kind"] == "quantized"}
    assert set(q_file) == set(q_run)
    for name, t in q_file.items():
        assert t["bits"] == q_run[name]["bits"] and t["numel"] == q_run[name]["numel"]
        assert t["bytes"] >= -(-t["numel"] * t["bits"] // 8)  # at least the packed indices
    tot = rep_file["totals"]
    assert tot["total_bytes"] == (runs / "q.subbit").stat().st_size > tot["payload_bytes"]
    assert tot["params"] == rep_run["totals"]["params"]


@pytest.mark.slow
def test_report_of_an_fp32_run_and_bad_targets(runs, tmp_path, capsys) -> None:
    rep = report_run(runs / "fp32")
    assert not rep["quantized"] and all(t["bits"] is None for t in rep["tensors"])
    assert rep["totals"]["total_bytes"] == rep["totals"]["fp32_bytes"]
    capsys.readouterr()
    assert cli.main(["report", str(tmp_path / "nothing")]) == 2
    assert "neither a run directory nor a .subbit file" in capsys.readouterr().err
    bad = tmp_path / "bad.subbit"
    bad.write_bytes((runs / "q.subbit").read_bytes()[:-10])
    assert cli.main(["report", str(bad)]) == 2
    assert "bad.subbit" in capsys.readouterr().err

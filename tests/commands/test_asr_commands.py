"""The train / eval / quantize / demo verbs end to end on the dummy corpus (tiny model)."""

from __future__ import annotations

import json

import pytest
import torch

from subbit import cli
from subbit.asr.checkpoint import RunPaths, load_checkpoint, read_run_config
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)

EVAL_KEYS = ("wer", "wer_percent", "utterances", "split", "substitutions", "deletions", "insertions",
             "method", "run")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=12, n_eval=4)


@pytest.fixture(scope="module")
def fp32_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fp32"
    code = cli.main(["train", "--model", "rnnt", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                     "--steps", "5", "--batch-size", "4", "--tokenizer", "char", "--threads", "1",
                     "--no-progress", "--eval-every", "2", "--eval-limit", "2"])
    assert code == 0
    return out


@pytest.mark.slow
def test_train_cli_writes_run_and_dev_evals(fp32_run) -> None:
    paths = RunPaths(fp32_run)
    assert paths.final.is_file() and paths.best.is_file()
    assert read_run_config(fp32_run)["train_args"]["batch_size"] == 4
    assert len(paths.eval_log.read_text().splitlines()) == 3  # header + steps 2 and 4


@pytest.mark.slow
def test_eval_cli_writes_contract_json_and_errors(fp32_run, corpus, tmp_path, capsys) -> None:
    out, errs = tmp_path / "eval.json", tmp_path / "errors.tsv"
    code = cli.main(["eval", str(fp32_run), "--data", str(corpus), "--split", "test_heldout", "--json", str(out),
                     "--errors", str(errs), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    for key in EVAL_KEYS:
        assert key in result, key
    assert result["split"] == "test_heldout" and result["utterances"] == 4 and result["method"] == "greedy"
    assert result["wer_percent"] == pytest.approx(100 * result["wer"])
    rows = errs.read_text().splitlines()[1:]
    assert len(rows) == 4
    counts = [int(r.split("\t")[3]) for r in rows]
    assert counts == sorted(counts, reverse=True)
    assert "test_heldout: WER" in capsys.readouterr().out


@pytest.mark.slow
def test_eval_cli_limit_beam_streaming_and_default_data(fp32_run, tmp_path) -> None:
    out = tmp_path / "e.json"
    assert cli.main(["eval", str(fp32_run), "--split", "dev", "--limit", "2", "--method", "beam", "--beam", "2",
                     "--json", str(out), "--no-progress"]) == 0
    d = json.loads(out.read_text())
    assert d["utterances"] == 2 and d["method"] == "beam" and d["beam"] == 2
    assert cli.main(["eval", str(fp32_run), "--split", "dev", "--streaming", "--json", str(out),
                     "--no-progress"]) == 0
    assert json.loads(out.read_text())["streaming"] is True


@pytest.mark.slow
def test_eval_cli_bad_split_is_a_clear_error(fp32_run, capsys) -> None:
    assert cli.main(["eval", str(fp32_run), "--split", "nope"]) == 2
    assert "nope.jsonl" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_cli_needs_only_out(fp32_run, corpus, tmp_path) -> None:
    out = tmp_path / "r"
    base = ["train", "--model", "rnnt", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
            "--steps", "4", "--batch-size", "4", "--tokenizer", "char", "--no-progress"]
    assert cli.main(base + ["--stop-after", "2"]) == 0
    assert load_checkpoint(RunPaths(out).last)["step"] == 2
    assert cli.main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert load_checkpoint(RunPaths(out).last)["step"] == 4 and RunPaths(out).final.is_file()


@pytest.mark.slow
def test_quantize_cli(fp32_run, tmp_path) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"default": {"method": "gq", "bits": 4}, "rules": {"Embedding": None}}))
    qrun = tmp_path / "q"
    assert cli.main(["quantize", str(fp32_run), "--rules", str(rules), "--out", str(qrun), "--steps", "4",
                     "--batch-size", "4", "--no-progress"]) == 0
    cfg = read_run_config(qrun)
    assert cfg["quant"]["default"]["bits"] == 4 and cfg["train_args"]["init"] == str(fp32_run)
    assert cfg["model"] == read_run_config(fp32_run)["model"]
    assert (qrun / "quant_report.txt").is_file() and RunPaths(qrun).final.is_file()
    out = tmp_path / "q.json"
    assert cli.main(["eval", str(qrun), "--split", "test_seen", "--json", str(out), "--no-progress"]) == 0
    assert json.loads(out.read_text())["quantized"] is True


@pytest.mark.slow
def test_quantize_refuses_a_quantized_run(tmp_path, fp32_run, capsys) -> None:
    run = tmp_path / "fake"
    run.mkdir()
    cfg = read_run_config(fp32_run)
    cfg["quant"] = {"default": {"method": "gq", "bits": 4}}
    (run / "config.json").write_text(json.dumps(cfg))
    assert cli.main(["quantize", str(run), "--rules", "x.json", "--out", str(tmp_path / "o"), "--steps", "1"]) == 2
    assert "already quantized" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_runs_its_stages(corpus, tmp_path, monkeypatch, capsys) -> None:
    from subbit.commands import demo

    # the corpus stage synthesises speech (minutes); the dummy corpus stands in for it here
    monkeypatch.setattr(demo, "STAGES", [s for s in demo.STAGES if s is not demo.stage_corpus])
    out = tmp_path / "demo"
    argv = ["demo", "--data", str(corpus), "--out", str(out), "--minutes", "0.02", "--qat-minutes", "0.02",
            "--quick", "--runtime-utterances", "3"]  # fmt: skip
    assert cli.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    for key in ("params", "fp32_mb", "train_minutes", "wer_test_seen", "wer_test_heldout",
                "gq4_wer_test_seen", "gq4_wer_test_heldout", "subbit_bytes", "runtime_wer_test_heldout"):  # fmt: skip
        assert key in summary
    # the exported file is really smaller than fp32 and int8 would be, and the runtime decoded 3 files
    assert summary["subbit_bytes"] < summary["int8_bytes"] < summary["fp32_bytes"]
    assert summary["runtime_utterances"] == 3
    text = capsys.readouterr().out
    assert "WER seen voices" in text and "WER held-out" in text and "packed runtime" in text
    # results.json: fp32, 8-bit QAT and GQ rows in the study's shape, sizes from the written files
    rows = {r["name"]: r for r in json.loads((out / "results.json").read_text())["rows"]}
    assert set(rows) == {"fp32", "qat8", "gq4"}
    for tag, r in rows.items():
        for key in ("name", "method", "bits_avg", "size_bytes", "wer_seen", "wer_heldout", "p90_ms"):
            assert r[key] is not None, (tag, key)
        assert r["size_bytes"] == (out / ("model-gq4.subbit" if tag == "gq4" else f"model-{tag}.subbit")).stat().st_size
        assert r["p90_ms"] >= r["p50_ms"] > 0
    assert rows["gq4"]["size_bytes"] < rows["qat8"]["size_bytes"] < rows["fp32"]["size_bytes"]
    assert (out / "report.md").is_file() and (out / "wer-vs-size.png").stat().st_size > 0
    # the GQ run holds a converted model: every quantized tensor takes at most 2**bits values
    from subbit.runs import load_run
    from subbit.quant import quantized_tensors

    loaded = load_run(out / "gq4", "final")
    for qt in quantized_tensors(loaded.model):
        assert torch.unique(qt.quantizer.hard(qt.latent.detach())).numel() <= 2**qt.quantizer.bits
    # a second demo reuses the finished runs instead of training again
    mtimes = [(out / run / "final.pt").stat().st_mtime_ns for run in ("fp32", "gq4", "qat8")]
    assert cli.main(argv) == 0
    assert [(out / run / "final.pt").stat().st_mtime_ns for run in ("fp32", "gq4", "qat8")] == mtimes

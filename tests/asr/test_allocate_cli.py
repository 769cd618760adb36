"""``subbit allocate`` on a tiny trained run: the rules file loads and prepares, the cache makes a
second budget skip measurement, bad input gives one-line errors, and (slow) the file that
``subbit export`` writes after ``subbit quantize`` with the rules stays within ``--budget``."""

from __future__ import annotations

import json

import pytest
import torch

import subbit.asr.sensitivity as asr_sens
from subbit import cli
from subbit.asr.checkpoint import load_run
from subbit.quant import QuantConfig, prepare, quantized_tensors
from subbit.quant.allocate import kernels_of
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=12, n_eval=6)


@pytest.fixture(scope="module")
def fp32_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "fp32"
    code = cli.main(["train", "--model", "rnnt", "--preset", "tiny", "--data", str(corpus), "--out", str(out),
                     "--steps", "4", "--batch-size", "4", "--tokenizer", "char", "--threads", "1", "--no-progress"])
    assert code == 0
    return out


def allocate(run, out, *extra: str) -> int:
    return cli.main(["allocate", str(run), *extra, "--limit", "4", "--no-progress", "--out", str(out)])


def test_avg_bits_rules_prepare_the_run_and_the_cache_skips_measurement(fp32_run, tmp_path, capsys, monkeypatch):
    rules, js = tmp_path / "rules.yaml", tmp_path / "a.json"
    assert allocate(fp32_run, rules, "--avg-bits", "3.0", "--fix", "joiner.out.weight=8", "--json", str(js)) == 0
    text = capsys.readouterr().out
    assert "sensitivity: mulaw" in text and "measured" in text and "pred. loss +" in text
    data = json.loads(js.read_text())
    assert data["avg_bits"] <= 3.0 and not data["cached"]
    bits = {c["name"]: c["bits"] for c in data["choices"]}
    assert bits["joiner.out.weight"] == 8
    # the file is what quantize/train read: it prepares the run's model with exactly those bits
    loaded = load_run(fp32_run)
    assert set(bits) == {k.name for k in kernels_of(loaded.model)}
    model = prepare(loaded.model, QuantConfig.load(rules))
    assert {qt.name: qt.quantizer.bits for qt in quantized_tensors(model)} == bits

    def boom(*a, **k):
        raise AssertionError("measured again")

    monkeypatch.setattr(asr_sens, "measure_sensitivity", boom)
    assert allocate(fp32_run, tmp_path / "r2.json", "--avg-bits", "2.0", "--json", str(js)) == 0
    assert "read from cache" in capsys.readouterr().out
    assert json.loads(js.read_text())["cached"] and QuantConfig.load(tmp_path / "r2.json")
    with pytest.raises(AssertionError, match="measured again"):  # another method: another measurement
        allocate(fp32_run, tmp_path / "r3.yaml", "--avg-bits", "2", "--method", "kmeans")


def test_cache_key_follows_the_weights(fp32_run, tmp_path, capsys) -> None:
    loaded = load_run(fp32_run)
    first = asr_sens.run_sensitivity(loaded, limit=3, bits=[2, 4], cache_dir=tmp_path, progress=False)
    again = asr_sens.run_sensitivity(loaded, limit=3, bits=[2, 4], cache_dir=tmp_path, progress=False)
    assert not first.cached and again.cached and again.sensitivity.delta == first.sensitivity.delta
    other = asr_sens.run_sensitivity(loaded, limit=2, bits=[2, 4], cache_dir=tmp_path, progress=False)
    assert not other.cached and other.cache_path != first.cache_path  # another subset
    # a stale file under the same name (weights changed, same subset) is measured again
    stored = json.loads(first.cache_path.read_text())
    stored["key"]["weights_sha256"] = "0" * 64
    first.cache_path.write_text(json.dumps(stored))
    assert not asr_sens.run_sensitivity(loaded, limit=3, bits=[2, 4], cache_dir=tmp_path, progress=False).cached


def test_bad_input_is_a_one_line_error(fp32_run, tmp_path, capsys) -> None:
    out = tmp_path / "r.yaml"
    assert allocate(fp32_run, out, "--budget", "1KB") == 2
    err = capsys.readouterr().err
    assert "below the smallest reachable model" in err and err.count("\n") == 1
    assert allocate(fp32_run, out, "--avg-bits", "3", "--fix", "encoder.nope=4") == 2
    assert "matches no kernel" in capsys.readouterr().err
    assert allocate(fp32_run, out, "--avg-bits", "3", "--min-bits", "re:.*=5", "--max-bits", "joiner.out=4") == 2
    assert "cannot all hold" in capsys.readouterr().err
    assert allocate(fp32_run, tmp_path / "r.txt", "--avg-bits", "3") == 2
    assert "unknown rules format" in capsys.readouterr().err
    assert allocate(fp32_run, out, "--budget", "lots") == 2
    assert "expected a size" in capsys.readouterr().err
    assert not out.exists()
    cfg = json.loads((fp32_run / "config.json").read_text())
    fake = tmp_path / "q"
    fake.mkdir()
    (fake / "config.json").write_text(json.dumps({**cfg, "quant": {"default": {"bits": 4}}}))
    assert allocate(fake, out, "--avg-bits", "3") == 2
    assert "is quantized" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_budget_holds_for_the_exported_file(fp32_run, corpus, tmp_path, capsys, granularity: str) -> None:
    # a budget between the smallest and the largest model, so the solver has to choose
    js = tmp_path / "a.json"
    assert allocate(fp32_run, tmp_path / "lo.yaml", "--avg-bits", "1", "--granularity", granularity,
                    "--json", str(js)) == 0
    lo = json.loads(js.read_text())
    assert allocate(fp32_run, tmp_path / "hi.yaml", "--avg-bits", "8", "--granularity", granularity,
                    "--json", str(js)) == 0
    hi = json.loads(js.read_text())
    assert allocate(fp32_run, tmp_path / "any.yaml", "--budget", "1GB", "--granularity", granularity,
                    "--json", str(js)) == 0
    overhead = json.loads(js.read_text())["overhead_bytes"]
    budget = lo["kernel_bytes"] + (hi["kernel_bytes"] - lo["kernel_bytes"]) // 3 + lo["other_bytes"] + overhead
    rules = tmp_path / "rules.yaml"
    assert allocate(fp32_run, rules, "--budget", str(budget), "--granularity", granularity, "--json", str(js)) == 0
    data = json.loads(js.read_text())
    assert data["total_bytes"] <= budget and len({c["bits"] for c in data["choices"]}) > 1
    qrun, sub = tmp_path / "q", tmp_path / "m.subbit"
    assert cli.main(["quantize", str(fp32_run), "--rules", str(rules), "--out", str(qrun), "--steps", "2",
                     "--batch-size", "4", "--threads", "1", "--no-progress"]) == 0  # fmt: skip
    assert cli.main(["export", str(qrun), "--out", str(sub), "--json", str(tmp_path / "s.json")]) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert sub.stat().st_size <= budget
    stored = {t["name"]: t["stored"] for t in summary["tensors"] if t["kind"] == "quantized"}
    assert stored == {c["name"]: c["bytes"] for c in data["choices"]}  # the size module, to the byte

"""benchmarks/augmentation_effect.py's summary: paired deltas against the clean arm, pooled seeds."""

from __future__ import annotations

import numpy as np
import pytest


def _result(arm: str, seed: int, errors: list[int], words: list[int]) -> dict:
    ids = [f"u{i:03d}" for i in range(len(errors))]
    one = {"ids": ids, "errors": errors, "words": words}
    return {"arm": arm, "seed": seed, "run": "", "scores": {"test_heldout": one, "test_seen": one}}


def test_a_uniformly_better_arm_is_a_significant_negative_delta(benchmark_script):
    mod = benchmark_script("augmentation_effect")
    rng = np.random.default_rng(0)
    words = rng.integers(5, 15, size=200).tolist()
    clean = [int(w * 0.5) for w in words]
    better = [e - 1 for e in clean]  # one error fewer on every utterance
    table = mod.summarise([_result("none", 0, clean, words), _result("pitch", 0, better, words)])
    row = table["test_heldout"]["pitch"]
    assert row["delta"] == pytest.approx(-200 / sum(words))
    lo, hi = row["delta_ci"]
    assert lo <= row["delta"] <= hi < 0
    assert row["significant"]
    assert "delta" not in table["test_heldout"]["none"]


def test_an_identical_arm_is_no_finding_and_seeds_are_pooled(benchmark_script):
    mod = benchmark_script("augmentation_effect")
    words = [10] * 50
    a, b = [3] * 50, [5] * 50
    results = [_result("none", 0, a, words), _result("noise", 0, a, words), _result("noise", 1, b, words)]
    row = mod.summarise(results)["test_heldout"]["noise"]
    assert row["seeds"] == [0, 1]
    assert row["wer"] == pytest.approx(0.4)  # mean of 0.3 and 0.5
    assert row["delta"] == pytest.approx(0.1)


def test_seeds_scored_on_different_utterances_are_refused(benchmark_script):
    mod = benchmark_script("augmentation_effect")
    r1 = _result("none", 0, [1, 2], [5, 5])
    r2 = _result("none", 1, [1, 2], [5, 5])
    r2["scores"]["test_heldout"] = {**r2["scores"]["test_heldout"], "ids": ["x", "y"]}
    with pytest.raises(ValueError, match="different utterances"):
        mod.summarise([r1, r2])


def test_an_unknown_effect_or_an_augmented_base_is_refused(tmp_path, benchmark_script):
    mod = benchmark_script("augmentation_effect")
    (tmp_path / "corpus.json").write_text('{"options": {"augment_share": 0.3}}')
    with pytest.raises(SystemExit):
        mod.main(["--base", str(tmp_path), "--effects", "pitch"])
    with pytest.raises(SystemExit):
        mod.main(["--base", str(tmp_path), "--effects", "echo"])

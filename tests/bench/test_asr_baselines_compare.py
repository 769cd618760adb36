"""benchmarks/asr_baselines_compare.py: arms from run directories, seeds from their configs, paired."""

from __future__ import annotations

import json
from pathlib import Path

import pytest



def _run(root: Path, name: str, seed: int, errors: list[int], splits=("test_seen", "test_heldout")) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"train_args": {"seed": seed}}))
    for split in splits:
        rows = [{"id": f"{split}-{i:03d}", "errors": e, "ref_words": 10} for i, e in enumerate(errors)]
        (run / f"errors-{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reversed(rows)))
    return run


def test_an_arm_with_fewer_errors_everywhere_is_a_finding(tmp_path, capsys, benchmark_script):
    mod = benchmark_script("asr_baselines_compare")
    a0, a1 = _run(tmp_path, "a0", 0, [5] * 40), _run(tmp_path, "a1", 1, [3] * 40)
    b0 = _run(tmp_path, "b0", 0, [2] * 40, splits=("test_seen", "test_heldout", "test_open"))
    out = tmp_path / "cmp.json"
    assert mod.main(["--reference", "clean", "--arm", f"clean={a0},{a1}", "--arm", f"aug={b0}",
                     "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert set(doc["table"]) == {"test_seen", "test_heldout"}  # test_open is not in every run
    row = doc["table"]["test_heldout"]["aug"]
    assert row["delta"] == pytest.approx(0.2 - 0.4) and row["significant"]  # seeds pooled: (5 + 3) / 2
    assert doc["table"]["test_heldout"]["clean"]["seeds"] == [0, 1]
    assert "(finding)" in capsys.readouterr().out


def test_bad_arm_specs_and_missing_runs_are_refused(tmp_path, benchmark_script):
    mod = benchmark_script("asr_baselines_compare")
    with pytest.raises(SystemExit, match="NAME=RUN"):
        mod.main(["--reference", "x", "--arm", "no-equals-sign"])
    with pytest.raises(SystemExit, match="not a run directory"):
        mod.main(["--reference", "x", "--arm", f"x={tmp_path / 'nothing'}"])
    run = _run(tmp_path, "r", 0, [1, 2])
    with pytest.raises(ValueError, match="reference arm"):
        mod.main(["--reference", "other", "--arm", f"x={run}"])


def test_run_scores_sorts_by_id_and_names_the_missing_file(tmp_path):
    from subbit.experiments.arms import run_scores

    run = _run(tmp_path, "r", 0, [4, 1, 7])
    s = run_scores(run, "test_seen")
    assert s["ids"] == sorted(s["ids"]) and s["errors"] == [4, 1, 7] and s["words"] == [10] * 3
    with pytest.raises(FileNotFoundError, match="errors-test_open.jsonl"):
        run_scores(run, "test_open")

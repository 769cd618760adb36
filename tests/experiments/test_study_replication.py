"""Two studies on two fp32 bases, side by side (experiments.study_replication)."""

import json

import pytest

from subbit.experiments import study_replication as rep


def _row(arch, name, delta, lossless, seeds=(0, 1, 2), base="aaaa"):
    return {"arch": arch, "name": name, "seeds": list(seeds), "wer_heldout": 0.5 + delta[0],
            "delta_vs_fp32_ci": list(delta), "lossless": lossless, "fp32_base": base}


def _study(tmp_path, name, rows, claims, machine="cpu"):
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"meta": {"machine": machine}, "rows": rows, "claims": claims}))
    return d


def test_rows_and_claims_are_matched_and_disagreements_flagged(tmp_path):
    a = _study(tmp_path, "xeon", [_row("rnnt", "fp32", (0, 0), True, base="x1"), _row("rnnt", "gq4", (-0.01, 0.002), True, base="x1"),
                                  _row("rnnt", "gq3", (0.002, 0.016), False, base="x1"), _row("rnnt", "lsq2", (0.0, 0.01), False, seeds=())],
               [{"claim": "c1", "verdict": "reproduced", "evidence": "e1"},
                {"claim": "c2", "verdict": "not run", "evidence": "-"}], machine="Intel")
    b = _study(tmp_path, "epyc", [_row("rnnt", "fp32", (0, 0), True, base="e1"), _row("rnnt", "gq4", (-0.004, 0.009), False, base="e1"),
                                  _row("rnnt", "gq3", (0.003, 0.02), False, base="e1"), _row("rnnt", "lsq2", (0.0, 0.01), False)],
               [{"claim": "c1", "verdict": "not reproduced", "evidence": "e2"},
                {"claim": "c2", "verdict": "reproduced", "evidence": "e3"}], machine="AMD")
    out = rep.compare(rep.load(b), rep.load(a))
    assert out["bases"] == {"this": {"rnnt": "e1"}, "other": {"rnnt": "x1"}}
    by_name = {r["name"]: r for r in out["rows"]}
    assert set(by_name) == {"fp32", "gq3", "gq4"}  # lsq2 has no seeds in one study: not compared
    assert by_name["gq4"]["lossless_agrees"] is False and by_name["gq3"]["lossless_agrees"] is True
    assert [c["claim"] for c in out["claims"]] == ["c1"]  # c2 was not run in one of them
    assert out["claims"][0]["agrees"] is False
    json_path, md_path = rep.write(b, a)
    text = md_path.read_text()
    assert "| rnnt | gq4 | 3/3 | 49.60 | [-0.40, +0.90] | no | 49.00 | [-1.00, +0.20] | yes | **no** | - |" in text
    assert json.loads(json_path.read_text())["rows"] == out["rows"]


def _cells(study, name, base, errors_per_seed, ids=("u1", "u2", "u3")):
    d = study / "cells" / "rnnt"
    d.mkdir(parents=True, exist_ok=True)
    for seed, errors in enumerate(errors_per_seed):
        ev = {"utt_ids": list(ids), "utt_errors": errors, "utt_words": [10, 10, 10]}
        (d / f"{name}-s{seed}.json").write_text(json.dumps({"base": {"sha256": base}, "eval": {"test_heldout": ev}}))


def test_base_delta_is_paired_over_utterances_and_needs_every_cell(tmp_path):
    a = _study(tmp_path, "a", [_row("rnnt", "fp32", (0, 0), True, seeds=(0, 1), base="A")], [])
    b = _study(tmp_path, "b", [_row("rnnt", "fp32", (0, 0), True, seeds=(0, 1), base="B")], [])
    _cells(a, "fp32", "A", [[3, 3, 3], [3, 3, 3]])  # 30% WER on base A
    _cells(b, "fp32", "B", [[1, 1, 1], [1, 1, 1]])  # 10% on base B: every resample differs by +20 points
    lo, hi = rep.compare(rep.load(a), rep.load(b), a, b)["rows"][0]["base_delta_ci"]
    assert lo == pytest.approx(0.2) and hi == pytest.approx(0.2)
    _cells(b, "fp32", "other-base", [[1, 1, 1], [1, 1, 1]])  # cells of another base never count
    assert rep.compare(rep.load(a), rep.load(b), a, b)["rows"][0]["base_delta_ci"] is None
    _cells(b, "fp32", "B", [[1, 1, 1], [1, 1, 1]], ids=("u1", "u2", "u4"))  # other utterances: no pairing
    assert rep.compare(rep.load(a), rep.load(b), a, b)["rows"][0]["base_delta_ci"] is None


def test_missing_or_foreign_results_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="no study results"):
        rep.load(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"rows": {}}))
    with pytest.raises(ValueError, match="not a study results file"):
        rep.load(tmp_path)


def test_cli_writes_the_replication_next_to_the_report(tmp_path):
    from subbit.cli import main

    assert main(["study", "--quick", "--report-only", "--no-progress", "--out", str(tmp_path / "b"),
                 "--replicates", str(tmp_path / "b")]) == 0
    data = json.loads((tmp_path / "b" / "replication.json").read_text())
    assert data["rows"] == [] and (tmp_path / "b" / "replication.md").read_text().startswith("# Replication: b vs b")

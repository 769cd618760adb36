"""Claims rest on rows with every seed; fewer-seed rows are named as indicative, never decisive."""

from __future__ import annotations

from subbit.experiments.study_claims import evaluate_claims
from subbit.experiments.study_plan import StudyConfig


def _conformer(name: str, seeds: list[int], lossless: bool) -> dict:
    return {"arch": "conformer", "name": name, "method": "gq", "status": "done", "bits_avg": 4.0,
            "size_vs_fp32": 1 / 7.3, "seeds": seeds, "lossless": lossless, "wer_heldout": 0.5, "wer_seen": 0.13,
            "delta_vs_fp32_ci": [-0.002, 0.004] if lossless else [0.009, 0.02]}


def _claim(rows: list[dict], seeds: int = 3, quick: bool = False, key: str = "sub-5-bit Conformer") -> dict:
    cfg = StudyConfig(out="unused", archs=("conformer", "rnnt"), seeds=seeds, quick=quick)
    return next(c for c in evaluate_claims(rows, cfg, {}) if key in c["claim"])


def test_a_one_seed_lossless_row_does_not_decide_the_conformer_claim() -> None:
    c = _claim([_conformer("gq4-fixed", [0], lossless=True)])
    assert c["verdict"] == "not run"
    assert "indicative only: gq4-fixed (seeds [0]" in c["evidence"]


def test_the_full_seed_rows_decide_and_the_one_seed_row_is_listed() -> None:
    rows = [_conformer("gq4", [0, 1, 2], lossless=False), _conformer("gq4-fixed", [0], lossless=True)]
    c = _claim(rows)
    assert c["verdict"] == "not reproduced"
    assert c["evidence"].startswith("gq4: 4.00 bits avg, 7.3x smaller") and "over seeds [0, 1, 2]" in c["evidence"]
    assert "indicative only: gq4-fixed" in c["evidence"]
    rows[0]["lossless"] = True
    assert _claim(rows)["verdict"] == "reproduced"


def test_the_one_bit_claim_needs_every_seed_too() -> None:
    r = {**_conformer("gq4-hh1", [0], lossless=True), "arch": "rnnt", "bits_avg": 3.75}
    assert _claim([r], key="1 bit")["verdict"] == "not run"
    assert _claim([{**r, "seeds": [0, 1, 2]}], key="1 bit")["verdict"] == "reproduced"
    # a toy --quick study runs its allocation row at one seed by design, and may decide on it
    assert _claim([r], seeds=2, quick=True, key="1 bit")["verdict"] == "reproduced"

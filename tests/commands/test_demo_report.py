"""``subbit demo``'s summary and result rows: what the stages recorded, one line per figure."""

from __future__ import annotations

import json

from subbit.commands.demo_report import format_summary, result_rows, write_results

FULL = {
    "corpus_engines": {"espeak": ["a", "b", "c", "d", "e", "f", "g"], "flite": ["kal"]}, "corpus_open_sentences": 1234,
    "params": 1234567, "fp32_mb": 4.71, "train_minutes": 3.97, "wer_test_seen": 12.345, "wer_test_heldout": 23.4,
    "gq4_wer_test_seen": 13.1, "gq4_wer_test_heldout": 24.2, "qat8_wer_test_seen": 12.9, "qat8_wer_test_heldout": 23.9,
    "subbit_bytes": 123456, "fp32_bytes": 4938268, "int8_bytes": 1300000, "runtime_wer_test_heldout": 24.0,
    "runtime_utterances": 60, "runtime_rtf": 0.0123, "runtime_weight_bytes": 99999, "gq4_p90_ms": 1.23,
    "gq4_p50_ms": 1.0, "qat8_p90_ms": 2.34, "gq4_file_bytes": 123456, "qat8_file_bytes": 300000, "wall_minutes": 9.87,
}


def test_summary_has_a_line_per_recorded_figure() -> None:
    text = format_summary(FULL)
    assert text.splitlines()[:2] == ["", "=== subbit demo: summary ==="]
    assert "corpus           engines espeak (7 voices: a, b, c, d, ... (+3 more)); flite (1 voice: kal); text: " \
           "grammar commands + 1,234 open fortune sentences" in text
    assert "model            rnnt, 1.23M params, 4.71 MB fp32" in text
    assert "model file       123,456 bytes .subbit vs 4,938,268 fp32 (40.0x smaller) and 1,300,000 int8" in text
    # fp32 latency and file size were not measured: the line says so instead of failing
    assert "fp32 nan ms; files 123,456 / 300,000 / 0 bytes" in text
    assert "WER open text" not in text and text.endswith("total time       9.9 min")
    assert format_summary({}).splitlines() == ["", "=== subbit demo: summary ===", "total time       0.0 min"]


def test_results_files_hold_the_rows(tmp_path) -> None:
    write_results(tmp_path, tmp_path / "data", FULL)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["rows"] == result_rows(FULL) and doc["summary"] == FULL
    gq = next(r for r in doc["rows"] if r["name"] == "gq4")
    assert (gq["size_bytes"], gq["wer_heldout"], gq["runtime_wer_heldout"], gq["p90_ms"]) == (123456, 24.2, 24.0, 1.23)
    assert "| gq4 | 4 | 123456 | 13.1 | 24.2 | 24.0 | 1.0 | 1.23 |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "wer-vs-size.png").read_bytes()[:4] == b"\x89PNG"

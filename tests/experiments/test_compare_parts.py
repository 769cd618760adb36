"""The parts of ``compare``: run bookkeeping (compare_runs) and sizes (compare_sizes)."""

from __future__ import annotations

import hashlib

import pytest

from subbit.experiments.compare_config import CompareConfig
from subbit.experiments.compare_runs import (
    check_fingerprint,
    fingerprint,
    init_identity,
    read_json,
    weights_of,
    write_json,
)
from subbit.experiments.compare_sizes import export_size, theory_sizes
from subbit.experiments.recipes import get_recipe
from subbit.export import load_packed
from subbit.runs import load_run
from subbit.testing.dummies import dummy_transducer


def test_export_size_is_the_file_and_keeps_the_recipe_manifest(tiny_run, tmp_path) -> None:
    run, _ = tiny_run()
    loaded = load_run(run)
    path = tmp_path / "m.subbit"
    assert export_size(loaded, path, "gq4") == path.stat().st_size
    # only the recipe and the features: the bytes a study cell measured before stay the same
    assert load_packed(path).manifest["extra"] == {"recipe": "gq4", "features": None}
    # a refused export falls back to the theoretical size (None here), it does not stop the table
    assert export_size(loaded, tmp_path, "gq4") is None


def test_theory_sizes_of_fp32_and_quantized(tiny_run) -> None:
    fp32 = dummy_transducer("rnnt", n_mels=16)
    n = sum(p.numel() for p in fp32.parameters())
    assert theory_sizes(fp32) == (32.0, 4 * n, [])
    _, model = tiny_run(quant={"default": {"bits": 3}})
    bits, theory, rows = theory_sizes(model)
    assert bits == 3.0 and {r["bits"] for r in rows} == {3}
    # 3-bit indices, one 8-entry fp32 codebook per tensor, the rest (biases, norms) in fp32
    floats = 4 * sum(p.numel() for name, p in model.named_parameters() if "subbit_quant" not in name)
    assert theory == sum(-(-r["numel"] * 3 // 8) + 8 * 4 for r in rows) + floats


def test_fingerprint_names_what_differs(tiny_run, tmp_path) -> None:
    run, _ = tiny_run()
    init = init_identity(run)
    assert init["weights"] == weights_of(run) == "final"
    assert init["sha256"] == hashlib.sha256((run / "final.pt").read_bytes()).hexdigest()
    cfg = CompareConfig(out=str(tmp_path), steps=2)
    fp = fingerprint(get_recipe("gq4"), cfg, init)
    path = tmp_path / "r.json"
    write_json(path, {"fingerprint": fp})
    check_fingerprint(path, fp, "result")  # the same settings: accepted
    other = fingerprint(get_recipe("gq4"), CompareConfig(out=str(tmp_path), steps=3), init)
    with pytest.raises(ValueError, match=r"result was made with other settings \(differs in: budget;"):
        check_fingerprint(path, other, "result")
    # PTQ does not train: budget and training settings are not part of its fingerprint
    assert fingerprint(get_recipe("ptq4-uniform"), cfg, init)["budget"] is None


def test_a_broken_result_file_says_how_to_redo(tmp_path) -> None:
    assert read_json(tmp_path / "none.json") is None
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="invalid JSON at line 1.*; delete it to redo"):
        read_json(bad)
    bad.write_text("[1]")
    with pytest.raises(ValueError, match="expected a JSON object; delete it to redo"):
        read_json(bad)

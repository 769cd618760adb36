"""The fuzz harness of benchmarks/fuzz_container.py, small: a few hundred mutants of a tiny
exported RNN-T (manifest values, tensor table, tokenizer blob, header bytes, payload; stale and
re-sealed digests). Each must be refused with SubbitFormatError or load with outputs identical
to the original through load_packed, the runtime session and subbit report; a corrupted file
(digests not recomputed) must never load as another model, and nothing may crash."""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

torch.set_num_threads(1)
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fuzz_container.py"


@pytest.fixture(scope="module")
def fuzz() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_container", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_container"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_three_hundred_mutants_are_refused_or_identical_and_none_crashes(fuzz: ModuleType, tmp_path: Path) -> None:
    s = fuzz.run(300, seed=13, workdir=tmp_path, timeout=30.0)
    assert s["failures"] == [], s["failures"][:5]
    assert s["crashed"] == 0 and s["corrupt_loaded_different"] == 0
    assert s["refused"] + s["identical"] + s["different"] == 300
    assert s["identical"] >= s["bytes_unchanged"]
    # tamper evidence: a corrupted file whose bytes changed at all is refused, every time
    c = s["by_mode"]["corrupt"]
    assert c["identical"] == c["bytes_unchanged"] and c["refused"] == 150 - c["bytes_unchanged"], c
    # the mutants reach past the digests: re-sealed ones are refused by many different checks
    assert len(s["top_refusals"]) >= 8, s["top_refusals"]
    assert s["by_mode"]["resealed"]["identical"] + s["by_mode"]["resealed"]["different"] > 0


def _one(fuzz: ModuleType, tmp_path: Path) -> tuple[bytes, Any, np.ndarray, dict[str, str], Path]:
    blob = fuzz.make_original(tmp_path / "o.subbit")
    path = tmp_path / "m.subbit"
    path.write_bytes(blob)
    audio = fuzz._audio()
    return blob, fuzz.Parts.of(blob), audio, fuzz.outputs(path, audio), path


def test_the_harness_sees_a_different_model_and_a_crash(fuzz: ModuleType, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """Controls: without them the harness could report 0 failures because it sees nothing."""
    from subbit.export import container

    blob, parts, audio, ref, path = _one(fuzz, tmp_path)
    assert fuzz.classify(blob, path, ref, audio, 30.0) == ("identical", "")
    arrays = dict(parts.arrays)
    arrays["joiner.out.bias"] = arrays["joiner.out.bias"] + np.float32(0.5)
    outcome, detail = fuzz.classify(fuzz._rebuilt(parts, parts.manifest, arrays), path, ref, audio, 30.0)
    assert outcome == "different" and "runtime" in detail
    header = fuzz._header_with(parts, {**parts.manifest, "note": 1})
    assert fuzz.classify(fuzz._dump(header) + parts.data, path, ref, audio, 30.0)[0] == "refused"

    def broken(p: Any) -> Any:
        raise KeyError("x")

    def slow(p: Any, a: Any) -> dict[str, str]:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        return dict(ref)

    monkeypatch.setattr(fuzz, "outputs", slow)
    outcome, detail = fuzz.classify(blob, path, ref, audio, 30.0, cpu_budget=0.1)
    assert outcome == "crashed" and detail.startswith("resources")
    monkeypatch.undo()
    monkeypatch.setattr(container, "load_packed", broken)
    assert fuzz.classify(blob, path, ref, audio, 30.0)[0] == "crashed"

"""kill -9 at random moments, resume, same final model: a few kills of benchmarks/kill_resume.py
(the benchmark runs >= 20)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_resume.py"


@pytest.mark.slow
def test_three_kills_resume_to_a_bit_identical_model(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("kill_resume", SCRIPT)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kill_resume"] = mod
    spec.loader.exec_module(mod)
    s = mod.run(kills=3, steps=12, seed=1, p_startup=0.0, workdir=tmp_path, report=lambda _: None)
    assert s["kills"] == 3 and s["resume_failed"] == 0, s
    assert s["finished"] == s["runs"] and s["identical_finals"] == s["runs"] >= 1, s
    assert s["resumed"] >= 1, s  # (a kill before the first checkpoint restarts fresh)

"""subbit.bench.record: the provenance and JSON file every benchmark script writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from subbit.bench.record import cpu_name, provenance, write_record


def test_provenance_names_this_checkout_and_the_command() -> None:
    p = provenance(__file__)
    assert list(p) == ["machine", "command", "commit"]
    assert p["machine"] == cpu_name() and p["machine"]
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=Path(__file__).parent).stdout.strip()  # fmt: skip
    assert p["commit"] == head


def test_the_record_round_trips_and_is_announced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    summary = {"tried": 3, "nested": {"x": [1.5, None]}, "machine": "cpu"}
    out = tmp_path / "deep" / "r.json"
    write_record(out, summary)
    assert json.loads(out.read_text()) == summary and out.read_text().endswith("}\n")
    assert capsys.readouterr().out == f"wrote {out}\n"

"""``subbit eval FILE.subbit``: the served model scored on a corpus split, and the issue's
contract that ``build/subbit-stream FILE.subbit UTT.wav`` prints the same transcript as its last
line for every utterance (both go through libsubbit: the same float operations, so the same text)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from subbit import cli
from subbit.asr.tokenizer import train_tokenizer
from subbit.runtime import native
from subbit.testing.dummies import make_dummy_corpus

from .test_libsubbit import CLI, TEXTS, build_library
from .test_session import export_tiny


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    build_library()
    assert native.library(reload=True) is not None
    root = tmp_path_factory.mktemp("eval-packed")
    corpus = make_dummy_corpus(root / "corpus", n_train=1, n_eval=4)
    tok = train_tokenizer(TEXTS, kind="char")
    return export_tiny(root / "model", "rnnt", tokenizer_bytes=tok.to_bytes()), corpus


def test_eval_of_a_subbit_file_equals_subbit_stream_per_utterance(served: tuple[Path, Path], tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    model, corpus = served
    out, errors = tmp_path / "r.json", tmp_path / "e.jsonl"
    assert cli.main(["eval", str(model), "--data", str(corpus), "--split", "test_seen", "--json", str(out),
                     "--errors", str(errors)]) == 0  # fmt: skip
    result = json.loads(out.read_text())
    assert result["served"] is True and result["backend"] == "c" and result["utterances"] == 4
    assert "test_seen: WER" in capsys.readouterr().out
    rows = {r["id"]: r for r in map(json.loads, errors.read_text().splitlines())}
    manifest = [json.loads(line) for line in (corpus / "test_seen.jsonl").read_text().splitlines()]
    assert sorted(rows) == sorted(u["id"] for u in manifest)
    nonempty = 0
    for u in manifest:
        stream = subprocess.run([str(CLI), str(model), str(corpus / u["audio"])], capture_output=True, text=True, check=True)
        lines = stream.stdout.splitlines()
        assert (lines[-1] if lines else "") == rows[u["id"]]["hyp"], u["id"]
        nonempty += bool(rows[u["id"]]["hyp"])
    assert nonempty, "every transcript empty: the comparison would show nothing"


def test_eval_of_a_subbit_file_refuses_what_does_not_apply(served: tuple[Path, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model, corpus = served
    with pytest.raises(SystemExit, match="needs --data"):
        cli.main(["eval", str(model)])
    with pytest.raises(SystemExit, match="--method beam"):
        cli.main(["eval", str(model), "--data", str(corpus), "--method", "beam"])
    assert cli.main(["eval", str(model), "--data", str(corpus), "--split", "nope"]) != 0
    assert "no manifest" in capsys.readouterr().err

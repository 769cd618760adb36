"""WER scoring (jiwer), the errors file, and decoding through evaluate()."""

from __future__ import annotations

import jiwer
import pytest
import torch

from subbit.asr.data import read_manifest
from subbit.asr.evaluate import EvalResult, evaluate, score, write_errors
from subbit.asr.models import build_model
from subbit.asr.tokenizer import train_tokenizer
from subbit.testing.dummies import WORDS, make_dummy_corpus

torch.set_num_threads(1)

REFS = ["go left now", "stop", "up up right", ""]
HYPS = ["go right now", "stop stop", "up right", "left"]


def test_score_matches_jiwer_corpus_wer() -> None:
    rows = score(["a", "b", "c", "d"], REFS, HYPS)
    result = EvalResult(rows)
    nonempty = [(r, h) for r, h in zip(REFS, HYPS) if r]
    expected = jiwer.process_words([r for r, _ in nonempty], [h for _, h in nonempty])
    # the empty reference adds one insertion and no reference words
    assert result.ref_words == 7
    assert result.substitutions == expected.substitutions
    assert result.deletions == expected.deletions
    assert result.insertions == expected.insertions + 1
    assert result.wer == pytest.approx((result.substitutions + result.deletions + result.insertions) / 7)
    assert [r.errors for r in rows] == [1, 1, 1, 1]


def test_to_dict_has_the_contract_keys() -> None:
    d = EvalResult(score(["x"], ["go"], ["stop"]), method="greedy", split="dev", run="r").to_dict()
    for key in ("wer", "wer_percent", "utterances", "split", "substitutions", "deletions", "insertions",
                "method", "run"):
        assert key in d
    assert d["wer"] == 1.0 and d["wer_percent"] == 100.0 and d["utterances"] == 1


def test_errors_file_sorted_worst_first(tmp_path) -> None:
    res = EvalResult(score(["a", "b", "c"], ["go", "go left up", "stop"], ["go", "stop", "go"]))
    write_errors(tmp_path / "e.tsv", res)
    lines = (tmp_path / "e.tsv").read_text().splitlines()
    assert lines[0] == "id\tref\thyp\terrors"
    assert [line.split("\t")[0] for line in lines[1:]] == ["b", "c", "a"]
    assert [int(line.split("\t")[3]) for line in lines[1:]] == [3, 1, 0]
    write_errors(tmp_path / "e.jsonl", res)
    assert '"id": "b"' in (tmp_path / "e.jsonl").read_text().splitlines()[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_dummy_corpus(tmp_path_factory.mktemp("corpus"), n_train=4, n_eval=5)
    utts = read_manifest(root / "test_seen.jsonl")
    tok = train_tokenizer(list(WORDS), kind="char")
    torch.manual_seed(0)
    model = build_model("rnnt", "tiny", vocab_size=tok.vocab_size)
    with torch.no_grad():  # make the untrained model emit some tokens
        model.joiner.out.bias[1:] += 3.0
    return model, tok, utts


def test_evaluate_counts_and_limit(setup) -> None:
    model, tok, utts = setup
    res = evaluate(model, tok, utts, limit=3, split="test_seen")
    assert len(res.utts) == 3 and [u.id for u in res.utts] == [u.id for u in utts[:3]]
    assert res.ref_words == sum(len(u.text.split()) for u in utts[:3])
    assert res.to_dict()["split"] == "test_seen"
    with pytest.raises(ValueError, match="limit"):
        evaluate(model, tok, utts, limit=0)


def test_streaming_equals_full_utterance_greedy(setup) -> None:
    model, tok, utts = setup
    full = evaluate(model, tok, utts)
    for chunk in (None, 7):
        stream = evaluate(model, tok, utts, streaming=True, chunk_frames=chunk)
        assert [u.hyp for u in stream.utts] == [u.hyp for u in full.utts]
    assert stream.to_dict()["streaming"] is True
    with pytest.raises(ValueError, match="greedy only"):
        evaluate(model, tok, utts, streaming=True, method="beam")


def test_beam_search_runs(setup) -> None:
    model, tok, utts = setup
    res = evaluate(model, tok, utts, method="beam", beam=2, limit=2)
    assert res.method == "beam" and res.to_dict()["beam"] == 2 and len(res.utts) == 2

"""Tokenizer round trips for BPE and char, blank handling and serialisation."""

from __future__ import annotations

import random

import pytest

from subbit.asr.corpus.grammar import command_sentence
from subbit.asr.tokenizer import Tokenizer, train_tokenizer

TEXTS = [command_sentence(random.Random(i)) for i in range(400)] + ["it's a test of apostrophes"]


@pytest.fixture(scope="module", params=["bpe", "char"])
def tok(request):
    return train_tokenizer(TEXTS, kind=request.param, vocab_size=64)


def test_round_trip_and_id_range(tok):
    for text in TEXTS[:100] + ["it's a test of apostrophes"]:
        ids = tok.encode(text)
        assert ids and min(ids) >= 1 and max(ids) < tok.vocab_size
        assert tok.decode(ids) == text
    assert tok.blank_id == 0 and tok.id_to_piece(0) == "<blank>"


def test_decode_ignores_blank_and_out_of_range(tok):
    ids = tok.encode("set a timer")
    noisy = [0] + [i for x in ids for i in (x, 0)] + [tok.vocab_size + 5]
    assert tok.decode(noisy) == "set a timer"


def test_bytes_and_file_round_trip(tok, tmp_path):
    again = Tokenizer.from_bytes(tok.to_bytes())
    assert again.kind == tok.kind and again.vocab_size == tok.vocab_size
    assert all(again.encode(t) == tok.encode(t) for t in TEXTS[:50])
    tok.save(tmp_path / "t.model")
    loaded = Tokenizer.load(tmp_path / "t.model")
    assert loaded.encode(TEXTS[7]) == tok.encode(TEXTS[7])


def test_vocab_sizes():
    bpe = train_tokenizer(TEXTS, "bpe", vocab_size=96)
    assert bpe.vocab_size == 96  # includes the blank
    char = train_tokenizer(TEXTS, "char")
    assert char.vocab_size == len({c for t in TEXTS for c in t}) + 1
    small = train_tokenizer(["hello world"], "bpe", vocab_size=128)  # too little text: shrinks
    assert 8 <= small.vocab_size < 128 and small.decode(small.encode("hello world")) == "hello world"
    assert len(bpe.to_bytes()) < 20_000  # no normaliser tables: small enough to embed


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(TEXTS, kind="wordpiece")
    with pytest.raises(ValueError, match="no non-empty"):
        train_tokenizer(["", "  "])
    with pytest.raises(ValueError, match="magic"):
        Tokenizer.from_bytes(b"not a tokenizer")


def test_char_unknown_characters_dropped():
    char = train_tokenizer(["abc"], "char")
    assert char.decode(char.encode("abxc")) == "abc"

"""The runtime reads the tokenizer blob itself: same vocabulary and same text as the training
tokenizer for every id sequence (char and BPE), without importing subbit.asr."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from subbit.asr.tokenizer import Tokenizer, train_tokenizer
from subbit.runtime.tokenizer import BlobTokenizer, load_tokenizer

TEXTS = ["hello world", "a quick brown fox jumps over the lazy dog", "the dog sleeps"] * 20


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_runtime_decode_equals_the_training_tokenizer(kind: str) -> None:
    tok = Tokenizer("char", chars=list("abcdefghijklmnopqrstuvwxyz ")) if kind == "char" else \
        train_tokenizer(TEXTS, "bpe", 40)
    rt = load_tokenizer(np.frombuffer(tok.to_bytes(), np.uint8))
    assert isinstance(rt, BlobTokenizer) and rt.kind == tok.kind and rt.vocab_size == tok.vocab_size
    rng = np.random.default_rng(0)
    for _ in range(50):  # ids beyond the vocabulary and blanks included: both ignore them
        ids = rng.integers(0, tok.vocab_size + 3, size=int(rng.integers(0, 20))).tolist()
        assert rt.decode(ids) == tok.decode(ids)
    for text in TEXTS[:3]:
        assert rt.decode(tok.encode(text)) == tok.decode(tok.encode(text))
    assert [rt.id_to_piece(i) for i in range(tok.vocab_size)] == [tok.id_to_piece(i) for i in range(tok.vocab_size)]


def test_the_runtime_tokenizer_imports_no_training_code() -> None:
    src = Path(__file__).resolve().parents[2] / "src" / "subbit" / "runtime"
    for name in ("tokenizer.py", "session.py"):
        tree = ast.parse((src / name).read_text())
        mods = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        mods += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in mods if m.startswith("subbit.asr")], name

"""Text <-> token ids for transducers: SentencePiece BPE or a character table.

Id 0 is always the transducer blank; real tokens are 1..vocab_size-1. SentencePiece's own ids
are shifted by one (its ``<unk>`` id 0 becomes 1), so the model file stays unmodified and can be
embedded byte-for-byte in an export. The serialised form (``to_bytes``) is a small JSON header
plus, for BPE, the SentencePiece model proto.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path

_MAGIC = b"SBTOK1\n"


class Tokenizer:
    """Encode/decode with blank id 0; build with :func:`train_tokenizer` or :meth:`from_bytes`."""

    blank_id = 0

    def __init__(self, kind: str, *, chars: list[str] | None = None, sp_model: bytes | None = None) -> None:
        self.kind = kind
        if kind == "char":
            if not chars:
                raise ValueError("char tokenizer needs a non-empty character table")
            self._chars = list(chars)
            self._index = {c: i + 1 for i, c in enumerate(self._chars)}
            self._sp = None
            self._sp_model = None
        elif kind == "bpe":
            import sentencepiece as spm

            if not sp_model:
                raise ValueError("bpe tokenizer needs SentencePiece model bytes")
            self._sp = spm.SentencePieceProcessor(model_proto=sp_model)
            self._sp_model = bytes(sp_model)
            self._chars = []
            self._index = {}
        else:
            raise ValueError(f"unknown tokenizer kind {kind!r} (choose 'bpe' or 'char')")

    @property
    def vocab_size(self) -> int:
        """Number of output symbols including the blank (id 0)."""
        if self._sp is not None:
            return self._sp.get_piece_size() + 1
        return len(self._chars) + 1

    def encode(self, text: str) -> list[int]:
        """Ids (all >= 1). Characters outside a char table are dropped; BPE maps them to <unk>."""
        if self._sp is not None:
            return [i + 1 for i in self._sp.encode(text)]
        return [self._index[c] for c in text if c in self._index]

    def decode(self, ids: Iterable[int]) -> str:
        """Text for ids; blank (0) and out-of-range ids are ignored."""
        ids = [int(i) for i in ids if 0 < int(i) < self.vocab_size]
        if self._sp is not None:
            return self._sp.decode([i - 1 for i in ids])
        return "".join(self._chars[i - 1] for i in ids)

    def id_to_piece(self, i: int) -> str:
        """Readable symbol for an id ("<blank>" for 0)."""
        if i == 0:
            return "<blank>"
        if self._sp is not None:
            return self._sp.id_to_piece(i - 1)
        return self._chars[i - 1]

    # ------------------------------------------------------------------ serialisation
    def to_bytes(self) -> bytes:
        header = {"kind": self.kind, "vocab_size": self.vocab_size}
        if self.kind == "char":
            header["chars"] = self._chars
        buf = io.BytesIO()
        buf.write(_MAGIC)
        h = json.dumps(header).encode()
        buf.write(len(h).to_bytes(4, "little"))
        buf.write(h)
        if self._sp_model is not None:
            buf.write(self._sp_model)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Tokenizer:
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 4:
            raise ValueError("not a subbit tokenizer blob (bad magic)")
        pos = len(_MAGIC)
        n = int.from_bytes(data[pos : pos + 4], "little")
        try:
            header = json.loads(data[pos + 4 : pos + 4 + n])
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ValueError("corrupt tokenizer header") from None
        rest = data[pos + 4 + n :]
        tok = cls(header.get("kind", "?"), chars=header.get("chars"), sp_model=rest or None)
        if tok.vocab_size != header.get("vocab_size"):
            raise ValueError("tokenizer vocab_size does not match its header")
        return tok

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.to_bytes())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        try:
            return cls.from_bytes(Path(path).read_bytes())
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def train_tokenizer(texts: Iterable[str], kind: str = "bpe", vocab_size: int = 128) -> Tokenizer:
    """Train a tokenizer in memory.

    ``vocab_size`` counts the blank, as :attr:`Tokenizer.vocab_size` does. For ``char`` it is
    ignored: the table is every character seen (sorted). For ``bpe`` SentencePiece may stop short
    of the size on a small text set; the result is then smaller (check ``.vocab_size``).
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("train_tokenizer: no non-empty texts")
    if kind == "char":
        return Tokenizer("char", chars=sorted({c for t in texts for c in t}))
    if kind != "bpe":
        raise ValueError(f"unknown tokenizer kind {kind!r} (choose 'bpe' or 'char')")
    if vocab_size < 8:
        raise ValueError(f"vocab_size must be >= 8 for bpe, got {vocab_size}")
    import sentencepiece as spm

    model = io.BytesIO()
    n_chars = len({c for t in texts for c in t if c != " "})
    size = vocab_size - 1
    last_err: Exception | None = None
    for _ in range(8):  # shrink when SentencePiece says the text cannot support the size
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=model, model_type="bpe",
                vocab_size=size, character_coverage=1.0, bos_id=-1, eos_id=-1, pad_id=-1,
                unk_id=0, hard_vocab_limit=False, num_threads=1, minloglevel=2,
                max_sentence_length=100000, split_digits=True,
                normalization_rule_name="identity",  # text is pre-normalised; keeps the blob small
            )
            return Tokenizer("bpe", sp_model=model.getvalue())
        except RuntimeError as exc:
            last_err = exc
            model = io.BytesIO()
            size = max(n_chars + 2, size * 3 // 4)
    raise ValueError(f"SentencePiece could not train a {vocab_size}-token model: {last_err}")

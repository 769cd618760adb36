"""The tokenizer blob of a ``.subbit`` file, read by the runtime itself (no ``subbit.asr`` import).

The blob is what :meth:`subbit.asr.tokenizer.Tokenizer.to_bytes` writes: the magic ``SBTOK1\\n``,
a 4-byte little-endian header length, a JSON header (``kind``, ``vocab_size``, and ``chars`` for a
character table) and, for BPE, the SentencePiece model proto. Id 0 is the blank; real tokens are
1..vocab_size-1 (SentencePiece's own ids shifted by one). The runtime only decodes, so this is the
decoding half; a parity test holds it to the training tokenizer.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from subbit.export.manifest import SubbitFormatError

MAGIC = b"SBTOK1\n"
#: limits of the tokenizer blob embedded in a .subbit file (docs/format.md, "Runtime limits")
TOKENIZER_MAX_HEADER = 1 << 20
TOKENIZER_MAX_VOCAB = 1 << 20
TOKENIZER_MAX_DEPTH = 4


def _tok_error(msg: str) -> SubbitFormatError:
    return SubbitFormatError(f"tokenizer blob: {msg}")


def _depth(obj: Any) -> int:
    """Nesting depth of parsed JSON, iteratively (deep input must not recurse)."""
    best, stack = 0, [(obj, 1)]
    while stack:
        node, d = stack.pop()
        best = max(best, d)
        if isinstance(node, dict):
            stack += [(v, d + 1) for v in node.values()]
        elif isinstance(node, list):
            stack += [(v, d + 1) for v in node]
    return best


def _header_end(raw: bytes) -> int:
    return len(MAGIC) + 4 + int.from_bytes(raw[len(MAGIC) : len(MAGIC) + 4], "little")


def check_tokenizer_blob(raw: bytes) -> dict[str, Any]:
    """Validate a tokenizer blob's header (magic, length, JSON object of bounded depth, kind,
    vocab_size, chars) before the tokenizer is built; returns the header."""
    if not raw.startswith(MAGIC) or len(raw) < len(MAGIC) + 4:
        raise _tok_error("bad magic (not a subbit tokenizer)")
    pos = len(MAGIC)
    n = int.from_bytes(raw[pos : pos + 4], "little")
    if n > TOKENIZER_MAX_HEADER or pos + 4 + n > len(raw):
        raise _tok_error(f"header length {n} exceeds the blob ({len(raw)} bytes) or {TOKENIZER_MAX_HEADER}")
    text = raw[pos + 4 : pos + 4 + n]
    if text.count(b"[") + text.count(b"{") > 4 * TOKENIZER_MAX_VOCAB:
        raise _tok_error("header too deeply nested")
    try:
        header = json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _tok_error(f"header is not valid JSON: {str(exc)[:80]}") from None
    if not isinstance(header, dict):
        raise _tok_error(f"header must be a JSON object, got {type(header).__name__}")
    if _depth(header) > TOKENIZER_MAX_DEPTH:
        raise _tok_error(f"header nested deeper than {TOKENIZER_MAX_DEPTH}")
    kind = header.get("kind")
    if kind not in ("char", "bpe"):
        raise _tok_error(f"kind: expected 'char' or 'bpe', got {kind!r:.40}")
    vocab = header.get("vocab_size")
    if isinstance(vocab, bool) or not isinstance(vocab, int) or not 2 <= vocab <= TOKENIZER_MAX_VOCAB:
        raise _tok_error(f"vocab_size: expected an integer in [2, {TOKENIZER_MAX_VOCAB}], got {vocab!r:.40}")
    if kind == "char":
        chars = header.get("chars")
        if not isinstance(chars, list) or not chars or not all(isinstance(c, str) and c for c in chars):
            raise _tok_error("chars: expected a non-empty list of non-empty strings")
        if len(chars) + 1 != vocab:
            raise _tok_error(f"vocab_size: {vocab} but chars holds {len(chars)} symbols (+ blank)")
        if pos + 4 + n != len(raw):
            raise _tok_error(f"{len(raw) - pos - 4 - n} stray bytes after a char table")
    elif pos + 4 + n == len(raw):
        raise _tok_error("bpe: no SentencePiece model after the header")
    return header


class BlobTokenizer:
    """Ids -> text from a checked blob (a character table, or SentencePiece for BPE)."""

    blank_id = 0

    def __init__(self, raw: bytes) -> None:
        header = check_tokenizer_blob(raw)
        self.kind: str = header["kind"]
        self._chars: list[str] = list(header.get("chars") or [])
        self._sp: Any = None
        if self.kind == "bpe":
            # local: sentencepiece is needed only for BPE models
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_proto=raw[_header_end(raw) :])
            except Exception as exc:  # sentencepiece raises RuntimeError (or worse) on a garbage proto
                raise _tok_error(f"cannot be loaded: {type(exc).__name__}: {str(exc)[:120]}") from None
        self.vocab_size = self._sp.get_piece_size() + 1 if self._sp is not None else len(self._chars) + 1
        if self.vocab_size != header["vocab_size"]:
            raise _tok_error(f"vocab_size: header says {header['vocab_size']}, the model has {self.vocab_size}")

    def decode(self, ids: list[int]) -> str:
        """Text for ids; blank (0) and out-of-range ids are ignored."""
        ids = [int(i) for i in ids if 0 < int(i) < self.vocab_size]
        if self._sp is not None:
            return str(self._sp.decode([i - 1 for i in ids]))
        return "".join(self._chars[i - 1] for i in ids)

    def id_to_piece(self, i: int) -> str:
        """Readable symbol for an id ("<blank>" for 0)."""
        if i == 0:
            return "<blank>"
        if self._sp is not None:
            return str(self._sp.id_to_piece(i - 1))
        return self._chars[i - 1]

    def __repr__(self) -> str:
        return f"BlobTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def load_tokenizer(data: bytes | np.ndarray) -> BlobTokenizer:
    """The tokenizer of a ``.subbit`` file's blob (bytes or a uint8 array); SubbitFormatError if bad."""
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    return BlobTokenizer(raw)

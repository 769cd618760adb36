"""Packed RNN-T and Conformer transducers rebuilt from a ``.subbit`` file's arch config.

Mirrors :mod:`subbit.asr.models` (docs/models.md) layer for layer, with the same parameter
names, so a model exported from training runs here without any training code. Streaming
states are plain dicts of NumPy arrays; one utterance at a time (no batch dimension).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from subbit.runtime.layers import (
    Array,
    ConformerBlock,
    Embedding,
    PackedLSTM,
    WeightStore,
)

State = dict[str, Any]


#: ranges of the arch fields the runtime allocates or indexes with (docs/format.md, "Runtime
#: limits"); a real model is far inside them, a file outside them is refused before any allocation
ARCH_LIMITS: dict[str, tuple[int, int]] = {
    "n_mels": (1, 512), "stack": (1, 64), "stack2": (1, 64), "stack2_after": (0, 63), "enc_layers": (1, 64),
    "pred_layers": (1, 64), "n_blocks": (1, 64), "d_model": (1, 8192), "n_heads": (1, 256),
    "chunk_size": (1, 4096), "left_chunks": (0, 4096), "conv_kernel": (1, 1024), "vocab_size": (2, 1 << 20),
    "blank": (0, (1 << 20) - 1), "chunk_frames": (0, 1 << 16),
}  # fmt: skip


def _bad(msg: str) -> ValueError:
    try:
        from subbit.export.manifest import SubbitFormatError
    except ImportError:  # pragma: no cover - subbit.export is part of the package
        return ValueError(msg)
    return SubbitFormatError(msg)


def _cfg_int(cfg: dict[str, Any], key: str, default: int | None = None) -> int:
    """``cfg[key]`` as an int inside :data:`ARCH_LIMITS` (``default`` when absent or null)."""
    v = cfg.get(key)
    if v is None:
        if default is None:
            raise _bad(f"manifest arch: no field {key!r}")
        return default
    if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
        raise _bad(f"manifest arch.{key}: must be an integer, got {v!r:.40}")
    lo, hi = ARCH_LIMITS.get(key, (-(1 << 31), 1 << 31))
    if not lo <= int(v) <= hi:
        raise _bad(f"manifest arch.{key}: {int(v)} outside [{lo}, {hi}]")
    return int(v)


def _dims(where: str, got: int, want: int) -> None:
    if got != want:
        raise _bad(f"manifest arch / tensors disagree: {where} is {got}, the config implies {want}")


def _stack(x: Array, k: int) -> Array:
    """``[T, F] -> [T // k, k * F]`` (earliest frame first), like the torch model's stack_frames."""
    n = x.shape[0] // k
    return np.ascontiguousarray(x[: n * k].reshape(n, k * x.shape[1]))


class LSTMEncoder:
    """stack -> LSTM layers (second stacking before layer ``stack2_after``) -> Linear projection."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "encoder") -> None:
        self.n_mels = _cfg_int(cfg, "n_mels")
        self.stack = _cfg_int(cfg, "stack")
        self.stack2 = _cfg_int(cfg, "stack2", 1)
        n_layers = _cfg_int(cfg, "enc_layers")
        self.stack2_after = _cfg_int(cfg, "stack2_after", 0) if self.stack2 > 1 else -1
        if self.stack2_after >= n_layers:
            raise _bad(f"manifest arch.stack2_after: {self.stack2_after} outside [0, enc_layers - 1 = {n_layers - 1}]")
        self.lstms = [PackedLSTM.from_store(store, f"{prefix}.lstms.{i}") for i in range(n_layers)]
        self.proj = store.linear(f"{prefix}.proj")
        width = self.n_mels * self.stack
        for i, lstm in enumerate(self.lstms):
            if i == self.stack2_after:
                width *= self.stack2
            _dims(f"{prefix}.lstms.{i} input size", lstm.layers[0].ih.in_features, width)
            width = lstm.layers[-1].output_size
        _dims(f"{prefix}.proj input size", self.proj.in_features, width)
        self.output_dim = self.proj.out_features
        self.subsampling = self.stack * self.stack2
        self.chunk_frames = _cfg_int(cfg, "chunk_frames", 0) or self.subsampling

    def init_state(self) -> State:
        return {
            "pending": np.zeros((0, self.n_mels), np.float32),
            "pending2": np.zeros((0, self.lstms[0].hidden), np.float32),
            "lstm": [lstm.init_state() for lstm in self.lstms],
        }

    def step(self, feats: Array, state: State) -> tuple[Array, State]:
        """Consume any number of frames ``[t, n_mels]``; return the encoder frames they complete."""
        x = np.concatenate([state["pending"], feats], axis=0)
        n = x.shape[0] // self.stack * self.stack
        new: State = {"pending": x[n:], "pending2": state["pending2"], "lstm": list(state["lstm"])}
        x = _stack(x[:n], self.stack)
        for i, lstm in enumerate(self.lstms):
            if i == self.stack2_after:
                x = np.concatenate([new["pending2"], x], axis=0)
                n2 = x.shape[0] // self.stack2 * self.stack2
                new["pending2"] = x[n2:]
                x = _stack(x[:n2], self.stack2)
            if x.shape[0] == 0:
                return np.zeros((0, self.output_dim), np.float32), new
            x, new["lstm"][i] = lstm(x, state["lstm"][i])
        return self.proj(x), new

    def flush(self, state: State) -> tuple[Array, State]:
        """End of stream: frames short of one stack are dropped, as in the offline forward."""
        return np.zeros((0, self.output_dim), np.float32), state

    @property
    def nbytes(self) -> int:
        return sum(lstm.nbytes for lstm in self.lstms) + self.proj.nbytes


class ConformerEncoder:
    """stack -> Linear -> Conformer blocks with chunked attention caches and causal conv caches."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "encoder") -> None:
        self.n_mels = _cfg_int(cfg, "n_mels")
        self.stack = _cfg_int(cfg, "stack")
        self.d = _cfg_int(cfg, "d_model")
        self.heads = _cfg_int(cfg, "n_heads")
        self.dh = self.d // self.heads
        self.chunk_size = _cfg_int(cfg, "chunk_size")
        self.left_chunks = _cfg_int(cfg, "left_chunks")
        self.kernel = _cfg_int(cfg, "conv_kernel")
        n_blocks = _cfg_int(cfg, "n_blocks")
        if self.d % self.heads:
            raise _bad(f"manifest arch.n_heads: d_model={self.d} is not divisible by n_heads={self.heads}")
        rel_pos = bool(cfg.get("rel_pos", True))
        self.inp = store.linear(f"{prefix}.inp")
        _dims(f"{prefix}.inp input size", self.inp.in_features, self.n_mels * self.stack)
        _dims(f"{prefix}.inp output size", self.inp.out_features, self.d)
        self.blocks = [
            ConformerBlock(store, f"{prefix}.blocks.{i}", self.d, self.heads, self.kernel, self.chunk_size,
                           self.left_chunks, rel_pos)
            for i in range(n_blocks)
        ]
        self.output_dim = self.d
        self.subsampling = self.stack
        self.chunk_frames = self.chunk_size * self.stack

    def init_state(self) -> State:
        empty = np.zeros((self.heads, 0, self.dh), np.float32)
        return {
            "pending": np.zeros((0, self.n_mels), np.float32),
            "pos": 0,
            "layers": [{"k": empty, "v": empty, "conv": np.zeros((self.kernel - 1, self.d), np.float32)}
                       for _ in self.blocks],
        }

    def _advance(self, frames: Array, state: State) -> tuple[Array, State]:
        x = self.inp(_stack(frames, self.stack))
        pos = state["pos"]
        keep = self.left_chunks * self.chunk_size
        caches = []
        for blk, cache in zip(self.blocks, state["layers"]):
            x, k, v, conv = blk(x, cache, pos)
            caches.append({"k": k[:, k.shape[1] - min(keep, k.shape[1]):],
                           "v": v[:, v.shape[1] - min(keep, v.shape[1]):], "conv": conv})
        return x, {"pending": state["pending"], "pos": pos + x.shape[0], "layers": caches}

    def step(self, feats: Array, state: State) -> tuple[Array, State]:
        """Consume frames; return the encoder frames of every chunk now complete."""
        x = np.concatenate([state["pending"], feats], axis=0)
        n = x.shape[0] // self.chunk_frames * self.chunk_frames
        if n == 0:
            return np.zeros((0, self.d), np.float32), {**state, "pending": x}
        y, new = self._advance(x[:n], state)
        new["pending"] = x[n:]
        return y, new

    def flush(self, state: State) -> tuple[Array, State]:
        """End of stream: run the last partial chunk (frames short of one stack are dropped)."""
        x = state["pending"]
        n = x.shape[0] // self.stack * self.stack
        if n == 0:
            return np.zeros((0, self.d), np.float32), state
        y, new = self._advance(x[:n], state)
        new["pending"] = x[:0]
        return y, new


class Predictor:
    """Embedding (blank = start) -> LSTM layers; one token per step."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "predictor") -> None:
        self.blank = _cfg_int(cfg, "blank", 0)
        self.embed = Embedding(store, f"{prefix}.embed.weight")
        n_layers = _cfg_int(cfg, "pred_layers")
        self.lstms = [PackedLSTM.from_store(store, f"{prefix}.lstms.{i}") for i in range(n_layers)]
        width = self.embed.dim
        for i, lstm in enumerate(self.lstms):
            _dims(f"{prefix}.lstms.{i} input size", lstm.layers[0].ih.in_features, width)
            width = lstm.layers[-1].output_size
        if not 0 <= self.blank < self.embed.num:
            raise _bad(f"manifest arch.blank: {self.blank} outside the embedding table of {self.embed.num} rows")
        self.output_dim = self.lstms[-1].hidden

    def init_state(self) -> State:
        return {"lstm": [lstm.init_state() for lstm in self.lstms]}

    def step(self, token: int, state: State) -> tuple[Array, State]:
        x = self.embed(int(token)).reshape(1, -1)
        new = []
        for lstm, s in zip(self.lstms, state["lstm"]):
            x, s2 = lstm(x, s)
            new.append(s2)
        return x[0], {"lstm": new}


class Joiner:
    """``out(tanh(enc_proj(enc) + pred_proj(pred)))``; projections are applied once per frame/token."""

    def __init__(self, store: WeightStore, prefix: str = "joiner") -> None:
        self.enc_proj = store.linear(f"{prefix}.enc_proj")
        self.pred_proj = store.linear(f"{prefix}.pred_proj")
        self.out = store.linear(f"{prefix}.out")

    def project_enc(self, enc: Array) -> Array:
        return self.enc_proj(enc)

    def project_pred(self, pred: Array) -> Array:
        return self.pred_proj(pred.reshape(1, -1))[0]

    def join(self, enc_p: Array, pred_p: Array) -> Array:
        """Logits ``[..., V]`` from projected inputs ``[..., J]`` (broadcasting leading dims)."""
        h = np.tanh(enc_p + pred_p).astype(np.float32)
        shape = h.shape
        return self.out(h.reshape(-1, shape[-1])).reshape(*shape[:-1], -1)


class PackedTransducer:
    """Encoder + predictor + joiner running on packed weights; ``from_file`` loads a ``.subbit``."""

    def __init__(self, store: WeightStore, config: dict[str, Any], tokenizer_bytes: bytes | None = None,
                 manifest: dict[str, Any] | None = None) -> None:
        arch = config.get("arch")
        if arch == "rnnt":
            self.encoder: LSTMEncoder | ConformerEncoder = LSTMEncoder(store, config)
        elif arch == "conformer":
            self.encoder = ConformerEncoder(store, config)
        else:
            raise _bad(f"manifest arch: field 'arch' must be 'rnnt' or 'conformer', got {arch!r:.40}")
        self.predictor = Predictor(store, config)
        self.joiner = Joiner(store)
        self.config = dict(config)
        self.store = store
        self.tokenizer_bytes = tokenizer_bytes
        self.manifest = manifest or {}
        self.blank = _cfg_int(config, "blank", 0)
        self.vocab_size = _cfg_int(config, "vocab_size")
        self.n_mels = _cfg_int(config, "n_mels")
        j = self.joiner
        _dims("joiner.enc_proj input size", j.enc_proj.in_features, self.encoder.output_dim)
        _dims("joiner.pred_proj input size", j.pred_proj.in_features, self.predictor.lstms[-1].layers[-1].output_size)
        _dims("joiner.pred_proj output size", j.pred_proj.out_features, j.enc_proj.out_features)
        _dims("joiner.out input size", j.out.in_features, j.enc_proj.out_features)
        _dims("joiner.out output size (vocab_size)", j.out.out_features, self.vocab_size)
        if self.blank >= self.vocab_size:
            raise _bad(f"manifest arch.blank: {self.blank} outside [0, vocab_size - 1 = {self.vocab_size - 1}]")
        unused = store.unused()
        if unused:
            raise ValueError(f"model file has tensors the {arch} runtime does not use: {unused[:8]}")

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], threads: int = 1) -> "PackedTransducer":
        """Load a ``.subbit`` file (validated by :func:`subbit.export.load_packed`).

        ``threads``: large packed layers split their rows over this many threads."""
        try:
            from subbit.export import load_packed
        except ImportError:  # the package __init__ may not re-export it
            from subbit.export.container import load_packed

        return cls.from_packed(load_packed(path), threads)

    @classmethod
    def from_packed(cls, pm: Any, threads: int = 1) -> "PackedTransducer":
        packed, floats, manifest, arch, tok = _unpack_model(pm)
        return cls(WeightStore(packed, floats, threads), arch, tok, manifest)

    @property
    def weight_bytes(self) -> int:
        """Resident bytes of every weight the runtime holds (packed indices, codebooks, floats)."""
        return weight_bytes(self.store)


def weight_bytes(store: WeightStore) -> int:
    from subbit.runtime.layers import packed_nbytes

    total = sum(packed_nbytes(p) for p in store.packed.values()) + store.decoded_bytes
    return total + sum(int(a.nbytes) for a in store.floats.values())


def _unpack_model(pm: Any) -> tuple[dict[str, Any], dict[str, Array], dict[str, Any], dict[str, Any], bytes | None]:
    """(packed tensors, float tensors, manifest, arch config, tokenizer bytes) of a PackedModel."""
    try:
        packed, floats, manifest, tok = pm.packed, pm.floats, pm.manifest, pm.tokenizer_bytes
    except AttributeError:
        raise ValueError(f"expected a subbit.export PackedModel, got {type(pm).__name__}") from None
    arch = manifest.get("arch") if isinstance(manifest, dict) else None
    if not isinstance(arch, dict):
        raise ValueError("the .subbit manifest has no 'arch' config dict: export with arch=model.config")
    return dict(packed), {k: np.asarray(v) for k, v in dict(floats).items()}, manifest, arch, tok

"""Packed RNN-T, Conformer and Bifocal RNN-T transducers rebuilt from a ``.subbit`` file's arch config.

Mirrors :mod:`subbit.asr.models` (docs/models.md) layer for layer, with the same parameter
names, so a model exported from training runs here without any training code. Streaming
states are plain dicts of NumPy arrays; one utterance at a time (no batch dimension).
"""

from __future__ import annotations

import math
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
    "blank": (0, (1 << 20) - 1), "chunk_frames": (0, 1 << 16), "small_hidden": (1, 1 << 16),
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


def wake_frames(wake_end: float, sample_rate: int = 16000, n_fft: int = 400, hop: int = 160) -> int:
    """Feature frames whose whole window ``[t*hop, t*hop + n_fft)`` ends by ``wake_end`` seconds:
    the frames a keyword spotter's wake word covers (the bifocal encoder runs them small)."""
    if not isinstance(wake_end, (int, float)) or isinstance(wake_end, bool) or not math.isfinite(wake_end):
        raise ValueError(f"wake_end must be a finite number of seconds, got {wake_end!r:.40}")
    end = int(round(float(wake_end) * sample_rate))
    return 0 if end < n_fft else (end - n_fft) // hop + 1


def _stack_mask(m: Array, k: int) -> Array:
    """``[T] -> [T // k]``: a stacked frame is small only if every frame it joins is."""
    n = m.shape[0] // k
    return m[: n * k].reshape(n, k).all(axis=1)


class BifocalLayer:
    """Large and small LSTM pathways with bias-free state projections (docs/models.md, section 3b)."""

    def __init__(self, store: WeightStore, prefix: str) -> None:
        self.large = PackedLSTM.from_store(store, f"{prefix}.large").layers
        self.small = PackedLSTM.from_store(store, f"{prefix}.small").layers
        if len(self.large) != 1 or len(self.small) != 1:
            raise _bad(f"{prefix}: a bifocal pathway is a one-layer LSTM")
        self.large, self.small = self.large[0], self.small[0]
        self.down_h, self.down_c, self.up_h, self.up_c = (
            store.linear(f"{prefix}.{n}", bias=False) for n in ("down_h", "down_c", "up_h", "up_c"))
        h, s = self.large.hidden, self.small.hidden
        _dims(f"{prefix}.small input size", self.small.ih.in_features, self.large.ih.in_features)
        for lin, name, (i, o) in ((self.down_h, "down_h", (h, s)), (self.down_c, "down_c", (h, s)),
                                  (self.up_h, "up_h", (s, h)), (self.up_c, "up_c", (s, h))):
            _dims(f"{prefix}.{name} input size", lin.in_features, i)
            _dims(f"{prefix}.{name} output size", lin.out_features, o)
        self.hidden, self.small_hidden, self.in_features = h, s, self.large.ih.in_features

    def init_state(self) -> State:
        z, zs = np.zeros(self.hidden, np.float32), np.zeros(self.small_hidden, np.float32)
        return {"h": z, "c": z, "hs": zs, "cs": zs, "small": False}

    def __call__(self, x: Array, small: Array, state: State) -> tuple[Array, State]:
        """``x [T, I]``, ``small [T]`` bool -> ``(y [T, hidden], state)``; pieces of one pathway at a time."""
        st = dict(state)
        ys = []
        cuts = [0, *(np.flatnonzero(small[1:] != small[:-1]) + 1).tolist(), x.shape[0]]
        for a, e in zip(cuts[:-1], cuts[1:]):
            if small[a]:
                if not st["small"]:  # large -> small
                    st["hs"], st["cs"] = self.down_h(st["h"][None])[0], self.down_c(st["c"][None])[0]
                y, st["hs"], st["cs"] = self.small(x[a:e], st["hs"], st["cs"])
                ys.append(self.up_h(y))
            else:
                if st["small"]:  # small -> large
                    st["h"], st["c"] = self.up_h(st["hs"][None])[0], self.up_c(st["cs"][None])[0]
                y, st["h"], st["c"] = self.large(x[a:e], st["h"], st["c"])
                ys.append(y)
            st["small"] = bool(small[a])
        return np.concatenate(ys) if ys else np.zeros((0, self.hidden), np.float32), st

    @property
    def nbytes(self) -> int:
        return self.large.nbytes + self.small.nbytes + sum(
            lin.nbytes for lin in (self.down_h, self.down_c, self.up_h, self.up_c))


class BifocalEncoder:
    """stack -> bifocal layers (second stacking before ``stack2_after``) -> Linear projection.

    The pathway of each feature frame comes from ``step``'s ``pathway_mask`` or, without one,
    from the state's ``small_until`` (frames before it run small; 0 = all large)."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "encoder") -> None:
        self.n_mels = _cfg_int(cfg, "n_mels")
        self.stack = _cfg_int(cfg, "stack")
        self.stack2 = _cfg_int(cfg, "stack2", 1)
        n_layers = _cfg_int(cfg, "enc_layers")
        self.stack2_after = _cfg_int(cfg, "stack2_after", 0) if self.stack2 > 1 else -1
        if self.stack2_after >= n_layers:
            raise _bad(f"manifest arch.stack2_after: {self.stack2_after} outside [0, enc_layers - 1 = {n_layers - 1}]")
        self.layers = [BifocalLayer(store, f"{prefix}.layers.{i}") for i in range(n_layers)]
        self.proj = store.linear(f"{prefix}.proj")
        width = self.n_mels * self.stack
        for i, layer in enumerate(self.layers):
            if i == self.stack2_after:
                width *= self.stack2
            _dims(f"{prefix}.layers.{i} input size", layer.in_features, width)
            width = layer.hidden
        _dims(f"{prefix}.proj input size", self.proj.in_features, width)
        _dims("manifest arch.small_hidden", self.layers[0].small_hidden, _cfg_int(cfg, "small_hidden"))
        self.output_dim = self.proj.out_features
        self.subsampling = self.stack * self.stack2
        self.chunk_frames = _cfg_int(cfg, "chunk_frames", 0) or self.subsampling

    def init_state(self, small_frames: int = 0) -> State:
        """``small_frames``: stream frames from the start that run small (see :func:`wake_frames`)."""
        return {
            "pending": np.zeros((0, self.n_mels), np.float32), "pending_mask": np.zeros(0, bool),
            "pending2": np.zeros((0, self.layers[0].hidden), np.float32), "pending2_mask": np.zeros(0, bool),
            "pos": 0, "small_until": int(small_frames),
            "layers": [layer.init_state() for layer in self.layers],
        }

    def step(self, feats: Array, state: State, pathway_mask: Array | None = None) -> tuple[Array, State]:
        """Consume frames ``[t, n_mels]`` (and their pathway, True = small); return completed encoder frames."""
        t = feats.shape[0]
        if pathway_mask is None:
            pathway_mask = state["pos"] + np.arange(t) < state["small_until"]
        pathway_mask = np.asarray(pathway_mask, bool)
        if pathway_mask.shape != (t,):
            raise ValueError(f"pathway_mask must have one entry per frame ({t}), got shape {pathway_mask.shape}")
        x = np.concatenate([state["pending"], feats], axis=0)
        m = np.concatenate([state["pending_mask"], pathway_mask])
        n = x.shape[0] // self.stack * self.stack
        new: State = {**state, "pending": x[n:], "pending_mask": m[n:], "pos": state["pos"] + t,
                      "layers": list(state["layers"])}
        x, m = _stack(x[:n], self.stack), _stack_mask(m[:n], self.stack)
        for i, layer in enumerate(self.layers):
            if i == self.stack2_after:
                x = np.concatenate([new["pending2"], x], axis=0)
                m = np.concatenate([new["pending2_mask"], m])
                n2 = x.shape[0] // self.stack2 * self.stack2
                new["pending2"], new["pending2_mask"] = x[n2:], m[n2:]
                x, m = _stack(x[:n2], self.stack2), _stack_mask(m[:n2], self.stack2)
            if x.shape[0] == 0:
                return np.zeros((0, self.output_dim), np.float32), new
            x, new["layers"][i] = layer(x, m, state["layers"][i])
        return self.proj(x), new

    def flush(self, state: State) -> tuple[Array, State]:
        """End of stream: frames short of one stack are dropped, as in the offline forward."""
        return np.zeros((0, self.output_dim), np.float32), state

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers) + self.proj.nbytes


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
            self.encoder: LSTMEncoder | ConformerEncoder | BifocalEncoder = LSTMEncoder(store, config)
        elif arch == "conformer":
            self.encoder = ConformerEncoder(store, config)
        elif arch == "bifocal":
            self.encoder = BifocalEncoder(store, config)
        else:
            raise _bad(f"manifest arch: field 'arch' must be 'rnnt', 'conformer' or 'bifocal', got {arch!r:.40}")
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
        from subbit.export.manifest import SubbitFormatError

        packed, floats, manifest, arch, tok = _unpack_model(pm)
        store = WeightStore(packed, floats, threads)
        try:
            return cls(store, arch, tok, manifest)
        except SubbitFormatError:
            raise
        except ValueError as exc:  # a layer's own shape check: the file's arch and tensors disagree
            raise _bad(f"manifest arch / tensors disagree: {exc}") from None

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

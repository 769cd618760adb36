"""The streaming encoders of the packed runtime: LSTM (RNN-T) and chunked Conformer.

Each mirrors its torch encoder in :mod:`subbit.asr.models` layer for layer, with the same
parameter names; states are plain dicts of NumPy arrays, one utterance at a time.
:class:`StackedEncoder` holds what the LSTM and Bifocal (:mod:`subbit.runtime.bifocal`) encoders
share: the frame stacking, the width checks, the projection, ``flush`` and ``nbytes``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from subbit.runtime.arch import bad_arch, cfg_int, check_dims, stack_frames, take_stacks
from subbit.runtime.layers import Array, ConformerBlock, PackedLSTM, WeightStore

State = dict[str, Any]


class StackedEncoder:
    """stack ``stack`` frames -> recurrent layers (``stack2`` more stacked before layer
    ``stack2_after``) -> Linear projection; the layers are ``make_layer(store, prefix.part.i)``,
    each with ``in_features``, ``output_size`` and ``nbytes``."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str, part: str,
                 make_layer: Callable[[WeightStore, str], Any]) -> None:  # fmt: skip
        self.n_mels = cfg_int(cfg, "n_mels")
        self.stack = cfg_int(cfg, "stack")
        self.stack2 = cfg_int(cfg, "stack2", 1)
        n_layers = cfg_int(cfg, "enc_layers")
        self.stack2_after = cfg_int(cfg, "stack2_after", 0) if self.stack2 > 1 else -1
        if self.stack2_after >= n_layers:
            raise bad_arch(f"manifest arch.stack2_after: {self.stack2_after} outside [0, enc_layers - 1 = {n_layers - 1}]")
        self.layers = [make_layer(store, f"{prefix}.{part}.{i}") for i in range(n_layers)]
        self.proj = store.linear(f"{prefix}.proj")
        width = self.n_mels * self.stack
        self.pending2_width = width  # frames waiting for the second stacking have the width before it
        for i, layer in enumerate(self.layers):
            if i == self.stack2_after:
                self.pending2_width = width
                width *= self.stack2
            check_dims(f"{prefix}.{part}.{i} input size", layer.in_features, width)
            width = layer.output_size
        check_dims(f"{prefix}.proj input size", self.proj.in_features, width)
        self.output_dim = self.proj.out_features
        self.subsampling = self.stack * self.stack2
        self.chunk_frames = cfg_int(cfg, "chunk_frames", 0) or self.subsampling

    def _pending(self) -> dict[str, Array]:
        return {"pending": np.zeros((0, self.n_mels), np.float32),
                "pending2": np.zeros((0, self.pending2_width), np.float32)}  # fmt: skip

    def _empty(self) -> Array:
        return np.zeros((0, self.output_dim), np.float32)

    def flush(self, state: State) -> tuple[Array, State]:
        """End of stream: frames short of one stack are dropped, as in the offline forward."""
        return self._empty(), state

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers) + self.proj.nbytes


class LSTMEncoder(StackedEncoder):
    """stack -> LSTM layers (second stacking before layer ``stack2_after``) -> Linear projection."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "encoder") -> None:
        super().__init__(store, cfg, prefix, "lstms", PackedLSTM.from_store)

    @property
    def lstms(self) -> list[PackedLSTM]:
        return self.layers

    def init_state(self) -> State:
        return {**self._pending(), "lstm": [lstm.init_state() for lstm in self.layers]}

    def step(self, feats: Array, state: State) -> tuple[Array, State]:
        """Consume any number of frames ``[t, n_mels]``; return the encoder frames they complete."""
        x, rest = take_stacks(state["pending"], feats, self.stack)
        new: State = {"pending": rest, "pending2": state["pending2"], "lstm": list(state["lstm"])}
        for i, lstm in enumerate(self.layers):
            if i == self.stack2_after:
                x, new["pending2"] = take_stacks(new["pending2"], x, self.stack2)
            if x.shape[0] == 0:
                return self._empty(), new
            x, new["lstm"][i] = lstm(x, state["lstm"][i])
        return self.proj(x), new


class ConformerEncoder:
    """stack -> Linear -> Conformer blocks with chunked attention caches and causal conv caches."""

    def __init__(self, store: WeightStore, cfg: dict[str, Any], prefix: str = "encoder") -> None:
        self.n_mels = cfg_int(cfg, "n_mels")
        self.stack = cfg_int(cfg, "stack")
        self.d = cfg_int(cfg, "d_model")
        self.heads = cfg_int(cfg, "n_heads")
        self.dh = self.d // self.heads
        self.chunk_size = cfg_int(cfg, "chunk_size")
        self.left_chunks = cfg_int(cfg, "left_chunks")
        self.kernel = cfg_int(cfg, "conv_kernel")
        n_blocks = cfg_int(cfg, "n_blocks")
        if self.d % self.heads:
            raise bad_arch(f"manifest arch.n_heads: d_model={self.d} is not divisible by n_heads={self.heads}")
        rel_pos = bool(cfg.get("rel_pos", True))
        self.inp = store.linear(f"{prefix}.inp")
        check_dims(f"{prefix}.inp input size", self.inp.in_features, self.n_mels * self.stack)
        check_dims(f"{prefix}.inp output size", self.inp.out_features, self.d)
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
        x = self.inp(stack_frames(frames, self.stack))
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

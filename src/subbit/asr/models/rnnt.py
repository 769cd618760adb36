"""Streaming LSTM encoder of the RNN-T: frame stacking, unidirectional LSTMs, projection.

Everything is causal, so ``step`` over consecutive chunks reproduces ``forward`` exactly; the
only streaming state is the LSTM (h, c) per layer plus frames waiting to be stacked.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .transducer import State, lstm_run, stack_frames


class LSTMEncoder(nn.Module):
    """stack(``stack``) -> LSTM x ``layers`` (optional 2nd stacking before layer ``stack2_after``)
    -> Linear(hidden, out_dim).

    Dropout (training only) follows every LSTM layer.
    """

    def __init__(self, n_mels: int, stack: int, hidden: int, layers: int, out_dim: int,
                 stack2: int = 1, stack2_after: int = 0, dropout: float = 0.0,
                 chunk_frames: int | None = None) -> None:
        super().__init__()
        widths = init_stacking(self, n_mels, stack, layers, hidden, stack2, stack2_after, chunk_frames)
        self.hidden = hidden
        self.output_dim = out_dim
        self.lstms = nn.ModuleList(nn.LSTM(w, hidden, batch_first=True) for w in widths)
        self.proj = nn.Linear(hidden, out_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, feats: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """``feats [B, T, F]``, ``lens [B]`` -> ``(enc [B, T', D], lens')``, ``T' = T // stack // stack2``."""
        _check_feats(feats, self.n_mels)
        x = stack_frames(feats, self.stack)
        lens = torch.div(lens, self.stack, rounding_mode="floor")
        for i, lstm in enumerate(self.lstms):
            if i == self.stack2_after:
                x = stack_frames(x, self.stack2)
                lens = torch.div(lens, self.stack2, rounding_mode="floor")
            if x.size(1) == 0:  # input shorter than one encoder frame
                return x.new_zeros(x.size(0), 0, self.output_dim), lens
            x, _, _ = lstm_run(lstm, x, None, None)
            x = self.dropout(x)
        return self.proj(x), lens

    def init_state(self, batch_size: int) -> State:
        p = self.proj.weight
        z = p.new_zeros(batch_size, self.hidden)
        return {
            "pending": p.new_zeros(batch_size, 0, self.n_mels),
            "pending2": p.new_zeros(batch_size, 0, self.hidden),
            "h": [z.clone() for _ in self.lstms],
            "c": [z.clone() for _ in self.lstms],
        }

    def step(self, feats_chunk: Tensor, state: State) -> tuple[Tensor, State]:
        """Consume any number of new frames; return the encoder frames they complete."""
        _check_feats(feats_chunk, self.n_mels)
        x = torch.cat([state["pending"], feats_chunk], dim=1)
        n = x.size(1) // self.stack * self.stack
        new: State = {"pending": x[:, n:], "pending2": state["pending2"],
                      "h": list(state["h"]), "c": list(state["c"])}
        x = stack_frames(x[:, :n], self.stack)
        for i, lstm in enumerate(self.lstms):
            if i == self.stack2_after:
                x = torch.cat([new["pending2"], x], dim=1)
                n2 = x.size(1) // self.stack2 * self.stack2
                new["pending2"] = x[:, n2:]
                x = stack_frames(x[:, :n2], self.stack2)
            if x.size(1) == 0:
                return x.new_zeros(x.size(0), 0, self.output_dim), new
            x, new["h"][i], new["c"][i] = lstm_run(lstm, x, state["h"][i], state["c"][i])
        return self.proj(x), new

    def flush(self, state: State) -> tuple[Tensor, State]:
        """End of stream: leftover frames (fewer than one stack) are dropped, as in ``forward``."""
        b = state["pending"].size(0)
        return self.proj.weight.new_zeros(b, 0, self.output_dim), state


def init_stacking(enc: nn.Module, n_mels: int, stack: int, layers: int, hidden: int, stack2: int,
                  stack2_after: int, chunk_frames: int | None) -> list[int]:  # fmt: skip
    """Check and set the frame stacking of a recurrent encoder (``n_mels``, ``stack``, ``stack2``,
    ``stack2_after`` = -1 without a second stacking, ``subsampling``, ``chunk_frames``); returns
    the input width of each of its ``layers`` layers of ``hidden`` units."""
    if stack < 1 or stack2 < 1:
        raise ValueError(f"stack and stack2 must be >= 1, got stack={stack}, stack2={stack2}")
    if layers < 1:
        raise ValueError(f"enc_layers must be >= 1, got {layers}")
    if stack2 > 1 and not 1 <= stack2_after < layers:
        raise ValueError(f"stack2_after must be in 1..enc_layers-1={layers - 1}, got {stack2_after}")
    enc.n_mels, enc.stack, enc.stack2 = n_mels, stack, stack2
    enc.stack2_after = stack2_after if stack2 > 1 else -1
    enc.subsampling = stack * stack2
    enc.chunk_frames = chunk_frames or enc.subsampling
    if enc.chunk_frames % enc.subsampling:
        raise ValueError(f"chunk_frames={enc.chunk_frames} must be a multiple of the subsampling {enc.subsampling}")
    widths, width = [], n_mels * stack
    for i in range(layers):
        if i == enc.stack2_after:
            width *= stack2
        widths.append(width)
        width = hidden
    return widths


def _check_feats(feats: Tensor, n_mels: int) -> None:
    if feats.dim() != 3 or feats.size(-1) != n_mels:
        raise ValueError(f"feats must be [B, T, {n_mels}], got {tuple(feats.shape)}")

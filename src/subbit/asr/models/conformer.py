"""Streaming Conformer encoder: frame stacking + Linear, then chunked-causal Conformer blocks.

Attention is full inside a chunk of ``chunk_size`` encoder frames and sees ``left_chunks``
earlier chunks; the depthwise convolution is causal. Positions enter only through a learned
relative-position bias per head (an ``nn.Embedding`` over the finite set of offsets the mask
allows), so nothing depends on absolute time and streaming with caches is exact.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .rnnt import _check_feats
from .transducer import State, stack_frames


def chunk_mask(q_pos: Tensor, k_pos: Tensor, chunk: int, left: int) -> Tensor:
    """``[Tq, Tk]`` bool: key allowed for query when its chunk is the query's or one of ``left`` before."""
    qc = torch.div(q_pos, chunk, rounding_mode="floor")[:, None]
    kc = torch.div(k_pos, chunk, rounding_mode="floor")[None, :]
    return (kc <= qc) & (kc >= qc - left)


class FeedForward(nn.Module):
    """LayerNorm -> Linear(d, m*d) -> SiLU -> dropout -> Linear(m*d, d) -> dropout."""

    def __init__(self, d: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.lin1 = nn.Linear(d, mult * d)
        self.lin2 = nn.Linear(mult * d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.lin2(self.dropout(F.silu(self.lin1(self.norm(x))))))


class ChunkedSelfAttention(nn.Module):
    """Multi-head self-attention from four ``nn.Linear`` (q, k, v, out) with a key/value cache."""

    def __init__(self, d: int, heads: int, chunk: int, left: int, rel_pos: bool, dropout: float) -> None:
        super().__init__()
        if d % heads:
            raise ValueError(f"d_model={d} must be divisible by n_heads={heads}")
        self.heads, self.dh, self.chunk, self.left = heads, d // heads, chunk, left
        self.q = nn.Linear(d, d)
        self.k = nn.Linear(d, d)
        self.v = nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        # offsets i - j allowed by the mask lie in [-(chunk-1), (left+1)*chunk - 1]
        self.num_rel = (left + 2) * chunk - 1
        self.rel_bias = nn.Embedding(self.num_rel, heads) if rel_pos else None
        if self.rel_bias is not None:  # small, not zero: a zero tensor has no quantization scale
            nn.init.normal_(self.rel_bias.weight, std=0.02)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, k_cache: Tensor, v_cache: Tensor, q_pos: Tensor, k_pos: Tensor,
                key_valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """``x [B, Tq, d]``; caches ``[B, H, Tc, dh]``; ``k_pos`` covers cache + new keys.

        Returns (output, all keys, all values) so the caller can trim the cache.
        """
        b, tq, _ = x.shape
        h, dh = self.heads, self.dh
        q = self.q(x).view(b, tq, h, dh).transpose(1, 2)
        k = torch.cat([k_cache, self.k(x).view(b, tq, h, dh).transpose(1, 2)], dim=2)
        v = torch.cat([v_cache, self.v(x).view(b, tq, h, dh).transpose(1, 2)], dim=2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(dh)
        if self.rel_bias is not None:
            rel = (q_pos[:, None] - k_pos[None, :] + self.chunk - 1).clamp(0, self.num_rel - 1)
            scores = scores + self.rel_bias(rel).permute(2, 0, 1).unsqueeze(0)
        allowed = chunk_mask(q_pos, k_pos, self.chunk, self.left)[None]  # [1, Tq, Tk]
        if key_valid is not None:
            allowed = allowed & key_valid[:, None, :]
        scores = scores.masked_fill(~allowed[:, None], torch.finfo(scores.dtype).min)
        attn = self.dropout(torch.softmax(scores, dim=-1))
        o = torch.matmul(attn, v).transpose(1, 2).reshape(b, tq, h * dh)
        return self.out(o), k, v


class CausalConvModule(nn.Module):
    """LN -> Linear(d, 2d) -> GLU -> causal depthwise Conv1d(k) -> LN -> SiLU -> Linear(d, d)."""

    def __init__(self, d: int, kernel: int, dropout: float) -> None:
        super().__init__()
        if kernel < 1:
            raise ValueError(f"conv_kernel must be >= 1, got {kernel}")
        self.kernel = kernel
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, kernel, groups=d)
        self.norm2 = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """``x [B, T, d]``, ``cache [B, d, kernel-1]`` (previous GLU outputs, zeros at start)."""
        y = F.glu(self.pw1(self.norm(x)), dim=-1).transpose(1, 2)
        y = torch.cat([cache, y], dim=2)
        new_cache = y[:, :, y.size(2) - (self.kernel - 1):]
        y = self.dw(y).transpose(1, 2)
        return self.dropout(self.pw2(F.silu(self.norm2(y)))), new_cache


class ConformerBlock(nn.Module):
    """x += FFN/2; x += MHSA(LN x); x += Conv; x += FFN/2; x = LN x."""

    def __init__(self, d: int, heads: int, ff_mult: int, kernel: int, chunk: int, left: int,
                 rel_pos: bool, dropout: float) -> None:
        super().__init__()
        self.ff1 = FeedForward(d, ff_mult, dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = ChunkedSelfAttention(d, heads, chunk, left, rel_pos, dropout)
        self.conv = CausalConvModule(d, kernel, dropout)
        self.ff2 = FeedForward(d, ff_mult, dropout)
        self.out_norm = nn.LayerNorm(d)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, cache: State, q_pos: Tensor, k_pos: Tensor,
                key_valid: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x = x + 0.5 * self.ff1(x)
        a, k, v = self.attn(self.attn_norm(x), cache["k"], cache["v"], q_pos, k_pos, key_valid)
        x = x + self.dropout(a)
        c, conv_cache = self.conv(x, cache["conv"])
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x), k, v, conv_cache


class ConformerEncoder(nn.Module):
    """stack(``stack``) -> Linear(stack*F, d) -> ``n_blocks`` Conformer blocks (output dim d)."""

    def __init__(self, n_mels: int, stack: int, d_model: int, n_heads: int, ff_mult: int,
                 conv_kernel: int, n_blocks: int, chunk_size: int, left_chunks: int,
                 rel_pos: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if stack < 1 or chunk_size < 1 or left_chunks < 0 or n_blocks < 1:
            raise ValueError(
                "need stack >= 1, chunk_size >= 1, left_chunks >= 0, n_blocks >= 1; got "
                f"stack={stack}, chunk_size={chunk_size}, left_chunks={left_chunks}, n_blocks={n_blocks}"
            )
        self.n_mels, self.stack, self.d = n_mels, stack, d_model
        self.heads, self.dh = n_heads, d_model // max(n_heads, 1)
        self.chunk_size, self.left_chunks, self.kernel = chunk_size, left_chunks, conv_kernel
        self.output_dim = d_model
        self.subsampling = stack
        self.chunk_frames = chunk_size * stack
        self.inp = nn.Linear(n_mels * stack, d_model)
        self.blocks = nn.ModuleList(
            ConformerBlock(d_model, n_heads, ff_mult, conv_kernel, chunk_size, left_chunks, rel_pos, dropout)
            for _ in range(n_blocks)
        )
        self.dropout = nn.Dropout(dropout)

    def _empty_cache(self, b: int) -> list[State]:
        p = self.inp.weight
        return [{"k": p.new_zeros(b, self.heads, 0, self.dh), "v": p.new_zeros(b, self.heads, 0, self.dh),
                 "conv": p.new_zeros(b, self.d, self.kernel - 1)} for _ in self.blocks]

    def _run(self, x: Tensor, caches: list[State], pos: int,
             key_valid: Tensor | None) -> tuple[Tensor, list[State]]:
        """Blocks over encoder frames ``[pos, pos + T)``; returns output and the trimmed caches."""
        tq = x.size(1)
        keep = self.left_chunks * self.chunk_size
        q_pos = torch.arange(pos, pos + tq, device=x.device)
        new_caches = []
        for blk, cache in zip(self.blocks, caches):
            tc = cache["k"].size(2)
            k_pos = torch.arange(pos - tc, pos + tq, device=x.device)
            x, k, v, conv = blk(x, cache, q_pos, k_pos, key_valid)
            new_caches.append({"k": k[:, :, k.size(2) - min(keep, k.size(2)):],
                               "v": v[:, :, v.size(2) - min(keep, v.size(2)):], "conv": conv})
        return x, new_caches

    def forward(self, feats: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        """``feats [B, T, F]`` -> ``(enc [B, T // stack, d], lens // stack)``; padding is masked."""
        _check_feats(feats, self.n_mels)
        x = self.dropout(self.inp(stack_frames(feats, self.stack)))
        lens = torch.div(lens, self.stack, rounding_mode="floor")
        if x.size(1) == 0:  # input shorter than one encoder frame
            return x, lens
        valid = torch.arange(x.size(1), device=x.device)[None, :] < lens[:, None]
        x, _ = self._run(x, self._empty_cache(x.size(0)), 0, valid)
        return x, lens

    def init_state(self, batch_size: int) -> State:
        p = self.inp.weight
        return {"pending": p.new_zeros(batch_size, 0, self.n_mels), "pos": 0,
                "layers": self._empty_cache(batch_size)}

    def _advance(self, frames: Tensor, state: State) -> tuple[Tensor, State]:
        x = self.inp(stack_frames(frames, self.stack))
        y, caches = self._run(x, state["layers"], state["pos"], None)
        return y, {"pending": state["pending"], "pos": state["pos"] + x.size(1), "layers": caches}

    def step(self, feats_chunk: Tensor, state: State) -> tuple[Tensor, State]:
        """Consume new frames; return the encoder frames of every chunk now complete."""
        _check_feats(feats_chunk, self.n_mels)
        x = torch.cat([state["pending"], feats_chunk], dim=1)
        n = x.size(1) // self.chunk_frames * self.chunk_frames
        rest = x[:, n:]
        if n == 0:
            return x.new_zeros(x.size(0), 0, self.d), {**state, "pending": rest}
        y, new = self._advance(x[:, :n], state)
        new["pending"] = rest
        return y, new

    def flush(self, state: State) -> tuple[Tensor, State]:
        """End of stream: run the last, partial chunk (frames short of one stack are dropped)."""
        x = state["pending"]
        n = x.size(1) // self.stack * self.stack
        if n == 0:
            return x.new_zeros(x.size(0), 0, self.d), state
        y, new = self._advance(x[:, :n], state)
        new["pending"] = x[:, :0]
        return y, new

"""NumPy layers of the packed runtime: LSTM, LayerNorm, Embedding, Conformer pieces.

Each layer re-implements one torch layer of :mod:`subbit.asr.models` (docs/models.md gives the
exact math) without importing any training code: quantized weights stay bit-packed and go
through :func:`subbit.runtime.kernels.packed_linear` (int8 activations x int8 codebook, int32
accumulation); weights left in float run through a NumPy matmul (both Linear kinds and the
weight store live in :mod:`subbit.runtime.weights` and are re-exported here). All arrays are
float32 and time-major without a batch dimension (the runtime streams one utterance).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subbit.export.bitpack import unpack_rows
from subbit.runtime.weights import (  # noqa: F401 (Linear, the store and the size helpers: re-exported)
    Array,
    FloatLinear,
    Linear,
    PackedLinear,
    WeightStore,
    decode_packed,
    f32,
    kernels_lut,
)


# -- elementwise helpers ---------------------------------------------------------------------
def sigmoid(x: Array) -> Array:
    """Logistic sigmoid through tanh: no overflow warnings for large |x|."""
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32, copy=False)


def silu(x: Array) -> Array:
    return (x * sigmoid(x)).astype(np.float32, copy=False)


def relu(x: Array) -> Array:
    return np.maximum(x, 0.0, dtype=np.float32)


ACTIVATIONS = {"silu": silu, "swish": silu, "relu": relu, "tanh": np.tanh, "sigmoid": sigmoid}


def activation(name: str) -> Any:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


def softmax(x: Array, axis: int = -1) -> Array:
    m = np.max(x, axis=axis, keepdims=True)
    e = np.exp(x - m)
    return e / np.sum(e, axis=axis, keepdims=True)



# -- LSTM ----------------------------------------------------------------------------------------
class LSTMLayer:
    """One unidirectional LSTM layer, torch gate order (i, f, g, o).

    The input projection of a whole chunk is one ``M = T`` matmul; only the recurrent matvec on
    ``W_hh`` runs per frame. Both biases fold into the input projection.
    """

    def __init__(self, ih: Linear, hh: Linear, proj: Linear | None = None) -> None:
        if ih.out_features % 4 or hh.out_features != ih.out_features:
            raise ValueError(f"LSTM weights disagree: W_ih {ih.out_features} rows, W_hh {hh.out_features}")
        self.ih, self.hh, self.proj = ih, hh, proj
        self.hidden = ih.out_features // 4
        self.output_size = proj.out_features if proj is not None else self.hidden

    def __call__(self, x: Array, h: Array, c: Array) -> tuple[Array, Array, Array]:
        """``x [T, I]``, ``h [out]``, ``c [H]`` -> ``(y [T, out], h, c)``."""
        gi = self.ih(x)
        hd = self.hidden
        ys = np.empty((x.shape[0], self.output_size), dtype=np.float32)
        for t in range(x.shape[0]):
            g = gi[t] + self.hh(h.reshape(1, -1))[0]
            i_f = sigmoid(g[: 2 * hd])  # input and forget gates in one pass
            gg = np.tanh(g[2 * hd : 3 * hd])
            o = sigmoid(g[3 * hd :])
            c = i_f[hd:] * c + i_f[:hd] * gg
            h = o * np.tanh(c)
            if self.proj is not None:
                h = self.proj(h.reshape(1, -1))[0]
            ys[t] = h
        return ys, f32(h), f32(c)

    @property
    def nbytes(self) -> int:
        return self.ih.nbytes + self.hh.nbytes + (self.proj.nbytes if self.proj is not None else 0)


class PackedLSTM:
    """A (multi-layer) ``nn.LSTM`` rebuilt from ``prefix.weight_ih_l{k}`` etc."""

    def __init__(self, layers: list[LSTMLayer]) -> None:
        if not layers:
            raise ValueError("PackedLSTM needs at least one layer")
        self.layers = layers

    @classmethod
    def from_store(cls, store: WeightStore, prefix: str) -> "PackedLSTM":
        layers = []
        k = 0
        while store.has(f"{prefix}.weight_ih_l{k}"):
            layers.append(_lstm_layer(store, prefix, k))
            k += 1
        if not layers:
            raise ValueError(f"model file has no LSTM weights under {prefix!r}.weight_ih_l0")
        return cls(layers)

    @property
    def hidden(self) -> int:
        return self.layers[-1].hidden

    @property
    def in_features(self) -> int:
        return self.layers[0].ih.in_features

    @property
    def output_size(self) -> int:
        return self.layers[-1].output_size

    def init_state(self) -> dict[str, list[Array]]:
        return {
            "h": [np.zeros(layer.output_size, np.float32) for layer in self.layers],
            "c": [np.zeros(layer.hidden, np.float32) for layer in self.layers],
        }

    def __call__(self, x: Array, state: dict[str, list[Array]]) -> tuple[Array, dict[str, list[Array]]]:
        hs, cs = [], []
        for i, layer in enumerate(self.layers):
            x, h, c = layer(x, state["h"][i], state["c"][i])
            hs.append(h)
            cs.append(c)
        return x, {"h": hs, "c": cs}

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)


def _lstm_layer(store: WeightStore, prefix: str, k: int) -> LSTMLayer:
    b_ih = store.maybe_float(f"{prefix}.bias_ih_l{k}")
    b_hh = store.maybe_float(f"{prefix}.bias_hh_l{k}")
    bias = None
    if b_ih is not None or b_hh is not None:
        bias = (b_ih if b_ih is not None else 0) + (b_hh if b_hh is not None else 0)
    ih = store.matrix(f"{prefix}.weight_ih_l{k}", bias)
    hh = store.matrix(f"{prefix}.weight_hh_l{k}")
    hr = f"{prefix}.weight_hr_l{k}"
    return LSTMLayer(ih, hh, store.matrix(hr) if store.has(hr) else None)



# -- normalisation and small pieces ----------------------------------------------------------
class LayerNorm:
    def __init__(self, weight: Array | None, bias: Array | None, eps: float = 1e-5) -> None:
        self.weight = None if weight is None else f32(weight)
        self.bias = None if bias is None else f32(bias)
        self.eps = float(eps)

    @classmethod
    def from_store(cls, store: WeightStore, prefix: str, eps: float = 1e-5) -> "LayerNorm":
        return cls(store.maybe_float(f"{prefix}.weight"), store.maybe_float(f"{prefix}.bias"), eps)

    def __call__(self, x: Array) -> Array:
        inv_n = np.float32(1.0 / x.shape[-1])
        d = x - np.add.reduce(x, axis=-1, keepdims=True) * inv_n  # ufunc reductions: no wrapper cost
        var = np.add.reduce(d * d, axis=-1, keepdims=True) * inv_n
        d *= 1.0 / np.sqrt(var + np.float32(self.eps))
        if self.weight is not None:
            d *= self.weight
        if self.bias is not None:
            d += self.bias
        return f32(d)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.weight, self.bias) if a is not None)


class Embedding:
    """Token lookup that decodes one packed row per call (the table stays packed)."""

    def __init__(self, store: WeightStore, name: str) -> None:
        self.name = name
        self.bits = 0
        if name in store.packed:  # the table stays packed: one row decoded per call
            pt = store.take(name, self)
            self.table = None
            shape = tuple(int(s) for s in pt.shape)
            self.bits = int(pt.bits)
            self.lut, self.scales = kernels_lut(pt)
            self.rows = np.asarray(pt.packed).reshape(shape[0], -1)
        else:
            self.table = store.float(name)
            shape = self.table.shape
        if len(shape) != 2:
            raise ValueError(f"embedding {name!r} must be 2-D, got shape {shape}")
        self.num, self.dim = shape

    def __call__(self, token: int) -> Array:
        if not 0 <= token < self.num:
            raise ValueError(f"token id {token} outside the embedding table of {self.num} rows")
        if self.table is not None:
            return self.table[token]
        idx = unpack_rows(self.rows[token : token + 1], self.bits, self.dim)[0].astype(np.int64)
        g = token if self.lut.shape[0] > 1 else 0
        return f32(self.lut[g, idx].astype(np.float32) * self.scales[g])

    @property
    def nbytes(self) -> int:
        if self.table is not None:
            return self.table.nbytes
        return int(self.rows.nbytes + self.lut.nbytes + self.scales.nbytes)


# -- Conformer pieces ------------------------------------------------------------------------
class FeedForward:
    """LayerNorm -> Linear(d, m*d) -> SiLU -> Linear(m*d, d) (dropout is identity at inference)."""

    def __init__(self, store: WeightStore, prefix: str) -> None:
        self.norm = LayerNorm.from_store(store, f"{prefix}.norm")
        self.lin1 = store.linear(f"{prefix}.lin1")
        self.lin2 = store.linear(f"{prefix}.lin2")

    def __call__(self, x: Array) -> Array:
        return self.lin2(silu(self.lin1(self.norm(x))))


def chunk_mask(q_pos: Array, k_pos: Array, chunk: int, left: int) -> Array:
    """``[Tq, Tk]`` bool: a key is visible when its chunk is the query's or one of ``left`` before."""
    qc = (q_pos // chunk)[:, None]
    kc = (k_pos // chunk)[None, :]
    return (kc <= qc) & (kc >= qc - left)


class ChunkedSelfAttention:
    """Multi-head attention over the chunk plus a cache of the last ``left`` chunks' keys/values.

    Cache layout per block: ``k``, ``v`` as ``[H, Tc, dh]``; the learned relative-position bias
    (``rel_bias`` embedding ``[num_rel, H]``) is indexed by ``q_pos - k_pos + chunk - 1``.
    """

    def __init__(self, store: WeightStore, prefix: str, d: int, heads: int, chunk: int, left: int,
                 rel_pos: bool) -> None:
        if d % heads:
            raise ValueError(f"d_model={d} must be divisible by n_heads={heads}")
        self.heads, self.dh, self.chunk, self.left = heads, d // heads, chunk, left
        self.q = store.linear(f"{prefix}.q")
        self.k = store.linear(f"{prefix}.k")
        self.v = store.linear(f"{prefix}.v")
        self.out = store.linear(f"{prefix}.out")
        self.num_rel = (left + 2) * chunk - 1
        self.rel_bias = store.dense(f"{prefix}.rel_bias.weight") if rel_pos else None
        if self.rel_bias is not None and self.rel_bias.shape != (self.num_rel, heads):
            raise ValueError(
                f"{prefix}.rel_bias.weight has shape {self.rel_bias.shape}, expected {(self.num_rel, heads)}"
            )
        self.scale = np.float32(1.0 / np.sqrt(self.dh))
        self._cache: dict[tuple[int, int, int], tuple[Array | None, Array]] = {}

    def __call__(self, x: Array, k_cache: Array, v_cache: Array, pos: int) -> tuple[Array, Array, Array]:
        """``x [Tq, d]`` for frames ``[pos, pos+Tq)``; returns (out, all keys, all values)."""
        tq = x.shape[0]
        h, dh = self.heads, self.dh
        q = self.q(x).reshape(tq, h, dh).transpose(1, 0, 2)
        k = np.concatenate([k_cache, self.k(x).reshape(tq, h, dh).transpose(1, 0, 2)], axis=1)
        v = np.concatenate([v_cache, self.v(x).reshape(tq, h, dh).transpose(1, 0, 2)], axis=1)
        tc = k_cache.shape[1]
        scores = np.matmul(q, k.transpose(0, 2, 1)) * self.scale  # [H, Tq, Tk]
        bias, allowed = self._bias_and_mask(pos, tq, tc)
        if bias is not None:
            scores += bias
        scores = np.where(allowed[None], scores, np.finfo(np.float32).min)
        attn = softmax(scores.astype(np.float32), axis=-1)
        o = np.matmul(attn, v).transpose(1, 0, 2).reshape(tq, h * dh)
        return self.out(f32(o)), k, v

    def _bias_and_mask(self, pos: int, tq: int, tc: int) -> tuple[Array | None, Array]:
        """Relative-position bias ``[H, Tq, Tk]`` and mask ``[Tq, Tk]``; both depend on the
        positions only through ``(pos mod chunk, Tq, Tc)``, so they are cached on that key."""
        key = (pos % self.chunk, tq, tc)
        hit = self._cache.get(key)
        if hit is None:
            q_pos = np.arange(pos, pos + tq)
            k_pos = np.arange(pos - tc, pos + tq)
            bias = None
            if self.rel_bias is not None:
                rel = np.clip(q_pos[:, None] - k_pos[None, :] + self.chunk - 1, 0, self.num_rel - 1)
                bias = np.ascontiguousarray(self.rel_bias[rel].transpose(2, 0, 1))
            hit = (bias, chunk_mask(q_pos, k_pos, self.chunk, self.left))
            self._cache[key] = hit
        return hit


class CausalConvModule:
    """LN -> Linear(d, 2d) -> GLU -> causal depthwise conv (cache of k-1 GLU frames) -> LN -> SiLU -> Linear.

    The depthwise kernel ``[d, 1, k]`` is tiny: it is decoded to float once at load.
    """

    def __init__(self, store: WeightStore, prefix: str, kernel: int) -> None:
        self.kernel = int(kernel)
        self.norm = LayerNorm.from_store(store, f"{prefix}.norm")
        self.pw1 = store.linear(f"{prefix}.pw1")
        w = store.dense(f"{prefix}.dw.weight")
        if w.ndim != 3 or w.shape[1] != 1 or w.shape[2] != self.kernel:
            raise ValueError(f"{prefix}.dw.weight has shape {w.shape}, expected [d, 1, {self.kernel}]")
        self.dw = f32(w[:, 0, :].T)  # [k, d]
        self.dw_bias = store.maybe_float(f"{prefix}.dw.bias")
        self.norm2 = LayerNorm.from_store(store, f"{prefix}.norm2")
        self.pw2 = store.linear(f"{prefix}.pw2")

    def __call__(self, x: Array, cache: Array) -> tuple[Array, Array]:
        """``x [T, d]``, ``cache [k-1, d]`` (time-major) -> (out [T, d], new cache)."""
        a = self.pw1(self.norm(x))
        d = a.shape[1] // 2
        y = a[:, :d] * sigmoid(a[:, d:])
        y = np.concatenate([cache, y], axis=0)  # [k-1+T, d]
        t = x.shape[0]
        new_cache = y[y.shape[0] - (self.kernel - 1) :] if self.kernel > 1 else y[:0]
        out = np.zeros((t, d), dtype=np.float32)
        for j in range(self.kernel):
            out += y[j : j + t] * self.dw[j]
        if self.dw_bias is not None:
            out += self.dw_bias
        return self.pw2(silu(self.norm2(out))), f32(new_cache)


class ConformerBlock:
    """x += FFN/2; x += MHSA(LN x); x += Conv; x += FFN/2; x = LN x."""

    def __init__(self, store: WeightStore, prefix: str, d: int, heads: int, kernel: int, chunk: int,
                 left: int, rel_pos: bool) -> None:
        self.ff1 = FeedForward(store, f"{prefix}.ff1")
        self.attn_norm = LayerNorm.from_store(store, f"{prefix}.attn_norm")
        self.attn = ChunkedSelfAttention(store, f"{prefix}.attn", d, heads, chunk, left, rel_pos)
        self.conv = CausalConvModule(store, f"{prefix}.conv", kernel)
        self.ff2 = FeedForward(store, f"{prefix}.ff2")
        self.out_norm = LayerNorm.from_store(store, f"{prefix}.out_norm")

    def __call__(self, x: Array, cache: dict[str, Array], pos: int) -> tuple[Array, Array, Array, Array]:
        x = x + 0.5 * self.ff1(x)
        a, k, v = self.attn(self.attn_norm(x), cache["k"], cache["v"], pos)
        x = x + a
        c, conv_cache = self.conv(x, cache["conv"])
        x = x + c
        x = x + 0.5 * self.ff2(x)
        return self.out_norm(x), k, v, conv_cache

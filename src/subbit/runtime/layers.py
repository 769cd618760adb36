"""NumPy layers of the packed runtime: Linear (packed or float), LSTM, LayerNorm, Conformer pieces.

Each layer re-implements one torch layer of :mod:`subbit.asr.models` (docs/models.md gives the
exact math) without importing any training code: quantized weights stay bit-packed and go
through :func:`subbit.runtime.kernels.packed_linear` (int8 activations x int8 codebook, int32
accumulation); weights left in float run through a NumPy matmul. All arrays are float32 and
time-major without a batch dimension (the runtime streams one utterance).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from subbit.runtime import kernels

Array = np.ndarray


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


def _f32(x: Any) -> Array:
    return np.ascontiguousarray(x, dtype=np.float32)


# -- where weights come from -------------------------------------------------------------------
class WeightStore:
    """Uniform access to a loaded ``.subbit`` model: packed tensors and float tensors by name.

    Quantized tensors (``PackedTensor``) stay packed; a quantized tensor that no matmul can use
    directly (a depthwise-conv kernel, a tiny table) is decoded once with :meth:`dense`.
    """

    def __init__(self, packed: dict[str, Any], floats: dict[str, Array], threads: int = 1) -> None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.threads = threads
        self.packed = dict(packed)
        self.floats = {k: _f32(v) for k, v in floats.items()}
        self.used: set[str] = set()
        self.decoded_bytes = 0

    def has(self, name: str) -> bool:
        return name in self.packed or name in self.floats

    def is_packed(self, name: str) -> bool:
        return name in self.packed

    def float(self, name: str) -> Array:
        if name in self.floats:
            self.used.add(name)
            return self.floats[name]
        if name in self.packed:
            return self.dense(name)
        raise ValueError(f"model file has no tensor {name!r} (needed by the runtime)")

    def maybe_float(self, name: str) -> Array | None:
        return self.float(name) if self.has(name) else None

    def dense(self, name: str) -> Array:
        """Decode a packed tensor to float32 with the deployed (int8-rounded) codebook."""
        if name not in self.packed:
            return self.float(name)
        self.used.add(name)
        arr = decode_packed(self.packed[name])
        self.decoded_bytes += arr.nbytes  # held in float by the layer: counted as resident weights
        return arr

    def linear(self, prefix: str, bias: bool = True) -> "Linear":
        """``prefix.weight`` (+ ``prefix.bias``) as a packed or float Linear."""
        w = f"{prefix}.weight"
        b = self.maybe_float(f"{prefix}.bias") if bias else None
        if w in self.packed:
            self.used.add(w)
            return PackedLinear(self.packed[w], b, self.threads)
        return FloatLinear(self.float(w), b)

    def unused(self) -> list[str]:
        return sorted((set(self.packed) | set(self.floats)) - self.used)


def decode_packed(pt: Any) -> Array:
    """Float32 weight of a PackedTensor as the kernels see it (int8 LUT x per-group scale)."""
    shape = tuple(int(d) for d in pt.shape)
    return _f32(kernels.dequantized_weight(pt).reshape(shape))


def kernels_lut(pt: Any) -> tuple[Array, Array]:
    """(int8 LUT [G, 2**bits], float32 scales [G]): the deployed codebook of ``pt``."""
    lut, scales = kernels.int8_codebook(pt)
    return np.asarray(lut), np.asarray(scales, dtype=np.float32)


def packed_nbytes(pt: Any) -> int:
    """Resident bytes of one packed tensor: indices, float codebook, and the kernels' tables
    (int8 LUT, scales, per-row sums) built once at load."""
    groups, rows = int(pt.groups), int(pt.shape[0]) if len(pt.shape) > 1 else 1
    tables = groups * kernels.lut_stride(int(pt.bits)) + 4 * groups + 4 * rows  # int8 LUT, scales, row sums
    return int(np.asarray(pt.packed).nbytes + np.asarray(pt.codebook).nbytes + tables)


# -- Linear --------------------------------------------------------------------------------------
class Linear:
    """``y = x @ W^T + b`` for ``x [M, K]``; subclasses hold the weight packed or in float."""

    in_features: int
    out_features: int

    def __call__(self, x: Array) -> Array:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def nbytes(self) -> int:  # pragma: no cover - abstract
        raise NotImplementedError


class FloatLinear(Linear):
    def __init__(self, weight: Array, bias: Array | None = None) -> None:
        w = _f32(weight)
        if w.ndim != 2:
            raise ValueError(f"Linear weight must be 2-D, got shape {w.shape}")
        self.wt = np.ascontiguousarray(w.T)  # [K, N]: x @ wt is one BLAS call
        self.bias = None if bias is None else _f32(bias)
        self.in_features, self.out_features = w.shape[1], w.shape[0]

    def __call__(self, x: Array) -> Array:
        y = x @ self.wt
        if self.bias is not None:
            y += self.bias
        return y

    @property
    def nbytes(self) -> int:
        return self.wt.nbytes + (0 if self.bias is None else self.bias.nbytes)


class PackedLinear(Linear):
    """Bit-packed weight through the C kernels (or their NumPy reference).

    ``threads > 1`` splits the output rows into that many slices run concurrently (the kernels
    are single-threaded and ctypes releases the GIL); each output still comes from the same
    integer math, so the result is bit-identical to one thread. Small layers stay whole.
    """

    MIN_ROWS_PER_THREAD = 256

    def __init__(self, packed: Any, bias: Array | None = None, threads: int = 1) -> None:
        shape = tuple(int(s) for s in packed.shape)
        if len(shape) != 2:
            raise ValueError(f"packed Linear weight must be 2-D, got shape {shape}")
        self.packed = packed
        self.bias = None if bias is None else _f32(bias)
        self.out_features, self.in_features = shape
        parts = max(1, min(int(threads), shape[0] // self.MIN_ROWS_PER_THREAD))
        self.slices = _row_slices(packed, self.bias, parts) if parts > 1 else []

    def __call__(self, x: Array) -> Array:
        x = _f32(x)
        if not self.slices:
            return kernels.packed_linear(x, self.packed, self.bias)
        pool = _pool(len(self.slices))
        futures = [pool.submit(kernels.packed_linear, x, pt, b) for pt, b in self.slices[1:]]
        first = kernels.packed_linear(x, *self.slices[0])
        return np.concatenate([first] + [f.result() for f in futures], axis=1)

    @property
    def nbytes(self) -> int:
        if self.slices:  # the slices are views of the packed rows; their tables are rebuilt
            return sum(packed_nbytes(pt) for pt, _ in self.slices) + (0 if self.bias is None else self.bias.nbytes)
        return packed_nbytes(self.packed) + (0 if self.bias is None else self.bias.nbytes)


def _row_slices(pt: Any, bias: Array | None, parts: int) -> list[tuple[Any, Array | None]]:
    """Split a packed ``[N, K]`` weight into ``parts`` row ranges (views, no copy of the indices)."""
    from dataclasses import replace

    n, k = int(pt.shape[0]), int(pt.shape[1])
    rows = np.asarray(pt.packed).reshape(n, -1)
    cb = np.asarray(pt.codebook)
    bounds = np.linspace(0, n, parts + 1).astype(int)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        sub_cb = cb[a:b] if int(pt.groups) > 1 else cb
        sub = replace(pt, shape=(int(b - a), k), packed=rows[a:b], codebook=sub_cb,
                      groups=int(pt.groups) if int(pt.groups) == 1 else int(b - a), runtime_cache={})
        out.append((sub, None if bias is None else bias[a:b]))
    return out


_POOLS: dict[int, Any] = {}


def _pool(workers: int) -> Any:
    from concurrent.futures import ThreadPoolExecutor

    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers - 1 or 1, thread_name_prefix="subbit-linear")
    return _POOLS[workers]


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
        return ys, _f32(h), _f32(c)

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
    w_ih = f"{prefix}.weight_ih_l{k}"
    w_hh = f"{prefix}.weight_hh_l{k}"
    ih = _linear_from(store, w_ih, bias)
    hh = _linear_from(store, w_hh, None)
    proj = _linear_from(store, f"{prefix}.weight_hr_l{k}", None) if store.has(f"{prefix}.weight_hr_l{k}") else None
    return LSTMLayer(ih, hh, proj)


def _linear_from(store: WeightStore, name: str, bias: Array | None) -> Linear:
    if store.is_packed(name):
        store.used.add(name)
        return PackedLinear(store.packed[name], bias, store.threads)
    return FloatLinear(store.float(name), bias)


# -- normalisation and small pieces ----------------------------------------------------------
class LayerNorm:
    def __init__(self, weight: Array | None, bias: Array | None, eps: float = 1e-5) -> None:
        self.weight = None if weight is None else _f32(weight)
        self.bias = None if bias is None else _f32(bias)
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
        return _f32(d)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.weight, self.bias) if a is not None)


class Embedding:
    """Token lookup that decodes one packed row per call (the table stays packed)."""

    def __init__(self, store: WeightStore, name: str) -> None:
        self.name = name
        if store.is_packed(name):
            store.used.add(name)
            self.packed = store.packed[name]
            self.table = None
            shape = tuple(int(s) for s in self.packed.shape)
            self.lut, self.scales = kernels_lut(self.packed)
            self.rows = np.asarray(self.packed.packed).reshape(shape[0], -1)
        else:
            self.packed = None
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
        from subbit.export.bitpack import unpack_rows

        idx = unpack_rows(self.rows[token : token + 1], int(self.packed.bits), self.dim)[0].astype(np.int64)
        g = token if self.lut.shape[0] > 1 else 0
        return _f32(self.lut[g, idx].astype(np.float32) * self.scales[g])

    @property
    def nbytes(self) -> int:
        if self.table is not None:
            return self.table.nbytes
        return packed_nbytes(self.packed)


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
        return self.out(_f32(o)), k, v

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
        self.dw = _f32(w[:, 0, :].T)  # [k, d]
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
        return self.pw2(silu(self.norm2(out))), _f32(new_cache)


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

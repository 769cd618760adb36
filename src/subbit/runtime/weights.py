"""Where the runtime's weights come from and the matmuls that use them.

:class:`WeightStore` hands out a loaded ``.subbit`` file's tensors by name and records which were
used (a file with tensors the model does not use is refused); :class:`PackedLinear` keeps a
quantized weight bit-packed and runs it through :func:`subbit.runtime.kernels.packed_linear`
(int8 activations x int8 codebook, int32 accumulation), :class:`FloatLinear` a float weight
through one NumPy matmul.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import numpy as np

from subbit.runtime import kernels

Array = np.ndarray


def f32(x: Any) -> Array:
    """``x`` as a C-contiguous float32 array (no copy when it already is one)."""
    return np.ascontiguousarray(x, dtype=np.float32)


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
        self.floats = {k: f32(v) for k, v in floats.items()}
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
        return self.matrix(f"{prefix}.weight", self.maybe_float(f"{prefix}.bias") if bias else None)

    def matrix(self, name: str, bias: Array | None = None) -> "Linear":
        """The 2-D tensor ``name`` as a packed or float Linear with the given ``bias``."""
        if name in self.packed:
            self.used.add(name)
            return PackedLinear(self.packed[name], bias, self.threads)
        return FloatLinear(self.float(name), bias)

    def unused(self) -> list[str]:
        return sorted((set(self.packed) | set(self.floats)) - self.used)


def decode_packed(pt: Any) -> Array:
    """Float32 weight of a PackedTensor as the kernels see it (int8 LUT x per-group scale)."""
    shape = tuple(int(d) for d in pt.shape)
    return f32(kernels.dequantized_weight(pt).reshape(shape))


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
        w = f32(weight)
        if w.ndim != 2:
            raise ValueError(f"Linear weight must be 2-D, got shape {w.shape}")
        self.wt = np.ascontiguousarray(w.T)  # [K, N]: x @ wt is one BLAS call
        self.bias = None if bias is None else f32(bias)
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
        self.bias = None if bias is None else f32(bias)
        self.out_features, self.in_features = shape
        parts = max(1, min(int(threads), shape[0] // self.MIN_ROWS_PER_THREAD))
        self.slices = _row_slices(packed, self.bias, parts) if parts > 1 else []

    def __call__(self, x: Array) -> Array:
        x = f32(x)
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
    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(max_workers=workers - 1 or 1, thread_name_prefix="subbit-linear")
    return _POOLS[workers]

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
        self.packed = dict(packed)  # not handed to a layer yet
        self.floats = {k: f32(v) for k, v in floats.items()}
        self.used: set[str] = set()
        self.decoded_bytes = 0
        # handed out: the store lets go of the PackedTensor (its float codebook is dead once the
        # kernels' int8 tables exist) and keeps only what the layer holds
        self._linears: dict[str, PackedLinear] = {}
        self._decoded: dict[str, Array] = {}
        self._taken: dict[str, Any] = {}  # name -> the layer that took the tensor whole

    def has(self, name: str) -> bool:
        return self.is_packed(name) or name in self.floats

    def is_packed(self, name: str) -> bool:
        return any(name in d for d in (self.packed, self._linears, self._decoded, self._taken))

    def float(self, name: str) -> Array:
        if name in self.floats:
            self.used.add(name)
            return self.floats[name]
        if self.is_packed(name):
            return self.dense(name)
        raise ValueError(f"model file has no tensor {name!r} (needed by the runtime)")

    def maybe_float(self, name: str) -> Array | None:
        return self.float(name) if self.has(name) else None

    def dense(self, name: str) -> Array:
        """Decode a packed tensor to float32 with the deployed (int8-rounded) codebook."""
        if name in self._decoded:
            return self._decoded[name]
        if name in self._linears:
            arr = self._linears[name].deployed_weight()
        elif name in self.packed:
            pt = self.packed.pop(name)
            arr = decode_packed(pt)
        elif name in self._taken:
            raise ValueError(f"tensor {name!r} was taken whole by a layer and cannot also be decoded")
        else:
            return self.float(name)
        self.used.add(name)
        self._decoded[name] = arr
        self.decoded_bytes += arr.nbytes  # held in float by the layer: counted as resident weights
        return arr

    def take(self, name: str, holder: Any) -> Any:
        """Hand the PackedTensor ``name`` to ``holder``, a layer that keeps what it needs of it;
        its ``nbytes`` is what :meth:`resident_bytes` counts for the tensor."""
        if name not in self.packed:
            raise ValueError(f"packed tensor {name!r} is not in the file or was already handed out")
        self.used.add(name)
        self._taken[name] = holder
        return self.packed.pop(name)

    def linear(self, prefix: str, bias: bool = True) -> "Linear":
        """``prefix.weight`` (+ ``prefix.bias``) as a packed or float Linear."""
        return self.matrix(f"{prefix}.weight", self.maybe_float(f"{prefix}.bias") if bias else None)

    def matrix(self, name: str, bias: Array | None = None) -> "Linear":
        """The 2-D tensor ``name`` as a packed or float Linear with the given ``bias`` (a tensor
        used twice shares one prepared weight)."""
        if name in self._linears:
            return self._linears[name].with_bias(bias)
        if name in self.packed:
            self.used.add(name)
            lin = PackedLinear(self.packed.pop(name), bias, self.threads)
            self._linears[name] = lin
            return lin
        if name in self._decoded:
            return FloatLinear(self._decoded[name], bias)
        return FloatLinear(self.float(name), bias)

    def resident_bytes(self) -> int:
        """Bytes of every weight held: prepared packed weights, decoded ones, floats, and the
        packed tensors no layer has taken yet."""
        total = sum(packed_nbytes(p) for p in self.packed.values()) + self.decoded_bytes
        total += sum(lin.weight_nbytes for lin in self._linears.values())
        total += sum(int(h.nbytes) for h in self._taken.values())
        return total + sum(int(a.nbytes) for a in self.floats.values())

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
    """Resident bytes of one packed tensor no layer has taken yet: indices, float codebook, and
    the kernels' tables (int8 LUT, scales, per-row sums) it will need."""
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
        self.bias = None if bias is None else f32(bias)
        self.out_features, self.in_features = shape
        parts = max(1, min(int(threads), shape[0] // self.MIN_ROWS_PER_THREAD))
        # prepared now, so the PackedTensor (float codebook included) can be let go
        self.weight = kernels.prepare(packed) if parts == 1 else None
        self.slices = [] if parts == 1 else [(kernels.prepare(pt), b) for pt, b in _row_slices(packed, self.bias, parts)]

    def with_bias(self, bias: Array | None) -> "PackedLinear":
        """The same prepared weight with another bias (a tensor used by two layers)."""
        twin = object.__new__(PackedLinear)
        twin.__dict__.update(self.__dict__)
        twin.bias = None if bias is None else f32(bias)
        if self.slices:
            bounds = np.cumsum([0] + [p.n for p, _ in self.slices])
            twin.slices = [(p, None if twin.bias is None else twin.bias[a:b])
                           for (p, _), a, b in zip(self.slices, bounds[:-1], bounds[1:])]
        return twin

    def __call__(self, x: Array) -> Array:
        x = f32(x)
        if not self.slices:
            return kernels.packed_linear(x, self.weight, self.bias)
        pool = _pool(len(self.slices))
        futures = [pool.submit(kernels.packed_linear, x, pt, b) for pt, b in self.slices[1:]]
        first = kernels.packed_linear(x, *self.slices[0])
        return np.concatenate([first] + [f.result() for f in futures], axis=1)

    def deployed_weight(self) -> Array:
        """float32 ``[N, K]`` as the kernels multiply it."""
        parts = [self.weight] if self.weight is not None else [p for p, _ in self.slices]
        return f32(np.concatenate([kernels.dequantized_weight(p) for p in parts], axis=0))

    @property
    def weight_nbytes(self) -> int:
        """Resident bytes of the prepared weight (indices or int8 values, tables, row sums)."""
        return self.weight.nbytes if self.weight is not None else sum(p.nbytes for p, _ in self.slices)

    @property
    def nbytes(self) -> int:
        return self.weight_nbytes + (0 if self.bias is None else self.bias.nbytes)


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

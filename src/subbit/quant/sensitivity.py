"""How much the loss rises when one kernel alone is quantized: the input of an allocation.

:func:`measure_sensitivity` knows no speech: the caller supplies ``loss_fn(model)`` on a fixed
data subset. Methods: ``"mulaw"`` (GQ's initial mu-law grid, :class:`~subbit.quant.gq.GeneralQuantizer`
hard assignment, no training), ``"kmeans"`` (1-D Lloyd k-means per group, quantile start) and
``"fisher"`` (no loss per choice: ``0.5 * sum_i F_i (q(w)_i - w_i)**2`` with a diagonal empirical
Fisher ``F`` from squared gradients over the loss batches and ``q`` the mu-law grid).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from subbit import sizes
from subbit.quant.gq import GeneralQuantizer
from subbit.quant.inventory import BITS, Kernel, param_of, parse_bits, select_kernels

METHODS = ("mulaw", "kmeans", "fisher")


@dataclass
class Sensitivity:
    """Loss increase per kernel and bit depth (``delta[name][bits]``) and how it was measured."""

    method: str
    delta: dict[str, dict[int, float]]
    base_loss: float | None = None
    granularity: str = "tensor"
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "base_loss": self.base_loss, "granularity": self.granularity,
                "meta": dict(self.meta),
                "delta": {n: {str(b): float(x) for b, x in sorted(d.items())} for n, d in self.delta.items()}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Sensitivity:
        if not isinstance(data, Mapping) or not isinstance(data.get("delta"), Mapping):
            raise ValueError("sensitivity: expected a mapping with a 'delta' table")
        delta: dict[str, dict[int, float]] = {}
        for name, row in data["delta"].items():
            if not isinstance(row, Mapping):
                raise ValueError(f"sensitivity {name!r}: expected a mapping bits -> loss increase")
            delta[str(name)] = {parse_bits(b, f"sensitivity {name!r}"): float(x) for b, x in row.items()}
        base = data.get("base_loss")
        return cls(str(data.get("method", "?")), delta, None if base is None else float(base),
                   str(data.get("granularity", "tensor")), dict(data.get("meta") or {}))


def kmeans_codebook(w: Tensor, k: int, iters: int = 30) -> Tensor:
    """1-D k-means (Lloyd) per row of ``w`` ``[G, N]``: ``[G, k]`` sorted centroids. Starts at
    the quantiles ``(j + 0.5) / k``, so it is deterministic."""
    x = w.detach().to(torch.float64)
    q = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    xs = torch.sort(x, dim=1).values
    pos = (q * (x.shape[1] - 1)).round().long()
    c = xs[:, pos].clone()
    for _ in range(iters):
        idx = _nearest_sorted(x, c)
        sums = torch.zeros_like(c).scatter_add_(1, idx, x)
        counts = torch.zeros_like(c).scatter_add_(1, idx, torch.ones_like(x))
        new = torch.sort(torch.where(counts > 0, sums / counts.clamp(min=1), c), dim=1).values
        if torch.equal(new, c):
            break
        c = new
    return c.to(torch.float32)


def _nearest_sorted(x: Tensor, c: Tensor) -> Tensor:
    """Index of the nearest of the sorted centroids ``c`` ``[G, K]`` for each value of ``x`` ``[G, N]``."""
    if c.shape[1] == 1:
        return torch.zeros_like(x, dtype=torch.long)
    mid = ((c[:, 1:] + c[:, :-1]) / 2).contiguous()
    return torch.searchsorted(mid, x.contiguous().to(mid.dtype))


def quick_quantize(w: Tensor, bits: int, granularity: str = "tensor", method: str = "mulaw",
                   options: Mapping[str, Any] | None = None) -> Tensor:
    """``w`` with every value replaced by its nearest codebook entry, the codebook fitted without
    training: GQ's initial mu-law grid (``"mulaw"``, GQ ``options`` such as ``mu`` apply) or 1-D
    k-means (``"kmeans"``), one codebook per tensor or per output channel."""
    g = sizes.rows_of(w.shape) if granularity == "channel" else 1
    if method == "kmeans":
        x = w.detach().float().reshape(g, -1)
        c = kmeans_codebook(x, 1 << bits)
        idx = _nearest_sorted(x.double(), c.double())
        return c.gather(1, idx).reshape(w.shape).to(w.dtype)
    if method in ("mulaw", "fisher"):
        q = GeneralQuantizer(w.detach(), int(bits), granularity, **dict(options or {}))
        return q.hard(w.detach())
    raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")



def _as_float(x: Any) -> float:
    """A loss as a float; an iterable of per-batch losses counts as their mean."""
    if not isinstance(x, (Tensor, int, float)) and isinstance(x, Iterable):
        vals = [_as_float(v) for v in x]
        if not vals:
            raise ValueError("loss_fn returned no loss")
        return sum(vals) / len(vals)
    v = float(x.detach()) if isinstance(x, Tensor) else float(x)
    if not math.isfinite(v):
        raise ValueError(f"loss_fn returned a non-finite loss ({v})")
    return v


@torch.no_grad()
def measure_sensitivity(
    model: nn.Module,
    loss_fn: Callable[[nn.Module], Any],
    kernels: Iterable[str | Kernel] | None = None,
    bits: Iterable[int] = BITS,
    method: str = "mulaw",
    granularity: str = "tensor",
    options: Mapping[str, Any] | None = None,
    on_step: Callable[[str, int], None] | None = None,
) -> Sensitivity:
    """Loss increase of quantizing one kernel at a time, for every kernel and bit depth.

    ``loss_fn(model)`` returns the loss to protect (a float or scalar tensor) on a fixed data
    subset; it is called once for the float model and, for ``"mulaw"`` / ``"kmeans"``, once per
    (kernel, bits) with that kernel replaced by :func:`quick_quantize` and restored afterwards.
    ``"fisher"`` calls ``loss_fn`` once with gradients on: it may return one loss tensor or an
    iterable of per-batch loss tensors (each backpropagated; ``F`` is the mean squared gradient).
    ``on_step(kernel name, bits)`` is called after each measurement (a progress bar).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    bit_list = sorted({parse_bits(b, "bits") for b in bits})
    if not bit_list:
        raise ValueError("bits: no candidate bit depth")
    chosen = select_kernels(model, kernels)
    if not chosen:
        raise ValueError("the model has no quantizable kernel")
    base = _as_float(loss_fn(model))
    delta: dict[str, dict[int, float]] = {}
    fisher = _fisher_diag(model, loss_fn, chosen) if method == "fisher" else None
    for kn in chosen:
        p = param_of(model, kn)
        saved = p.detach().clone()
        row: dict[int, float] = {}
        try:
            for b in bit_list:
                wq = quick_quantize(saved, b, granularity, method, options)
                if fisher is not None:
                    row[b] = 0.5 * float((fisher[kn.name] * (wq.double() - saved.double()) ** 2).sum())
                else:
                    p.copy_(wq)
                    row[b] = _as_float(loss_fn(model)) - base
                if on_step is not None:
                    on_step(kn.name, b)
        finally:
            p.copy_(saved)
        delta[kn.name] = row
    meta = {"bits": bit_list, "options": dict(options or {})}
    return Sensitivity(method, delta, base, granularity, meta)


def _fisher_diag(model: nn.Module, loss_fn: Callable[[nn.Module], Any], kernels: Sequence[Kernel]) -> dict[str, Tensor]:
    params = {k.name: param_of(model, k) for k in kernels}
    acc = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in params.items()}
    flags = {n: p.requires_grad for n, p in params.items()}
    batches = 0
    try:
        with torch.enable_grad():
            for p in params.values():
                p.requires_grad_(True)
            out = loss_fn(model)
            for loss in [out] if isinstance(out, Tensor) else out:  # one graph alive at a time
                if not isinstance(loss, Tensor) or not loss.requires_grad:
                    raise ValueError("method 'fisher': loss_fn must return loss tensors with gradients")
                grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True, retain_graph=False)
                for (n, _), g in zip(params.items(), grads):
                    if g is not None:
                        acc[n] += g.detach().double() ** 2
                batches += 1
    finally:
        for n, p in params.items():
            p.requires_grad_(flags[n])
    if batches == 0:
        raise ValueError("method 'fisher': loss_fn returned no loss")
    return {n: a / batches for n, a in acc.items()}

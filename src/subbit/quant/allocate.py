r"""Automatic bit allocation: one bit depth per kernel, the least predicted loss within a budget.

:func:`allocate` takes the kernels of a model (:mod:`~subbit.quant.inventory`, byte costs from
:mod:`subbit.sizes`: row-padded packed indices + float32 codebook table, per tensor or per
channel), a sensitivity table (:mod:`~subbit.quant.sensitivity`), user constraints
(:mod:`~subbit.quant.constraints`) and a byte budget for the whole model (``budget_bytes``) or a
weights-weighted average bit depth (``avg_bits``); the exact solver
(:mod:`~subbit.quant.knapsack`) picks the depths, and :meth:`Allocation.rules` writes them as a
rules dict that :class:`~subbit.quant.rules.QuantConfig` loads. None of it knows about speech.

The predicted loss of a choice is the sum of the per-kernel increases: interactions between
kernels are ignored (the usual assumption of sensitivity-based mixed precision). What the solver
makes exact is the optimum of that model, not the true loss.

Every public name of the parts is re-exported here (``from subbit.quant.allocate import X``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from subbit import sizes
from subbit.quant.constraints import Constraints
from subbit.quant.inventory import BITS, Kernel, kernels_of, other_bytes, parse_bits
from subbit.quant.knapsack import Infeasible, solve_choice
from subbit.quant.rules import LayerSpec
from subbit.quant.sensitivity import METHODS, Sensitivity, kmeans_codebook, measure_sensitivity, quick_quantize

#: codebook kinds the cost model can price (a GQ codebook is a table; affine is for uniform grids)
CODEBOOKS = sizes.CODEBOOK_KINDS


@dataclass(frozen=True)
class KernelChoice:
    name: str
    bits: int
    bytes: int
    numel: int
    predicted: float  # loss increase the sensitivity table predicts for this kernel at ``bits``
    allowed: tuple[int, ...]
    aliases: tuple[str, ...] = ()


@dataclass
class Allocation:
    """The chosen bit depth per kernel, what it is predicted to cost, and what it weighs."""

    choices: list[KernelChoice]
    predicted_loss_increase: float
    kernel_bytes: int
    other_bytes: int
    overhead_bytes: int
    budget_bytes: int | None
    avg_bits_budget: float | None
    method: str
    spec: dict[str, Any]
    codebook: str = "table"

    @property
    def total_bytes(self) -> int:
        """Kernels + float tensors + file overhead: what counts against ``budget_bytes``."""
        return self.kernel_bytes + self.other_bytes + self.overhead_bytes

    @property
    def avg_bits(self) -> float:
        """Weights-weighted mean bit depth (codebooks not counted)."""
        n = sum(c.numel for c in self.choices)
        return sum(c.numel * c.bits for c in self.choices) / n if n else 0.0

    @property
    def bits(self) -> dict[str, int]:
        return {c.name: c.bits for c in self.choices}

    def rules(self) -> dict[str, Any]:
        """A :class:`~subbit.quant.rules.QuantConfig` dict: ``spec`` as the default (its bits the
        most common choice) and one explicit rule per kernel name (tied owners included)."""
        counts: dict[int, int] = {}
        for c in self.choices:
            counts[c.bits] = counts.get(c.bits, 0) + c.numel
        default = {**self.spec, "bits": max(counts, key=lambda b: (counts[b], b)) if counts else self.spec["bits"]}
        rules = {n: {"bits": c.bits} for c in self.choices for n in (c.name, *c.aliases)}
        return {"version": 1, "default": default, "rules": rules}

    def table(self) -> str:
        """Per-kernel table plus the totals, for the terminal."""
        head = ["kernel", "numel", "bits", "allowed", "bytes", "pred. loss +"]
        body = [[c.name, str(c.numel), str(c.bits), _span(c.allowed), str(c.bytes), f"{c.predicted:.4g}"]
                for c in self.choices]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]

        def fmt(cells: list[str]) -> str:
            return "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(cells, widths)))

        lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        lines.append(f"kernels {self.kernel_bytes} B + float tensors {self.other_bytes} B + file overhead "
                     f"{self.overhead_bytes} B = {self.total_bytes} B")  # fmt: skip
        if self.budget_bytes is not None:
            lines.append(f"budget {self.budget_bytes} B: {self.total_bytes} B used "
                         f"({100 * self.total_bytes / self.budget_bytes:.1f}%)")  # fmt: skip
        lines.append(f"average bits {self.avg_bits:.3f} (weights-weighted, codebooks not counted)"
                     + ("" if self.avg_bits_budget is None else f"; budget {self.avg_bits_budget:g}"))
        lines.append(f"predicted loss increase {self.predicted_loss_increase:.4g} (sum over kernels, "
                     f"sensitivity: {self.method}; codebooks priced as {self.codebook})")  # fmt: skip
        return "\n".join(lines)


def _span(bits: tuple[int, ...]) -> str:
    if len(bits) > 1 and bits == tuple(range(bits[0], bits[-1] + 1)):
        return f"{bits[0]}-{bits[-1]}"
    return ",".join(str(b) for b in bits)



def _spec_dict(spec: Mapping[str, Any] | None) -> dict[str, Any]:
    return LayerSpec.from_dict(dict(spec or {})).to_dict()


def allocate(
    model: nn.Module,
    sensitivity: Sensitivity | Mapping[str, Any],
    budget_bytes: int | None = None,
    avg_bits: float | None = None,
    constraints: Constraints | Mapping[str, Mapping[str, int]] | None = None,
    *,
    spec: Mapping[str, Any] | None = None,
    overhead_bytes: int = 0,
    codebook: str = "table",
    bits: Iterable[int] = BITS,
    monotone: bool = True,
) -> Allocation:
    """The bit depth per kernel of ``model`` with the least predicted loss increase within a budget.

    Exactly one budget: ``budget_bytes``, the whole model (kernels priced by :mod:`subbit.sizes`
    at ``spec``'s granularity with ``codebook`` codebooks, + every other state-dict tensor in
    float32 + ``overhead_bytes`` for the file header and the like), or ``avg_bits``, the
    weights-weighted mean bit depth of the kernels (codebooks not counted). ``spec`` is the
    :class:`~subbit.quant.rules.LayerSpec` dict every kernel gets, but for its bits (default: GQ
    per tensor). ``constraints``: a :class:`Constraints` or a dict with ``fix`` / ``min_bits`` /
    ``max_bits``. ``monotone``: a kernel is never predicted to lose more at more bits (each
    increase is replaced by the least one measured at its depth or below among the allowed
    ones: quick fits are noisy, and GQ's 2-bit start grid is coarser than its 1-bit one, but
    fine-tuning does not make a kernel worse for having more levels). ValueError: a budget below the smallest reachable size (named), constraints
    that cannot hold, kernels missing from ``sensitivity`` or unknown to the model.
    """
    if (budget_bytes is None) == (avg_bits is None):
        raise ValueError("give exactly one budget: budget_bytes or avg_bits")
    if codebook not in CODEBOOKS:
        raise ValueError(f"codebook must be one of {list(CODEBOOKS)}, got {codebook!r}")
    if isinstance(overhead_bytes, bool) or not isinstance(overhead_bytes, int) or overhead_bytes < 0:
        raise ValueError(f"overhead_bytes must be an integer >= 0, got {overhead_bytes!r}")
    sens = sensitivity if isinstance(sensitivity, Sensitivity) else Sensitivity.from_dict(sensitivity)
    layer = _spec_dict(spec)
    gran = layer["granularity"]
    if sens.granularity != gran:
        raise ValueError(f"the sensitivity was measured per {sens.granularity}, the allocation is per {gran}")
    if constraints is None:
        cons = Constraints()
    elif isinstance(constraints, Constraints):
        cons = constraints
    else:
        cons = Constraints(**{k: dict(v) for k, v in constraints.items()})
    kernels = kernels_of(model)
    if not kernels:
        raise ValueError("the model has no quantizable kernel")
    names = {n for k in kernels for n in k.names()}
    unknown = sorted(set(sens.delta) - names)
    if unknown:
        raise ValueError(f"sensitivity names kernel(s) the model does not have: {unknown[:5]}")
    allowed = cons.allowed(kernels, sorted({parse_bits(b, "bits") for b in bits}))
    rows: list[tuple[Kernel, tuple[int, ...], list[float]]] = []
    for kn in kernels:
        d = sens.delta.get(kn.name)
        if d is None:
            raise ValueError(f"sensitivity has no entry for kernel {kn.name}")
        missing = [b for b in allowed[kn.name] if b not in d]
        if missing:
            raise ValueError(f"sensitivity of {kn.name} lacks bit depth(s) {missing}")
        vals = [float(d[b]) for b in allowed[kn.name]]
        if monotone:
            vals = list(np.minimum.accumulate(np.asarray(vals, dtype=np.float64)))
        rows.append((kn, allowed[kn.name], [float(v) for v in vals]))
    fixed = other_bytes(model, kernels) + overhead_bytes if budget_bytes is not None else 0
    if budget_bytes is not None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, (int, np.integer)) or budget_bytes <= 0:
            raise ValueError(f"budget_bytes must be a positive integer, got {budget_bytes!r}")
        costs = [[kn.bytes_at(b, gran, codebook) for b in al] for kn, al, _ in rows]
        capacity = int(budget_bytes) - fixed
    else:
        a = float(avg_bits)  # type: ignore[arg-type]
        if not math.isfinite(a) or a <= 0:
            raise ValueError(f"avg_bits must be a positive number, got {avg_bits!r}")
        costs = [[kn.numel * b for b in al] for kn, al, _ in rows]
        total_numel = sum(kn.numel for kn, _, _ in rows)
        capacity = math.floor(a * total_numel + 1e-9 * total_numel)
    try:
        picks, pred, _ = solve_choice(costs, [v for _, _, v in rows], capacity)
    except Infeasible as err:
        smallest = err.smallest
        lowest = "the lowest bit depth each kernel may take" + ("" if cons.is_empty() else " under the constraints")
        if budget_bytes is not None:
            raise ValueError(f"budget {int(budget_bytes)} B is below the smallest reachable model, "
                             f"{smallest + fixed} B ({lowest}: kernels {smallest} B + float tensors and "
                             f"overhead {fixed} B)") from None  # fmt: skip
        total_numel = sum(kn.numel for kn, _, _ in rows)
        raise ValueError(f"avg_bits {avg_bits:g} is below the smallest reachable average, "
                         f"{smallest / total_numel:.4g} bits ({lowest})") from None  # fmt: skip
    choices = []
    for (kn, al, vals), j in zip(rows, picks):
        b = al[j]
        choices.append(KernelChoice(kn.name, b, kn.bytes_at(b, gran, codebook), kn.numel, vals[j], al, kn.aliases))
    return Allocation(
        choices=choices, predicted_loss_increase=float(sum(c.predicted for c in choices)),
        kernel_bytes=sum(c.bytes for c in choices), other_bytes=other_bytes(model, kernels),
        overhead_bytes=overhead_bytes, budget_bytes=None if budget_bytes is None else int(budget_bytes),
        avg_bits_budget=None if avg_bits is None else float(avg_bits), method=sens.method, spec=layer,
        codebook=codebook,
    )  # fmt: skip


def parse_size(text: str) -> int:
    """``"700KB"`` -> 700000, ``"1.5MiB"`` -> 1572864, ``"123456"`` -> 123456 bytes (KB/MB are
    powers of 1000, KiB/MiB of 1024)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMG]i?B|B)?\s*", str(text), flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"budget: expected a size such as 700KB, 1.5MiB or 123456, got {text!r}")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    value = float(m.group(1)) * scale
    if value < 1:
        raise ValueError(f"budget: must be at least 1 byte, got {text!r}")
    return int(math.floor(value))


__all__ = [
    "Allocation", "BITS", "Constraints", "Infeasible", "Kernel", "KernelChoice", "METHODS", "Sensitivity",
    "allocate", "kernels_of", "kmeans_codebook", "measure_sensitivity", "other_bytes", "parse_size",
    "quick_quantize", "solve_choice",
]  # fmt: skip

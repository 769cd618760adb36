"""What :func:`~subbit.quant.api.report` returns: per-tensor rows, their table, and the byte
counts it prints (from :mod:`subbit.sizes`, as the exporter counts them)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from subbit import sizes
from subbit.quant.base import WeightQuantizer


def codebook_bytes(quantizer: WeightQuantizer, weight: Tensor | None = None) -> int:
    """Bytes of the codebooks as the exporter writes them (float32, :func:`subbit.sizes.codebook_bytes`):
    one step per group when the codebook is bit-exactly affine (:func:`subbit.sizes.find_affine`:
    uniform grids), the full ``[G, 2**bits]`` table otherwise. Telling the two apart needs the
    codebook, so pass the latent ``weight``; without it the table size is returned (an upper bound)."""
    g, bits = quantizer.num_groups, quantizer.bits
    kind = "table"
    if weight is not None:
        with torch.no_grad():
            _, cb = quantizer.encode(weight.detach())
        kind = sizes.codebook_kind(cb.detach().to(torch.float32).cpu().numpy())
    return sizes.codebook_bytes(g, bits, kind)


def packed_bytes(quantizer: WeightQuantizer, weight: Tensor | None = None) -> int:
    """``ceil(numel * bits / 8)`` index bytes (:func:`subbit.sizes.ideal_index_bytes`, no row
    padding) + :func:`codebook_bytes` (same ``weight`` rule)."""
    return sizes.ideal_index_bytes(math.prod(quantizer.shape), quantizer.bits) + codebook_bytes(quantizer, weight)


@dataclass
class ReportRow:
    name: str
    method: str
    bits: int
    groups: int
    numel: int
    tau: float | None
    hardness: float
    rmse: float
    packed_bytes: int


@dataclass
class QuantReport:
    """Per-tensor summary of a prepared model; ``str()`` is an aligned table."""

    rows: list[ReportRow]
    float_tensors: list[str]
    unmatched_rules: list[str]
    float_bytes: int  # fp32 bytes of every parameter not quantized (biases, norms, float weights)

    @property
    def quantized_bytes(self) -> int:
        return sum(r.packed_bytes for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": [asdict(r) for r in self.rows],
            "float_tensors": list(self.float_tensors),
            "unmatched_rules": list(self.unmatched_rules),
            "float_bytes": self.float_bytes,
            "quantized_bytes": self.quantized_bytes,
        }

    def __str__(self) -> str:
        head = ["tensor", "method", "bits", "groups", "numel", "tau", "hardness", "rmse", "packed_B"]
        body = [
            [r.name, r.method, str(r.bits), str(r.groups), str(r.numel),
             "-" if r.tau is None else f"{r.tau:.3g}", f"{r.hardness:.4f}", f"{r.rmse:.3g}", str(r.packed_bytes)]
            for r in self.rows
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *body)]

        def fmt(cells: list[str]) -> str:  # names left-aligned, numbers right-aligned
            return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        lines = [fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body]
        lines.append(f"quantized: {self.quantized_bytes} B packed; float: {self.float_bytes} B")
        if self.float_tensors:
            lines.append("left in float: " + ", ".join(self.float_tensors))
        if self.unmatched_rules:
            lines.append("rules that matched nothing: " + ", ".join(self.unmatched_rules))
        return "\n".join(lines)

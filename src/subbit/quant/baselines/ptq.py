"""Post-training quantization: codebooks computed once from the fp32 weights, no retraining.

``algo="uniform"``: symmetric round-to-nearest on the grid of :mod:`.uniform` (per output
channel when ``granularity="channel"``, the usual PTQ setting). ``algo="kmeans"``: 1-D Lloyd
k-means per group, started from the weight quantiles (deterministic), ``iters`` rounds.

The codebook is fixed at construction ("calibration" on the weight itself). ``forward``
returns the hard values with no gradient to the weight: PTQ does not train, so a training loop
that runs through it only updates the unquantized parameters (biases, norms).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from subbit.quant.base import WeightQuantizer
from subbit.quant.baselines._common import (
    int_levels,
    level_index,
    lloyd_1d,
    max_step,
    merge_options,
    nearest_index,
    positive_int,
    round_to_grid,
)
from subbit.quant.registry import register_method

ALGOS = ("uniform", "kmeans")


@register_method("ptq")
class PTQQuantizer(WeightQuantizer):
    """Round-to-nearest uniform or k-means codebooks; options ``algo`` and ``iters`` (kmeans)."""

    @classmethod
    def check_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Validate ``options``; return them completed with defaults (ValueError names the option)."""
        opts = merge_options("ptq", options, {"algo": "uniform", "iters": 30})
        if opts["algo"] not in ALGOS:
            raise ValueError(f"ptq: option 'algo' must be one of {ALGOS}, got {opts['algo']!r}")
        positive_int("ptq", "iters", opts["iters"], minimum=0)
        return opts

    def __init__(self, weight: Tensor, bits: int, granularity: str = "tensor", **options: Any) -> None:
        super().__init__(weight, bits, granularity)
        opts = self.check_options(options)
        self.algo: str = opts["algo"]
        self.iters: int = opts["iters"]
        wg = self.grouped(weight.detach().float())
        if self.algo == "uniform":
            step = max_step(wg, bits)
            self.register_buffer("step", step)
            codebook = step[:, None] * int_levels(bits)[None, :]
        else:
            codebook = lloyd_1d(wg, self.levels, self.iters)
        self.register_buffer("codebook", codebook.to(weight.dtype))

    def forward(self, w: Tensor) -> Tensor:
        return self.hard(w)

    @torch.no_grad()
    def encode(self, w: Tensor) -> tuple[Tensor, Tensor]:
        wg = self.grouped(w.detach())
        if self.algo == "uniform":
            idx = level_index(round_to_grid(wg, self.step.to(wg.dtype), self.bits), self.bits)
        else:
            idx = nearest_index(wg, self.codebook)
        return idx.reshape(w.shape), self.codebook

    def extra_repr(self) -> str:
        return super().extra_repr() + f", algo={self.algo}"

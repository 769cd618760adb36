"""Post-training quantization: codebooks computed once from the fp32 weights, no retraining.

``algo="uniform"``: symmetric round-to-nearest on the grid of :mod:`.uniform` (per output
channel when ``granularity="channel"``, the usual PTQ setting). ``algo="kmeans"``: 1-D Lloyd
k-means per group, started from the weight quantiles (deterministic), ``iters`` rounds.

The codebook is fixed at construction ("calibration" on the weight itself). ``forward``
returns the hard values with no gradient to the weight: PTQ does not train, so a training loop
that runs through it only updates the unquantized parameters (biases, norms).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from subbit.quant.base import WeightQuantizer
from subbit.quant.baselines._common import (
    int_levels,
    level_index,
    lloyd_1d,
    max_step,
    nearest_index,
    round_to_grid,
)
from subbit.quant.options import MethodOptions
from subbit.quant.registry import register_method

ALGOS = ("uniform", "kmeans")


@dataclass(frozen=True)
class PTQOptions(MethodOptions):
    """PTQ's options: ``algo`` ("uniform" | "kmeans") and Lloyd ``iters`` (kmeans)."""

    method = "ptq"
    algo: str = "uniform"
    iters: int = 30

    def __post_init__(self) -> None:
        self._choice("algo", ALGOS)
        self._int("iters", 0)


@register_method("ptq")
class PTQQuantizer(WeightQuantizer):
    """Round-to-nearest uniform or k-means codebooks; options ``algo`` and ``iters`` (kmeans)."""

    Options = PTQOptions
    option_attributes = ("algo", "iters")

    def build(self, weight: Tensor) -> None:
        wg = self.grouped(weight.detach().float())
        if self.algo == "uniform":
            step = max_step(wg, self.bits)
            self.register_buffer("step", step)
            codebook = step[:, None] * int_levels(self.bits)[None, :]
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

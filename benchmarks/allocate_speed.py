"""Time of one exact allocation (subbit.quant.allocate) on the small RNN-T and Conformer presets.

Random sensitivities (decreasing in bits, with noise); 2, 3 and 4 bits average, then the byte
budget those reached; per tensor and per channel. ``python benchmarks/allocate_speed.py``
"""

from __future__ import annotations

import time

import numpy as np
import torch

from subbit.asr.models.presets import build_from_config, preset_config
from subbit.quant.allocate import Sensitivity, allocate, kernels_of

torch.set_num_threads(1)
rng = np.random.default_rng(0)
print("arch       granularity  kernels  avg_bits  solve ms (avg bits / bytes)")
for arch in ("rnnt", "conformer"):
    model = build_from_config(preset_config(arch, "small", vocab_size=128, n_mels=80))
    kernels = kernels_of(model)
    for gran in ("tensor", "channel"):
        delta = {k.name: {b: k.numel * 2.0**-b * rng.uniform(0.5, 2) + rng.normal(0, 1e3) for b in range(1, 9)}
                 for k in kernels}  # fmt: skip
        sens = Sensitivity("random", delta, granularity=gran)
        for avg in (2, 3, 4):
            t = time.perf_counter()
            a = allocate(model, sens, avg_bits=avg, spec={"granularity": gran})
            t1 = time.perf_counter() - t
            t = time.perf_counter()
            allocate(model, sens, budget_bytes=a.total_bytes, spec={"granularity": gran})
            t2 = time.perf_counter() - t
            print(f"{arch:10s} {gran:12s} {len(kernels):7d}  {avg:8d}  {1e3 * t1:.0f} / {1e3 * t2:.0f}")

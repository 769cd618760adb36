"""Clipping the latent weights' gradients on their own (issue 12 item 7).

Late in GQ's anneal the soft assignment is steep at the midpoints between centroids, so the
latent weights' gradient norm grows (~20x from tau_rel 1 to 1e-3 on a 256x1024 layer). A loop
that clips one *global* norm then shrinks every other parameter's step with it. Calling
:func:`clip_latent_grad_norm_` before the global clip bounds each latent tensor's gradient by
itself, so the rest of the model keeps its step size. Whether that helps is measured in
``benchmarks/latent_grad_growth.py`` (RESULTS.md section 1.7).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from subbit.quant.api import quantized_tensors


@torch.no_grad()
def clip_latent_grad_norm_(model: nn.Module, max_norm: float) -> Tensor:
    """Clip the gradient of each quantized latent weight of ``model`` to L2 norm ``max_norm``, in
    place, tensor by tensor (a tied weight once). Returns the norm of all of them together before
    clipping (0 when none has a gradient)."""
    if not max_norm > 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm!r}")
    seen: set[int] = set()
    norms = []
    for qt in quantized_tensors(model):
        p = qt.latent
        if id(p) in seen or p.grad is None:
            continue
        seen.add(id(p))
        norm = torch.linalg.vector_norm(p.grad)
        norms.append(norm)
        p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())

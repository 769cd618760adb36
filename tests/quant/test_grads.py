"""subbit.quant.clip_latent_grad_norm_: per-tensor clip of the latent weights' gradients only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subbit.quant import QuantConfig, clip_latent_grad_norm_, prepare, quantized_tensors


def test_clips_each_latent_alone_and_leaves_the_rest():
    torch.manual_seed(0)
    model = prepare(nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 4)),
                    QuantConfig.from_dict({"default": {"bits": 2}}))
    (model(torch.randn(8, 16)) * 100).square().sum().backward()
    latents = [qt.latent for qt in quantized_tensors(model)]
    before = {id(p): p.grad.clone() for p in model.parameters() if p.grad is not None}
    norms = torch.stack([p.grad.norm() for p in latents])
    assert (norms > 1.0).all()
    total = clip_latent_grad_norm_(model, 1.0)
    assert torch.allclose(total, norms.norm())
    for p in latents:  # clipped to the bound, direction kept
        assert p.grad.norm() == pytest.approx(1.0, rel=1e-4)
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), before[id(p)].flatten(), dim=0)
        assert cos == pytest.approx(1.0, abs=1e-6)
    ids = {id(p) for p in latents}
    for p in model.parameters():
        if p.grad is not None and id(p) not in ids:
            assert torch.equal(p.grad, before[id(p)])
    assert clip_latent_grad_norm_(model, 10.0) <= torch.tensor(len(latents) ** 0.5) + 1e-4  # under the bound: no-op
    with pytest.raises(ValueError, match="max_norm"):
        clip_latent_grad_norm_(model, 0.0)

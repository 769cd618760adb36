"""Tied weights through the exporter (issue 11): one Parameter owned by two modules is one
quantizer, so the file holds it once, under its first owner's name, and none of the second
owner's quantizer internals; loading it into the float model reproduces the converted model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import subbit.quant as q
from subbit.export import export_model, load_dequantized, load_packed
from subbit.testing.dummies import dummy_tied_lm

torch.set_num_threads(1)


def converted_tied(granularity: str = "tensor") -> nn.Module:
    cfg = q.QuantConfig.from_dict({"default": {"method": "gq", "bits": 3, "granularity": granularity}})
    model = q.prepare(dummy_tied_lm(24, 16), cfg)
    assert q.prepare_info(model).tied == {"emb.weight": ["head.weight"]}
    return q.convert(model).eval()


def test_a_tied_kernel_is_stored_once_without_the_aliases_quantizer_buffers(tmp_path: Path) -> None:
    model = converted_tied()
    path = tmp_path / "tied.subbit"
    summary = export_model(model, path, arch={"arch": "tied"})
    pm = load_packed(path)
    assert sorted(pm.packed) == ["emb.weight", "mix.weight"]
    assert sorted(pm.floats) == ["mix.bias"]  # no head.subbit_quant.* (tau, converted, centroids ...)
    assert [t.name for t in summary.tensors if t.kind == "float"] == ["mix.bias"]


def test_a_tied_model_loads_back_and_computes_what_the_converted_model_computes(tmp_path: Path) -> None:
    for granularity in ("tensor", "channel"):
        model = converted_tied(granularity)
        path = tmp_path / f"tied-{granularity}.subbit"
        export_model(model, path, arch={"arch": "tied"})
        _, state = load_dequantized(path)
        plain = dummy_tied_lm(24, 16, seed=1).eval()
        result = plain.load_state_dict(state, strict=False)
        # the alias is the same Parameter in the float model: loading the first owner sets both
        assert result.missing_keys == ["head.weight"] and result.unexpected_keys == []
        assert plain.head.weight is plain.emb.weight
        assert torch.equal(plain.emb.weight, model.emb.weight) and torch.equal(plain.head.weight, model.head.weight)
        x = torch.randint(0, 24, (3, 9))
        with torch.no_grad():
            want, got = model(x), plain(x)
        # same weights, same float32 ops in the same order: equal up to float32 rounding noise of
        # the matmul kernels (a wrong or missing tied weight moves logits by O(0.1))
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6)

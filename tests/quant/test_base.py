"""quant.base directly: the shared constructor prologue (options parsed, option attributes copied,
``build`` called last) and the nearest-centroid export that DKM and S8BQAT share."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from subbit.quant.base import WeightQuantizer
from subbit.quant.baselines import DKMQuantizer, S8BQATQuantizer
from subbit.quant.baselines._common import CentroidQuantizer
from subbit.quant.options import MethodOptions


@dataclass(frozen=True)
class _GridOptions(MethodOptions):
    method = "test_grid"
    scale: float = 1.0
    label: str = "a"

    def __post_init__(self) -> None:
        self._number("scale", positive=True)


class _Grid(WeightQuantizer):
    """A method written the built-in way: Options, option_attributes and build, no __init__."""

    Options = _GridOptions
    option_attributes = ("scale",)

    def build(self, weight: torch.Tensor) -> None:
        # options are parsed and copied before build runs
        self.seen = (self.options, self.scale)
        self.register_buffer("step", self.grouped(weight.detach()).abs().amax(1) * self.scale)

    def encode(self, w: torch.Tensor):  # type: ignore[no-untyped-def]
        raise NotImplementedError


def test_prologue_parses_options_copies_attributes_then_builds() -> None:
    w = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    q = _Grid(w, 3, "channel", {"label": "b"}, scale=2)
    assert q.options == _GridOptions(scale=2.0, label="b")
    assert q.scale == 2.0 and isinstance(q.scale, float) and not hasattr(q, "label")
    assert q.seen == (q.options, 2.0)
    assert torch.equal(q.step, torch.tensor([4.0, 8.0]))
    q.scale = 3.0  # a copied attribute is a plain attribute: it can be switched
    assert q.scale == 3.0 and q.options.scale == 2.0


def test_prologue_checks_bits_before_options_and_names_a_bad_option() -> None:
    w = torch.ones(2, 2)
    with pytest.raises(ValueError, match="bits must be an integer"):
        _Grid(w, 9, scale=-1)
    with pytest.raises(ValueError, match="test_grid: option 'scale' must be positive"):
        _Grid(w, 2, scale=-1)
    with pytest.raises(ValueError, match="test_grid: unknown option 'nope'"):
        _Grid(w, 2, "tensor", {"nope": 1})


def test_a_method_without_options_keeps_its_own_init() -> None:
    class Plain(WeightQuantizer):
        def __init__(self, weight, bits, granularity="tensor", **options):  # type: ignore[no-untyped-def]
            super().__init__(weight, bits, granularity)
            self.extra = options

    q = Plain(torch.ones(3), 2, anything=1)
    assert q.extra == {"anything": 1} and q.options == MethodOptions()


@pytest.mark.parametrize("cls", [DKMQuantizer, S8BQATQuantizer])
def test_centroid_methods_export_each_weight_as_its_nearest_centroid(cls) -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    q = cls(w, 3, "channel")
    assert isinstance(q, CentroidQuantizer)
    idx, cb = q.encode(w)
    assert idx.shape == w.shape and torch.equal(cb, q.centroids) and cb.data_ptr() != q.centroids.data_ptr()
    dist = (w[:, :, None] - q.centroids[:, None, :]).abs()
    best = dist.min(dim=2).values
    assert torch.equal(dist.gather(2, idx[:, :, None])[..., 0], best)  # nearest (ties either way)

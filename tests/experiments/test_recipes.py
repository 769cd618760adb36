"""The fair-baseline recipes: every name builds a validated QuantConfig with the intended method."""

from __future__ import annotations

import pytest

from subbit.experiments.recipes import RECIPES, describe
from subbit.quant import QuantConfig

KEPT = ("fp32", "qat8", "s8bqat4", "s8bqat5", "gq8", "gq5", "gq4", "gq3", "gq2", "gq-mixed", "dkm4",
        "ptq4-uniform", "ptq4-kmeans")
# name -> (method, bits, granularity, options that must be set)
NEW = {
    **{f"lsq{b}": ("uniform", b, "channel", {"lsq": True}) for b in (2, 3, 4, 5, 8)},
    "s8bqat3": ("s8bqat", 3, "tensor", {}),
    "dkm3": ("dkm", 3, "tensor", {}),
    "dkm2": ("dkm", 2, "tensor", {}),
    "ptq3-uniform": ("ptq", 3, "channel", {"algo": "uniform"}),
    "ptq3-kmeans": ("ptq", 3, "tensor", {"algo": "kmeans"}),
    **{f"gq{b}-channel": ("gq", b, "channel", {}) for b in (5, 4, 3, 2)},
}
NAMES = ["encoder.lstms.0.weight_ih_l0", "encoder.lstms.0.weight_hh_l0", "joiner.out.weight"]


def test_existing_recipe_names_still_work() -> None:
    assert set(KEPT) <= set(RECIPES)
    assert RECIPES["qat8"].quant["default"] == {"method": "uniform", "bits": 8, "granularity": "channel"}
    assert RECIPES["dkm4"].quant["default"] == {"method": "dkm", "bits": 4, "granularity": "tensor"}


@pytest.mark.parametrize("name", sorted(NEW))
def test_new_recipe_builds_its_config(name: str) -> None:
    method, bits, granularity, options = NEW[name]
    recipe = RECIPES[name]
    qc = recipe.quant_config(NAMES)
    assert isinstance(qc, QuantConfig)
    d = qc.default
    assert (d.method, d.bits, d.granularity) == (method, bits, granularity)
    assert options.items() <= d.options.items()
    assert recipe.method == method
    assert recipe.train == (method != "ptq")
    assert QuantConfig.from_dict(qc.to_dict()).to_dict() == qc.to_dict()
    assert name in describe(recipe)


def test_s8bqat_recipes_share_the_hard_compressor_schedule() -> None:
    for b in (3, 4, 5):
        assert RECIPES[f"s8bqat{b}"].schedule == {"quant_every": 50, "quant_mode": "project"}

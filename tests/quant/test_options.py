"""Typed method options (subbit.quant.options): dict <-> dataclass at the config boundary."""

from __future__ import annotations

import json

import pytest
import torch

from subbit.quant import GQOptions, LayerSpec, QuantConfig, get_method, known_methods
from subbit.quant.gq import GeneralQuantizer
from subbit.quant.options import MethodOptions


@pytest.mark.parametrize("method", ["gq", "uniform", "s8bqat", "dkm", "ptq"])
def test_every_builtin_method_has_a_typed_options_class(method):
    cls = get_method(method).Options
    assert issubclass(cls, MethodOptions) and cls is not MethodOptions and cls.method == method
    default = cls()
    assert cls.from_dict({}) == default == cls.from_dict(None)
    assert cls.from_dict(json.loads(default.to_json())) == default
    with pytest.raises(ValueError, match=f"{method}: unknown option 'nope'"):
        cls.from_dict({"nope": 1})
    other = next(get_method(m).Options() for m in known_methods() if m != method)
    with pytest.raises(ValueError, match="expected"):
        cls.from_dict(other)


def test_study_style_dicts_are_accepted_and_completed():
    """The experiments pass partial dicts; ints become floats, the rest keeps its default."""
    opts = GQOptions.from_dict({"mu": 25, "learn_centroids": False})
    assert opts.mu == 25.0 and isinstance(opts.mu, float) and opts.learn_centroids is False
    assert opts.window == GQOptions().window and opts.impl == "auto"
    q = GeneralQuantizer(torch.randn(8, 16), 4, "tensor", mu=25, learn_centroids=False)
    assert q.options == opts and not q.theta.requires_grad
    assert GeneralQuantizer(torch.randn(8, 16), 4, "tensor", opts).options == opts
    # keywords override a dataclass given positionally
    assert GeneralQuantizer(torch.randn(8, 16), 4, "tensor", opts, mu=3).options.mu == 3.0


@pytest.mark.parametrize(("field", "value"), [
    ("mu", -1), ("mu", float("nan")), ("mu", True), ("learn_mu", 1), ("domain", "log"), ("distance", "l3"),
    ("impl", "fast"), ("window", 1), ("window", 2.0), ("chunk_size", 0), ("straight_through", "yes"),
])
def test_bad_gq_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"gq: option '{field}'"):
        GQOptions.from_dict({field: value})


def test_exclusive_options():
    with pytest.raises(ValueError, match="symmetric.*zero_centroid"):
        GQOptions(symmetric=True, zero_centroid=True)


def test_layer_spec_keeps_what_the_user_wrote_and_accepts_a_dataclass():
    """Checkpoints store LayerSpec.options as JSON: a partial dict stays partial (same bytes as
    before the option classes), and an old stored config loads and validates."""
    stored = {"version": 1, "default": {"method": "gq", "bits": 4, "granularity": "tensor",
                                        "options": {"mu": 25, "tau_scale_unused": None}}, "rules": {}}
    with pytest.raises(ValueError, match="default.options: gq: unknown option 'tau_scale_unused'"):
        QuantConfig.from_dict(stored)
    stored["default"]["options"] = {"mu": 25, "learn_centroids": False}
    cfg = QuantConfig.from_dict(json.loads(json.dumps(stored)))
    assert cfg.to_dict()["default"]["options"] == {"mu": 25, "learn_centroids": False}
    dkm = LayerSpec("dkm", 3, options={"tau_scale": "max"})
    assert dkm.to_dict()["options"] == {"tau_scale": "max"}
    typed = LayerSpec("gq", 4, options=GQOptions(mu=7.0))
    assert typed.options == GQOptions(mu=7.0).to_dict()
    assert GQOptions.from_dict(LayerSpec.from_dict(typed.to_dict()).options) == GQOptions(mu=7.0)


def test_kernel_names_still_import_from_gq():
    """The soft-assignment kernel moved to soft_window; the old import path re-exports it."""
    from subbit.quant import gq, soft_window

    for name in ("locate", "needed_window", "_windows", "_assign", "SoftAssign", "soft_assign", "AssignConfig",
                 "nearest", "window_start", "companded", "max_prob"):
        assert getattr(gq, name) is getattr(soft_window, name)

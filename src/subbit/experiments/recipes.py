"""Named method configurations for the paper's comparisons (``subbit compare --list``).

A :class:`Recipe` is a QuantConfig dict (``None`` for fp32), per-parameter rules that are
expanded against a concrete model's parameter names, and the GQ scheduler settings that go with
the method. Every recipe is fine-tuned from the same fp32 model with the same budget; the only
exceptions are the PTQ recipes (``train=False``): they are prepared and converted, never trained.

Why parameter rules: ``QuantConfig`` regexes match *module* names, but an LSTM holds its input
kernel (``weight_ih``) and its recurrent kernel (``weight_hh``) in one module. Bit allocations
that treat them differently must name parameters exactly, so a recipe keeps regexes over
parameter FQNs and turns them into exact-name rules (which win over everything) per model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from torch import nn

#: GQ scheduler / training-loop knobs a recipe may set (names of TrainConfig fields)
SCHEDULE_KEYS = ("tau_start", "tau_end", "anneal", "anneal_end", "quant_every", "quant_mode", "latent_clip")


@dataclass(frozen=True)
class Recipe:
    """One row of a comparison: how the fp32 model is quantized and fine-tuned."""

    name: str
    method: str  # display name of the method family: fp32, uniform, s8bqat, gq, dkm, ptq
    description: str
    quant: dict[str, Any] | None = None  # QuantConfig dict; None = stay in fp32
    param_rules: tuple[tuple[str, dict[str, Any] | None], ...] = ()  # (fullmatch regex on param FQN, spec)
    schedule: dict[str, Any] = field(default_factory=dict)
    train: bool = True

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", self.name):
            raise ValueError(f"recipe name: lower-case letters, digits, '.', '-' only, got {self.name!r}")
        unknown = sorted(set(self.schedule) - set(SCHEDULE_KEYS))
        if unknown:
            raise ValueError(f"recipe {self.name}: schedule: unknown key {unknown[0]!r}; known: {SCHEDULE_KEYS}")
        if self.quant is None and (self.param_rules or not self.train):
            raise ValueError(f"recipe {self.name}: an fp32 recipe has no parameter rules and must train")
        for pattern, _ in self.param_rules:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"recipe {self.name}: param_rules: invalid regex {pattern!r}: {err}") from None
        if self.quant is not None:
            self.quant_config([])  # validates the dict now, not in the middle of a compare run

    @property
    def quantized(self) -> bool:
        return self.quant is not None

    def quant_config(self, param_names: Iterable[str]) -> Any:
        """The :class:`subbit.quant.QuantConfig` for a model whose quantizable parameters are
        ``param_names`` (``None`` for fp32). Parameter rules become exact-name rules; the first
        matching pattern wins."""
        from subbit.quant import QuantConfig

        if self.quant is None:
            return None
        data = {**self.quant, "rules": dict(self.quant.get("rules") or {})}
        for name in param_names:
            for pattern, spec in self.param_rules:
                if re.fullmatch(pattern, name):
                    data["rules"][name] = spec
                    break
        try:
            return QuantConfig.from_dict(data)
        except ValueError as err:
            raise ValueError(f"recipe {self.name}: {err}") from None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "method": self.method,
            "description": self.description,
            "quant": self.quant,
            "param_rules": [[p, s] for p, s in self.param_rules],
            "schedule": dict(self.schedule),
            "train": self.train,
        }

    def variant(self, name: str, description: str, **changes: Any) -> Recipe:
        """A copy with another name (ablations derive their variants this way)."""
        return replace(self, name=name, description=description, **changes)


def quantizable_names(model: nn.Module) -> list[str]:
    """FQNs of every parameter ``subbit.quant.prepare`` could quantize, in module order."""
    from subbit.quant.modules import quantizable_params

    names = []
    for mname, module in model.named_modules():
        for pname in quantizable_params(module):
            names.append(f"{mname}.{pname}" if mname else pname)
    return names


def _gq(bits: int, granularity: str = "tensor", **options: Any) -> dict[str, Any]:
    return {"default": {"method": "gq", "bits": bits, "granularity": granularity, "options": dict(options)}}


def _spec(method: str, bits: int, granularity: str, **options: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"method": method, "bits": bits, "granularity": granularity}
    if options:
        spec["options"] = dict(options)
    return {"default": spec}


#: recurrent kernels of the encoder (RNN-T: encoder.lstms.N.weight_hh_lK); absent in a Conformer
ENC_RECURRENT = r"encoder\..*\.weight_hh_l\d+"
#: the two tensors that touch token ids directly: predictor embedding and joiner output layer
TOKEN_EDGES = r"predictor\.embed\.weight|joiner\.out\.weight"

_S8BQAT_SCHEDULE = {"quant_every": 50, "quant_mode": "project"}

_RECIPES: tuple[Recipe, ...] = (
    Recipe("fp32", "fp32", "fp32 fine-tuned for the same budget (no quantization)"),
    Recipe("qat8", "uniform", "8-bit QAT: uniform symmetric per-channel fake quant + STE (the paper's 8-bit baseline)",
           {"default": {"method": "uniform", "bits": 8, "granularity": "channel"}}),
    *(Recipe(f"lsq{b}", "uniform", f"{b}-bit uniform QAT per channel with LSQ: learned step (Esser et al. 2020, "
             "gradient scale 1/sqrt(N*Qp), MSE-initialised), STE", _spec("uniform", b, "channel", lsq=True))
      for b in (2, 3, 4, 5, 8)),
    *(Recipe(f"s8bqat{b}", "s8bqat", f"S8BQAT {b}-bit: fixed mu-law centroids + MRACos regularizer (lam per weight), "
             "hard compressor every 50 steps", _spec("s8bqat", b, "tensor"), schedule=_S8BQAT_SCHEDULE)
      for b in (4, 5, 3)),
    *(Recipe(f"gq{b}", "gq", f"GQ {b}-bit everywhere: learnable mu-law centroids, softmax annealed soft->hard", _gq(b))
      for b in (8, 5, 4, 3, 2)),
    *(Recipe(f"gq{b}-channel", "gq", f"GQ {b}-bit, one codebook per output channel", _gq(b, "channel"))
      for b in (5, 4, 3, 2)),
    Recipe(
        "gq-mixed", "gq",
        "GQ mixed: 2 bits on encoder recurrent kernels (weight_hh), 8 on predictor.embed and joiner.out, "
        "4 elsewhere. weight_hh is a large share of the weights and its error is damped by the gates at "
        "every step; the embedding and output layer are small but act on token scores directly",
        _gq(4), param_rules=((ENC_RECURRENT, {"bits": 2}), (TOKEN_EDGES, {"bits": 8})),
    ),
    *(Recipe(f"dkm{b}", "dkm", f"DKM {b}-bit: soft k-means attention over all weights, fixed raw tau 1e-4 "
             "(coremltools default), no mu-law, no anneal", _spec("dkm", b, "tensor"))
      for b in (4, 3, 2)),
    *(r for b in (4, 3) for r in (
        Recipe(f"ptq{b}-uniform", "ptq", f"PTQ {b}-bit uniform per-channel round-to-nearest, no training",
               _spec("ptq", b, "channel", algo="uniform"), train=False),
        Recipe(f"ptq{b}-kmeans", "ptq", f"PTQ {b}-bit 1-D k-means codebook per tensor, no training",
               _spec("ptq", b, "tensor", algo="kmeans"), train=False),
    )),
)

RECIPES: dict[str, Recipe] = {r.name: r for r in _RECIPES}


def get_recipe(name: str) -> Recipe:
    """The named recipe (ablation variants included); ValueError lists the known names."""
    if name in RECIPES:
        return RECIPES[name]
    from subbit.experiments.ablations import all_variants

    variants = all_variants()
    if name in variants:
        return variants[name]
    raise ValueError(f"recipes: unknown recipe {name!r}; known: {', '.join(RECIPES)} (and ablation variants)")


def parse_recipes(text: str) -> list[Recipe]:
    """``"qat8,gq4"`` -> recipes, in order, duplicates dropped."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError("--recipes: give at least one recipe name")
    seen: dict[str, Recipe] = {}
    for n in names:
        seen.setdefault(n, get_recipe(n))
    return list(seen.values())


def describe(recipe: Recipe) -> str:
    """One block of ``--list`` output: name, method, bits, schedule and the config."""
    import json

    q = recipe.quant
    if q is None:
        bits = "32 (float)"
    else:
        d = q["default"]
        bits = f"{d['bits']} ({d['granularity']})"
        if recipe.param_rules:
            bits += "; " + "; ".join(f"{p} -> {s['bits'] if s else 'float'}" for p, s in recipe.param_rules)
    lines = [f"{recipe.name:<14} {recipe.method:<8} bits {bits}", f"    {recipe.description}"]
    if q is not None:
        lines.append(f"    config: {json.dumps(q, sort_keys=True)}")
    if recipe.schedule:
        lines.append(f"    schedule: {json.dumps(recipe.schedule, sort_keys=True)}")
    if not recipe.train:
        lines.append("    no training (post-training quantization)")
    return "\n".join(lines)


def format_recipes(recipes: Iterable[Recipe] | None = None) -> str:
    return "\n".join(describe(r) for r in (recipes if recipes is not None else RECIPES.values()))

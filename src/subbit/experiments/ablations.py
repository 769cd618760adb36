"""The paper's ablations (and our [recon] knobs) as sets of recipe variants around ``gq4``.

Every ablation includes ``gq4`` itself under its own name, so an output directory shared by a
comparison and several ablations trains the reference run once. Variants differ from ``gq4`` in
one knob only:

* ``quant-frequency``: T_q in {1, 10, 100, never}, both readings of "quantization frequency"
  (``project``: overwrite latent weights with their hard values every T_q steps; ``forward``:
  quantize in the forward only every T_q steps). ``forward`` with T_q = 1 is ``gq4`` (the
  quantizer is on at every step), so it is not repeated.
* ``bit-allocation``: which parts get fewer bits (encoder recurrent vs input kernels,
  predictor, joiner, and the token-facing tensors at 8 bits).
* ``mu``: the mu-law constant (0 = uniform grid), and a learnable mu.
* ``distance``: squared vs absolute distance, companded vs linear domain.
"""

from __future__ import annotations

from subbit.experiments.recipes import ENC_RECURRENT, RECIPES, TOKEN_EDGES, Recipe

ABLATIONS = ("quant-frequency", "bit-allocation", "mu", "distance")


def _gq4_with(options: dict) -> dict:
    base = RECIPES["gq4"].quant
    assert base is not None
    d = dict(base["default"])
    d["options"] = {**d.get("options", {}), **options}
    return {**base, "default": d}


def _quant_frequency(base: Recipe) -> list[Recipe]:
    out = [base]
    for mode in ("project", "forward"):
        for tq in (1, 10, 100):
            if mode == "forward" and tq == 1:
                continue
            out.append(base.variant(f"gq4-tq{tq}-{mode}", f"GQ 4-bit, T_q={tq} ({mode})",
                                    schedule={**base.schedule, "quant_every": tq, "quant_mode": mode}))
    return out


def _bit_allocation(base: Recipe) -> list[Recipe]:
    enc_ih = r"encoder\..*\.weight_ih_l\d+"
    variants = [
        ("gq4-hh2", "encoder recurrent kernels at 2 bits, rest 4", ((ENC_RECURRENT, {"bits": 2}),)),
        ("gq4-hh1", "encoder recurrent kernels at 1 bit, rest 4", ((ENC_RECURRENT, {"bits": 1}),)),
        ("gq4-ih2", "encoder input kernels at 2 bits, rest 4", ((enc_ih, {"bits": 2}),)),
        ("gq4-enc2", "whole encoder at 2 bits, rest 4", ((r"encoder\..*", {"bits": 2}),)),
        ("gq4-pred2", "predictor at 2 bits, rest 4", ((r"predictor\..*", {"bits": 2}),)),
        ("gq4-joiner2", "joiner at 2 bits, rest 4", ((r"joiner\..*", {"bits": 2}),)),
        ("gq4-edges8", "predictor.embed and joiner.out at 8 bits, rest 4", ((TOKEN_EDGES, {"bits": 8}),)),
    ]
    return [base, *(base.variant(n, f"GQ bit allocation: {d}", param_rules=r) for n, d, r in variants),
            RECIPES["gq-mixed"]]


def _mu(base: Recipe) -> list[Recipe]:
    out = [base]
    for mu in (0, 1, 25, 255):
        out.append(base.variant(f"gq4-mu{mu}", f"GQ 4-bit, mu={mu}" + (" (uniform grid)" if mu == 0 else ""),
                                quant=_gq4_with({"mu": float(mu)})))
    out.append(base.variant("gq4-mu-learn", "GQ 4-bit, learnable mu (init 5)", quant=_gq4_with({"learn_mu": True})))
    return out


def _distance(base: Recipe) -> list[Recipe]:
    out = [base]
    for dist, dom in (("absolute", "companded"), ("squared", "linear"), ("absolute", "linear")):
        out.append(base.variant(f"gq4-{dist[:3]}-{dom[:3]}", f"GQ 4-bit, {dist} distance, {dom} domain",
                                quant=_gq4_with({"distance": dist, "domain": dom})))
    return out


_BUILDERS = {"quant-frequency": _quant_frequency, "bit-allocation": _bit_allocation, "mu": _mu,
             "distance": _distance}


def ablation_recipes(name: str) -> list[Recipe]:
    """The variants of one ablation, reference (``gq4``) first."""
    if name not in _BUILDERS:
        raise ValueError(f"--ablation: unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
    return _BUILDERS[name](RECIPES["gq4"])


def all_variants() -> dict[str, Recipe]:
    """Every ablation variant by name (so ``--recipes gq4-tq10-project`` works too)."""
    return {r.name: r for a in ABLATIONS for r in ablation_recipes(a)}

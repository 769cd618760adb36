"""Per-method settings chosen on dev, never on test: the fine-tuning learning rate of each method
family and S8BQAT's regulariser strength.

Why: a comparison is only fair when every method gets the same search. Each family is tuned once,
on its 4-bit representative, seed 0, scored on the ``dev`` split; the winner is used for every
bit depth of that family and every seed of the test cells. Until a family's whole grid is done
the default (``--lr``, the library's ``lam``) stays in force and the report says "not tuned", so a
stopped study never mixes a half-finished search into its test cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from subbit.experiments.recipes import RECIPES, Recipe

#: fine-tuning learning rates tried per family (the study's default 5e-4 sits in the middle)
TUNE_LRS = (2.5e-4, 5e-4, 1e-3)
#: S8BQAT regulariser strength per weight (a sum over weights; the library default is 1e-4)
S8BQAT_LAMS = (1e-5, 1e-4, 1e-3, 1e-2)
S8BQAT_DEFAULT_LAM = 1e-4
#: family -> the recipe its search runs on
REPRESENTATIVES = {"fp32": "fp32", "qat": "qat8", "lsq": "lsq4", "s8bqat": "s8bqat4", "dkm": "dkm4", "gq": "gq4"}
TUNE_SPLIT = "dev"


def family(recipe: Recipe) -> str | None:
    """The tuning family of a recipe (None for PTQ, which does not train)."""
    if not recipe.train:
        return None
    if recipe.method == "uniform":
        opts = (recipe.quant or {}).get("default", {}).get("options") or {}
        return "lsq" if opts.get("lsq") else "qat"
    return recipe.method if recipe.method in REPRESENTATIVES else None


def _tag(x: float) -> str:
    return f"{x:.0e}".replace("e-0", "e-").replace("+0", "")


def with_lam(recipe: Recipe, lam: float) -> Recipe:
    """``recipe`` with S8BQAT's ``lam`` set (the recipe is unchanged at the default, so cells made
    before the search stay valid when the default wins)."""
    if lam == S8BQAT_DEFAULT_LAM:
        return recipe
    quant = dict(recipe.quant or {})
    default = dict(quant.get("default") or {})
    default["options"] = {**(default.get("options") or {}), "lam": float(lam)}
    quant["default"] = default
    return recipe.variant(recipe.name, recipe.description + f" (lam {lam:g}, chosen on dev)", quant=quant)


@dataclass(frozen=True)
class TuneCell:
    """One point of a search: a recipe fine-tuned at ``lr`` (seed 0) and scored on dev."""

    family: str
    knob: str  # "lr" or "lam"
    value: float
    recipe: Recipe
    lr: float

    @property
    def key(self) -> str:
        return f"{self.recipe.name}-{self.knob}{_tag(self.value)}"


def tune_cells(quick: bool, default_lr: float) -> list[TuneCell]:
    """Every search point: the lr grid per family, then the S8BQAT lam grid at the default lr.
    ``quick`` keeps one family and two points (a smoke test of the mechanism)."""
    if quick:
        return [TuneCell("gq", "lr", lr, RECIPES["gq4"], lr) for lr in (default_lr, 2 * default_lr)]
    cells = [TuneCell(fam, "lr", lr, RECIPES[name], lr) for fam, name in REPRESENTATIVES.items() for lr in TUNE_LRS]
    base = RECIPES[REPRESENTATIVES["s8bqat"]]
    cells += [TuneCell("s8bqat", "lam", lam, with_lam(base, lam), default_lr) for lam in S8BQAT_LAMS]
    return cells


@dataclass
class Choice:
    """What a search decided (or that it has not finished)."""

    value: float
    tuned: bool
    scores: dict[float, float | None]  # grid value -> dev WER (None = not run yet)


def choose(cells: Sequence[TuneCell], dev_wer: dict[str, float | None], knob: str, fam: str,
           default: float) -> Choice:
    """Lowest dev WER over the family's grid; the default until every point is scored."""
    pts = [c for c in cells if c.family == fam and c.knob == knob]
    scores = {c.value: dev_wer.get(c.key) for c in pts}
    if not pts or any(v is None for v in scores.values()):
        return Choice(default, False, scores)
    best = min(scores, key=lambda v: (scores[v], abs(v - default)))  # ties go to the default
    return Choice(best, True, scores)


def decisions(cells: Sequence[TuneCell], dev_wer: dict[str, float | None], default_lr: float) -> dict[str, Any]:
    """``{"lr": {family: Choice}, "lam": Choice}`` from the scored search cells."""
    fams = sorted({c.family for c in cells if c.knob == "lr"})
    return {"lr": {f: choose(cells, dev_wer, "lr", f, default_lr) for f in fams},
            "lam": choose(cells, dev_wer, "lam", "s8bqat", S8BQAT_DEFAULT_LAM)}


def markdown(cells: Sequence[TuneCell], dev_wer: dict[str, float | None], decided: dict[str, Any]) -> list[str]:
    """The search as a table: one line per family and knob, dev WER per grid point, the choice."""
    lines = ["| family | knob | dev WER % per value | chosen |", "|---|---|---|---|"]
    rows = [(f, "lr", ch) for f, ch in decided["lr"].items()] + [("s8bqat", "lam", decided["lam"])]
    for fam, knob, ch in rows:
        if not any(c.family == fam and c.knob == knob for c in cells):
            continue
        pts = ", ".join(f"{v:g}: " + ("-" if w is None else f"{100 * w:.2f}") for v, w in sorted(ch.scores.items()))
        chosen = f"{ch.value:g}" if ch.tuned else f"{ch.value:g} (default: search not finished)"
        lines.append(f"| {fam} | {knob} | {pts} | {chosen} |")
    return lines

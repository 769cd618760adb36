"""Default training recipes: what ``subbit train`` uses for options the user did not set.

Measured on the quick corpus (RESULTS.md section 2.2, small RNN-T, 10 CPU minutes): the old
defaults (BPE 128, batch 16, lr 2e-3, augmentation) stayed at 95% WER; character tokens,
shortest-first first epoch, batch 8, lr 3e-3 and no augmentation reached 37% / 72%. Many small
updates matter most in a short budget, and augmentation only pays off with many more steps
(it stopped learning inside 10 minutes), so it switches on only from ``AUGMENT_FROM_MINUTES``.
The Conformer gets the same recipe, and it does converge with it: at the same 1,500 steps it
beats the RNN-T on held-out voices (54.6% vs 71.2%, paired difference [-20.4, -12.8] points) and
ties it on seen voices (RESULTS.md A.4). Its step costs about 2.5x the RNN-T's on a CPU, so under
a *time* budget it sees fewer updates; that, not divergence, is why 8 minutes left it at 72.6%.
"""

from __future__ import annotations

from typing import Any

#: budgets (minutes) from which speed/noise/SpecAugment augmentation is on by default
AUGMENT_FROM_MINUTES = 120.0

_BASE: dict[str, Any] = {"tokenizer": "char", "batch_size": 8, "lr": 3e-3, "warmup_steps": 200,
                         "sortagrad_epochs": 1}
_BY_ARCH: dict[str, dict[str, Any]] = {"rnnt": {}, "conformer": {}, "bifocal": {}}


def default_recipe(arch: str, minutes: float | None = None, steps: int | None = None) -> dict[str, Any]:
    """TrainConfig values for ``arch`` and the budget; callers overlay what the user set."""
    if arch not in _BY_ARCH:
        raise ValueError(f"model: expected one of {sorted(_BY_ARCH)}, got {arch!r}")
    recipe = {**_BASE, **_BY_ARCH[arch]}
    long_run = (minutes is not None and minutes >= AUGMENT_FROM_MINUTES) or (steps is not None and steps >= 20_000)
    recipe["augment"] = bool(long_run)
    return recipe


def describe(arch: str, minutes: float | None = None, steps: int | None = None) -> str:
    r = default_recipe(arch, minutes, steps)
    return ", ".join(f"{k}={v}" for k, v in r.items())

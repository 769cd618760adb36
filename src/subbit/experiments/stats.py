"""Confidence intervals for WER: a paired bootstrap over utterances, and the lossless rule.

Why a bootstrap over utterances: a test set's WER is a ratio of sums (errors / reference words)
over utterances that differ in length and difficulty, so its sampling error is neither binomial
in words nor normal in small sets. Resampling whole utterances keeps each utterance's errors and
length together. *Paired*: two systems scored on the same utterances are resampled with the same
indices, so the interval of their difference reflects only where they disagree (much narrower
than two independent intervals).

Several fine-tuning seeds of one cell are pooled by averaging each utterance's error count over
the seeds before resampling: the interval then covers utterance sampling of the seed-averaged
system, which is what a mean-over-seeds WER claims.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: the paper's yardstick for "lossless": the WER increase is at most 2% relative or 0.2 absolute
LOSSLESS_RELATIVE = 0.02
LOSSLESS_ABSOLUTE = 0.002  # 0.2 WER points, as a fraction


@dataclass(frozen=True)
class Scored:
    """Per-utterance error counts (one row per seed) and reference word counts of one system."""

    errors: np.ndarray  # [seeds, utterances], float (counts)
    words: np.ndarray  # [utterances]

    @classmethod
    def from_seeds(cls, errors_per_seed: Sequence[Sequence[float]], words: Sequence[int]) -> Scored:
        e = np.asarray(errors_per_seed, dtype=np.float64)
        if e.ndim == 1:
            e = e[None]
        w = np.asarray(words, dtype=np.float64)
        if e.ndim != 2 or e.shape[1] != w.shape[0]:
            raise ValueError(f"errors {e.shape} do not match {w.shape[0]} utterances")
        if w.sum() <= 0:
            raise ValueError("no reference words: WER is undefined")
        if (e < 0).any() or (w < 0).any():
            raise ValueError("error and word counts must be >= 0")
        return cls(e, w)

    @property
    def mean_errors(self) -> np.ndarray:
        return self.errors.mean(axis=0)

    @property
    def wer(self) -> float:
        """Mean over seeds of each seed's corpus WER (equal to the WER of the mean errors)."""
        return float(self.mean_errors.sum() / self.words.sum())


def _indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def wer_ci(system: Scored, n_boot: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the (seed-averaged) corpus WER."""
    idx = _indices(system.words.shape[0], n_boot, seed)
    e, w = system.mean_errors, system.words
    stats = e[idx].sum(axis=1) / np.maximum(w[idx].sum(axis=1), 1e-12)
    lo, hi = np.quantile(stats, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def delta_ci(system: Scored, reference: Scored, n_boot: int = 2000, level: float = 0.95,
             seed: int = 0) -> tuple[float, float]:
    """Paired bootstrap interval of ``WER(system) - WER(reference)`` on the same utterances."""
    if system.words.shape != reference.words.shape or not np.array_equal(system.words, reference.words):
        raise ValueError("a paired comparison needs both systems scored on the same utterances")
    idx = _indices(system.words.shape[0], n_boot, seed)
    w = np.maximum(system.words[idx].sum(axis=1), 1e-12)
    d = (system.mean_errors[idx].sum(axis=1) - reference.mean_errors[idx].sum(axis=1)) / w
    lo, hi = np.quantile(d, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def lossless_margin(reference_wer: float) -> float:
    """The largest WER increase still called lossless: max(2% relative, 0.2 absolute)."""
    return max(LOSSLESS_RELATIVE * reference_wer, LOSSLESS_ABSOLUTE)


def is_lossless(delta_interval: tuple[float, float], reference_wer: float) -> bool:
    """Lossless when the *upper* bound of the WER increase is within the margin: the data must
    rule out a real loss, not merely fail to show one."""
    return bool(delta_interval[1] <= lossless_margin(reference_wer))


def significantly_different(delta_interval: tuple[float, float]) -> bool:
    """A difference is a finding only when its interval excludes zero."""
    lo, hi = delta_interval
    return bool(lo > 0 or hi < 0)

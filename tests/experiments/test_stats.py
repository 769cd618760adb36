"""Paired bootstrap intervals for WER and the lossless rule, against cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from subbit.experiments import stats


def test_bootstrap_matches_the_binomial_interval_for_one_word_utterances() -> None:
    # n one-word utterances, each wrong with p: WER is a sample mean of 0/1, whose 95% interval is
    # p +- 1.96 sqrt(p (1 - p) / n) (normal approximation; n p (1-p) = 160, so it is accurate)
    n, p = 1000, 0.2
    errors = np.zeros(n)
    errors[: int(n * p)] = 1
    sys = stats.Scored.from_seeds([errors], np.ones(n))
    lo, hi = stats.wer_ci(sys, n_boot=4000, seed=1)
    half = 1.96 * math.sqrt(p * (1 - p) / n)
    assert sys.wer == pytest.approx(p)
    assert lo == pytest.approx(p - half, abs=0.004) and hi == pytest.approx(p + half, abs=0.004)


def test_paired_difference_of_a_system_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(0)
    words = rng.integers(1, 12, size=300)
    errs = rng.binomial(words, 0.3)
    a = stats.Scored.from_seeds([errs], words)
    assert stats.delta_ci(a, a) == (0.0, 0.0)
    # one extra error on every utterance: in a resample the difference is 1 / (its mean length), so
    # the interval is positive and brackets 1 / (the whole set's mean length)
    b = stats.Scored.from_seeds([errs + 1], words)
    lo, hi = stats.delta_ci(b, a)
    assert 0 < lo <= 1 / words.mean() <= hi
    assert stats.significantly_different((lo, hi))


def test_seeds_are_pooled_per_utterance() -> None:
    words = [4, 4, 2]
    s = stats.Scored.from_seeds([[1, 0, 0], [3, 0, 2]], words)
    assert s.wer == pytest.approx((2 + 0 + 1) / 10)
    with pytest.raises(ValueError, match="match"):
        stats.Scored.from_seeds([[1, 0]], words)
    with pytest.raises(ValueError, match="no reference words"):
        stats.Scored.from_seeds([[0, 0]], [0, 0])
    ref = stats.Scored.from_seeds([[1, 0, 0]], [4, 4, 3])
    with pytest.raises(ValueError, match="same utterances"):
        stats.delta_ci(s, ref)


@pytest.mark.parametrize(
    ("interval", "ref_wer", "expected"),
    [
        ((-0.010, 0.0019), 0.05, True),  # 0.2 absolute beats 2% relative of 5% (0.1 points)
        ((-0.010, 0.0021), 0.05, False),
        ((-0.010, 0.0039), 0.20, True),  # 2% relative of 20% = 0.4 points
        ((-0.010, 0.0041), 0.20, False),
        ((0.0005, 0.0010), 0.30, True),  # a real but tiny loss is still within the margin
    ],
)
def test_lossless_rule_uses_the_upper_bound(interval, ref_wer, expected) -> None:
    assert stats.is_lossless(interval, ref_wer) is expected


def test_significance_needs_an_interval_that_excludes_zero() -> None:
    assert not stats.significantly_different((-0.01, 0.02))
    assert stats.significantly_different((-0.03, -0.01))
    assert stats.significantly_different((0.001, 0.02))

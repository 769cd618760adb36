"""JSON integers too large for a float: refused as a format error, never an OverflowError."""

from __future__ import annotations

import pytest

from subbit.export.manifest import SubbitFormatError, _mu
from subbit.runtime.frontend import frontend_from_manifest

HUGE = 10**400  # valid JSON, beyond float64


@pytest.mark.parametrize("mu", [HUGE, -HUGE, [5.0, HUGE]])
def test_a_mu_beyond_float_range_is_a_format_error(mu) -> None:
    with pytest.raises(SubbitFormatError, match="finite number"):
        _mu(mu, "quantized.w.mu", groups=2)
    _mu([5.0, 255], "quantized.w.mu", groups=2)  # ordinary values still pass


@pytest.mark.parametrize("key", ["mean", "std"])
def test_feature_statistics_beyond_float_range_are_a_format_error(key: str) -> None:
    n_mels = 40
    ok = {"kind": "logmel", "sample_rate": 16000, "n_fft": 400, "hop_length": 160, "n_mels": n_mels,
          "mean": [0.0] * n_mels, "std": [1.0] * n_mels}
    bad = {**ok, key: [1.0, HUGE] + [1.0] * (n_mels - 2)}
    with pytest.raises(SubbitFormatError, match=f"features.{key}"):
        frontend_from_manifest({"extra": {"features": bad}}, n_mels)
    assert frontend_from_manifest({"extra": {"features": ok}}, n_mels).n_mels == n_mels


@pytest.mark.parametrize("wake_end", [HUGE, float("inf"), True, "1.0"])
def test_a_wake_end_that_is_not_a_finite_number_is_a_value_error(wake_end) -> None:
    from subbit.runtime.bifocal import wake_frames

    with pytest.raises(ValueError, match="finite number of seconds"):
        wake_frames(wake_end)
    assert wake_frames(1.0) == (16000 - 400) // 160 + 1

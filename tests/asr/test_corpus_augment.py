"""Speaker perturbation and acoustic augmentation (subbit.asr.augment): each does what its name
says, measured on signals whose answer is known (tones, impulses)."""

from __future__ import annotations

import numpy as np
import pytest

from subbit.asr import augment as A

SR = 16000


def _tone(freq: float, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _peak_hz(x: np.ndarray) -> float:
    """Frequency of the strongest bin, refined by parabolic interpolation (Hann window)."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(np.argmax(spec[1:-1])) + 1
    a, b, c = np.log(spec[k - 1 : k + 2] + 1e-12)
    return (k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / x.size


def _core(x: np.ndarray) -> np.ndarray:  # away from the edges, where the STFT has ramps
    return x[x.size // 8 : -x.size // 8]


@pytest.mark.parametrize("semitones", [-3.0, 2.0, 5.0])
def test_pitch_shift_moves_the_frequency_and_keeps_the_length(semitones):
    x = _tone(220.0)
    y = A.pitch_shift(x, semitones)
    assert y.dtype == np.float32 and y.size == x.size
    want = 220.0 * 2 ** (semitones / 12)
    # the resampling ratio is limited to a denominator of 64: within 0.5% of the exact shift
    assert _peak_hz(_core(y)) == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("rate", [0.8, 1.25])
def test_time_stretch_changes_duration_not_pitch(rate):
    x = _tone(300.0)
    y = A.time_stretch(x, rate)
    assert y.size == round(x.size / rate)
    assert _peak_hz(_core(y)) == pytest.approx(300.0, rel=0.01)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_scales_low_frequencies_by_alpha(alpha):
    x = _tone(1000.0)
    y = A.vtlp(x, alpha, SR)
    assert y.size == x.size
    # below the knee the map is f * alpha; bins are 31.25 Hz apart and magnitudes interpolated
    assert _peak_hz(_core(y)) == pytest.approx(1000.0 * alpha, abs=20.0)


def test_vtlp_warp_is_monotone_onto_the_band():
    f = np.linspace(0, 8000, 257)
    for alpha in (0.8, 0.9, 1.1, 1.2):
        g = A.vtlp_warp(f, alpha, 8000.0)
        assert g[0] == 0 and g[-1] == pytest.approx(8000.0) and np.all(np.diff(g) > 0)


def test_simulated_rir_has_the_drawn_rt60():
    rng = np.random.default_rng(0)
    rir = A.simulated_rir(rng, SR, rt60=(0.5, 0.5), drr_db=(6.0, 6.0))
    assert rir[0] == 1.0
    tail = rir[1:].astype(np.float64)
    assert np.sum(tail**2) == pytest.approx(10 ** (-6 / 10), rel=1e-3)  # DRR 6 dB
    # Schroeder backward integration: the -5..-25 dB slope, extrapolated to -60 dB
    edc = 10 * np.log10(np.cumsum(tail[::-1] ** 2)[::-1] / np.sum(tail**2))
    i5, i25 = np.argmax(edc < -5), np.argmax(edc < -25)
    rt = 3 * (i25 - i5) / SR
    assert rt == pytest.approx(0.5, rel=0.15)


def test_reverberation_keeps_length_and_level_and_smears_an_impulse():
    x = np.zeros(SR, np.float32)
    x[1000] = 1.0
    rir = A.simulated_rir(np.random.default_rng(1), SR, rt60=(0.3, 0.3))
    y = A.reverberate(x, rir)
    assert y.size == x.size
    assert np.sqrt(np.mean(y.astype(np.float64) ** 2)) == pytest.approx(np.sqrt(np.mean(x**2.0)), rel=1e-5)
    assert np.count_nonzero(np.abs(y[1000 : 1000 + int(0.3 * SR)]) > 1e-4) > 0.3 * 0.3 * SR  # a tail


def test_telephone_passes_the_voice_band_only():
    keep = A.telephone(_tone(1000.0), SR, mu_law=False)
    assert keep.size == SR
    rms = lambda z: float(np.sqrt(np.mean(_core(z).astype(np.float64) ** 2)))  # noqa: E731
    assert rms(keep) == pytest.approx(rms(_tone(1000.0)), rel=0.1)
    assert rms(A.telephone(_tone(100.0), SR, mu_law=False)) < 0.1 * rms(_tone(100.0))
    assert rms(A.telephone(_tone(5000.0), SR, mu_law=False)) < 0.01 * rms(_tone(5000.0))
    coded = A.telephone(_tone(1000.0), SR, mu_law=True)  # 8-bit mu-law: close, not equal
    err = rms(coded - keep) / rms(keep)
    assert 0 < err < 0.05


def test_defaults_replay_the_old_speed_and_noise_draws():
    """New steps draw random numbers only when switched on: old runs replay exactly."""
    x = _tone(440.0, 0.5)
    new = A.WaveAugment(kinds=("white", "pink"))(x, np.random.default_rng(7))
    rng = np.random.default_rng(7)
    old = A.speed_perturb(x, float(rng.choice(A.SPEEDS)))
    if rng.random() < 0.7:
        ref = A.WaveAugment(kinds=("white", "pink"))
        kind = ref.kinds[int(rng.integers(2))]
        noise = ref._segment(kind, old.size, rng)
        old = A.add_noise(old, noise, float(rng.uniform(5.0, 40.0)))
    np.testing.assert_array_equal(new, old)


def test_every_step_on_is_finite_and_seeded():
    x = _tone(300.0, 0.7) + _tone(1200.0, 0.7, 0.2)
    aug = A.WaveAugment(kinds=("pink",), pitch_prob=1.0, vtlp_prob=1.0, reverb_prob=1.0, telephone_prob=1.0)
    a, b = aug(x, np.random.default_rng(3)), aug(x, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and np.all(np.isfinite(a)) and a.size > 0
    with pytest.raises(ValueError, match="reverb_prob"):
        A.WaveAugment(reverb_prob=2.0)
    with pytest.raises(ValueError, match="semitones"):
        A.pitch_shift(x, 20.0)
    with pytest.raises(ValueError, match="alpha"):
        A.vtlp(x, 1.5)

"""Training-time augmentation: speed perturbation, additive noise, SpecAugment.

Everything takes an explicit random generator (numpy ``Generator`` for waveforms, ``torch.Generator``
for SpecAugment), so a run is reproducible from its seed and independent of worker scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
from scipy.fft import next_fast_len
from scipy.signal import resample_poly
from torch import nn

SPEEDS = (0.9, 1.0, 1.1)
NOISE_KINDS = ("white", "pink", "babble")
NOISE_BANK_SAMPLES = 1 << 19  # ~33 s at 16 kHz
NOISE_BANK_SEED = 1234


def speed_perturb(audio: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (pitch moves too, as in Kaldi-style speed perturbation)."""
    if not 0.5 <= factor <= 2.0:
        raise ValueError(f"speed factor must be in [0.5, 2], got {factor}")
    if factor == 1.0:
        return audio.astype(np.float32, copy=False)
    frac = Fraction(1 / factor).limit_denominator(100)
    return resample_poly(audio, frac.numerator, frac.denominator).astype(np.float32)


def white_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n, dtype=np.float32)


def pink_noise(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f power noise by shaping white noise in the frequency domain."""
    if n == 0:
        return np.zeros(0, np.float32)
    m = next_fast_len(n, real=True)  # FFT of an awkward (e.g. prime) length is very slow
    spec = np.fft.rfft(rng.standard_normal(m))
    f = np.arange(spec.size, dtype=np.float64)
    f[0] = 1.0
    out = np.fft.irfft(spec / np.sqrt(f), m)[:n]
    return (out / (out.std() + 1e-12)).astype(np.float32)


def make_babble(sources: Sequence[np.ndarray], n: int, rng: np.random.Generator, talkers: int = 4) -> np.ndarray:
    """Sum of ``talkers`` random speech segments (looped to length ``n``): babble-like noise."""
    if not sources:
        raise ValueError("make_babble needs at least one source recording")
    out = np.zeros(n, np.float32)
    for _ in range(talkers):
        src = sources[int(rng.integers(len(sources)))]
        if src.size == 0:
            continue
        reps = int(np.ceil((n + src.size) / src.size))
        tiled = np.tile(src, reps)
        start = int(rng.integers(src.size))
        seg = tiled[start : start + n]
        out += seg / (seg.std() + 1e-8)
    return out


def add_noise(audio: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """Mix ``noise`` (same length) into ``audio`` at the given signal-to-noise ratio."""
    if noise.shape != audio.shape:
        raise ValueError(f"noise shape {noise.shape} != audio shape {audio.shape}")
    p_sig = float(np.mean(audio.astype(np.float64) ** 2))
    p_noise = float(np.mean(noise.astype(np.float64) ** 2))
    if p_sig == 0.0 or p_noise == 0.0:
        return audio.astype(np.float32, copy=False)
    gain = np.sqrt(p_sig / (p_noise * 10 ** (snr_db / 10)))
    return (audio + gain * noise).astype(np.float32)


class WaveAugment:
    """Speed perturbation then additive noise at a random SNR, per utterance."""

    def __init__(self, speeds: Sequence[float] = SPEEDS, snr_db: tuple[float, float] = (5.0, 40.0),
                 noise_prob: float = 0.7, kinds: Sequence[str] = NOISE_KINDS,
                 babble_sources: Sequence[np.ndarray] = ()) -> None:
        bad = [k for k in kinds if k not in NOISE_KINDS]
        if bad:
            raise ValueError(f"unknown noise kind(s) {bad} (choose from {NOISE_KINDS})")
        self.speeds, self.snr_db, self.noise_prob = tuple(speeds), snr_db, noise_prob
        self.babble_sources = list(babble_sources)
        self.kinds = [k for k in kinds if k != "babble" or self.babble_sources]
        self._banks: dict[str, np.ndarray] = {}

    def _segment(self, kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """A random stretch of a fixed, seeded noise recording (generating fresh noise per
        utterance costs more than the rest of the pipeline)."""
        bank = self._banks.get(kind)
        if bank is None:
            gen = np.random.default_rng(NOISE_BANK_SEED)
            bank = white_noise(NOISE_BANK_SAMPLES, gen) if kind == "white" else pink_noise(NOISE_BANK_SAMPLES, gen)
            self._banks[kind] = bank
        start = int(rng.integers(bank.size))
        return np.take(bank, np.arange(start, start + n), mode="wrap")

    def __call__(self, audio: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        audio = speed_perturb(audio, float(rng.choice(self.speeds)))
        if self.kinds and rng.random() < self.noise_prob:
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            n = audio.size
            if kind in ("white", "pink"):
                noise = self._segment(kind, n, rng)
            else:
                noise = make_babble(self.babble_sources, n, rng)
            audio = add_noise(audio, noise, float(rng.uniform(*self.snr_db)))
        return audio


class SpecAugment(nn.Module):
    """Frequency and time masks on ``[B, T, F]`` features; identity in eval mode.

    Time-mask width is capped at ``max_time_ratio`` of each utterance's own length, so short
    utterances are not wiped out. Masked values are set to ``fill`` (0 = the global mean after
    normalisation).
    """

    def __init__(self, freq_masks: int = 2, freq_width: int = 15, time_masks: int = 2, time_width: int = 40,
                 max_time_ratio: float = 0.1, fill: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.freq_masks, self.freq_width = freq_masks, freq_width
        self.time_masks, self.time_width, self.max_time_ratio = time_masks, time_width, max_time_ratio
        self.fill = fill
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
        if not self.training:
            return feats
        g = generator if generator is not None else self.generator
        b, t, f = feats.shape
        if lengths is None:
            lengths = torch.full((b,), t, dtype=torch.int64)
        out = feats.clone()
        for i in range(b):
            ti = int(lengths[i])
            for _ in range(self.freq_masks):
                w = int(torch.randint(0, self.freq_width + 1, (1,), generator=g))
                if 0 < w < f:
                    f0 = int(torch.randint(0, f - w + 1, (1,), generator=g))
                    out[i, :ti, f0 : f0 + w] = self.fill
            cap = min(self.time_width, int(self.max_time_ratio * ti))
            for _ in range(self.time_masks):
                w = int(torch.randint(0, cap + 1, (1,), generator=g)) if cap > 0 else 0
                if 0 < w < ti:
                    t0 = int(torch.randint(0, ti - w + 1, (1,), generator=g))
                    out[i, t0 : t0 + w, :] = self.fill
        return out

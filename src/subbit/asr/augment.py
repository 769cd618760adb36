"""Training-time augmentation: speaker perturbation (speed, pitch, vocal-tract-length warping),
acoustics (simulated room reverberation, additive noise at a random SNR, telephone band),
SpecAugment.

Why each: the corpus is synthetic, from a few dozen voices. Speed, pitch and VTLP move a voice's
tempo, fundamental and formants (new "speakers"); reverberation, noise and the telephone band
move the channel, which a synthesiser never varies. All waveform functions keep float32 mono at
the input's rate, and all but speed keep the length.

Everything takes an explicit random generator (numpy ``Generator`` for waveforms, ``torch.Generator``
for SpecAugment), so a run is reproducible from its seed and independent of worker scheduling.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import torch
from scipy.fft import next_fast_len
from scipy.signal import butter, fftconvolve, istft, resample_poly, sosfilt, stft
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


def _fit_length(audio: np.ndarray, n: int) -> np.ndarray:
    out = audio[:n] if audio.size >= n else np.pad(audio, (0, n - audio.size))
    return out.astype(np.float32, copy=False)


_N_FFT, _HOP = 512, 128  # 32 ms windows, 8 ms hop at 16 kHz


def _stft(audio: np.ndarray) -> np.ndarray:
    return stft(audio, nperseg=_N_FFT, noverlap=_N_FFT - _HOP, window="hann", boundary="zeros", padded=True)[2]


def _istft(spec: np.ndarray, n: int) -> np.ndarray:
    return _fit_length(istft(spec, nperseg=_N_FFT, noverlap=_N_FFT - _HOP, window="hann")[1], n)


def time_stretch(audio: np.ndarray, rate: float) -> np.ndarray:
    """Phase-vocoder time stretch: ``rate`` > 1 is faster (shorter), pitch unchanged."""
    if not 0.25 <= rate <= 4.0:
        raise ValueError(f"time-stretch rate must be in [0.25, 4], got {rate}")
    if audio.size == 0 or rate == 1.0:
        return audio.astype(np.float32, copy=False)
    spec = _stft(audio.astype(np.float64))
    steps = np.arange(0.0, spec.shape[1] - 1, rate)
    omega = 2 * np.pi * _HOP * np.arange(spec.shape[0]) / _N_FFT  # expected phase advance per hop
    phase = np.angle(spec[:, 0])
    out = np.empty((spec.shape[0], steps.size), np.complex128)
    for i, t in enumerate(steps):
        k = int(t)
        frac = t - k
        mag = (1 - frac) * np.abs(spec[:, k]) + frac * np.abs(spec[:, k + 1])
        out[:, i] = mag * np.exp(1j * phase)
        dphi = np.angle(spec[:, k + 1]) - np.angle(spec[:, k]) - omega
        phase = phase + omega + (dphi - 2 * np.pi * np.round(dphi / (2 * np.pi)))
    return _istft(out, int(round(audio.size / rate)))


def pitch_shift(audio: np.ndarray, semitones: float) -> np.ndarray:
    """Shift the pitch (and formants) by ``semitones`` at the same duration: stretch, then resample."""
    if not -12.0 <= semitones <= 12.0:
        raise ValueError(f"pitch shift must be within +-12 semitones, got {semitones}")
    if semitones == 0 or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    ratio = 2.0 ** (semitones / 12.0)
    frac = Fraction(ratio).limit_denominator(64)  # resample by frac: pitch x frac, length / frac
    longer = time_stretch(audio, float(frac.denominator / frac.numerator))
    return _fit_length(resample_poly(longer, frac.denominator, frac.numerator), audio.size)


def vtlp_warp(freqs: np.ndarray, alpha: float, nyquist: float, f_hi: float = 4800.0) -> np.ndarray:
    """Piecewise-linear VTLP frequency map (Jaitly & Hinton 2013): ``f * alpha`` up to a knee,
    then a straight line to the Nyquist frequency, so the map is monotone onto [0, nyquist]."""
    knee = f_hi * min(alpha, 1.0) / alpha
    hi = nyquist - (nyquist - f_hi * min(alpha, 1.0)) / (nyquist - knee) * (nyquist - freqs)
    return np.where(freqs <= knee, freqs * alpha, hi)


def vtlp(audio: np.ndarray, alpha: float, sample_rate: int = 16000) -> np.ndarray:
    """Vocal-tract-length perturbation: move the spectral envelope by ``alpha`` (0.8-1.2), same length.

    The magnitude at output frequency ``g`` is the input's at ``warp^-1(g)`` (interpolated
    between bins); the phase advances at the warped instantaneous frequency of the nearest
    source bin (as in a phase vocoder), so a partial really moves to its warped frequency.
    """
    if not 0.8 <= alpha <= 1.2:
        raise ValueError(f"VTLP alpha must be in [0.8, 1.2], got {alpha}")
    if alpha == 1.0 or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    spec = _stft(audio.astype(np.float64))
    freqs = np.linspace(0, sample_rate / 2, spec.shape[0])
    src = np.interp(freqs, vtlp_warp(freqs, alpha, sample_rate / 2), freqs)  # inverse map
    pos = src / freqs[1]
    lo = np.clip(np.floor(pos).astype(int), 0, spec.shape[0] - 1)
    hi = np.clip(lo + 1, 0, spec.shape[0] - 1)
    w = (pos - lo)[:, None]
    mag = (1 - w) * np.abs(spec[lo]) + w * np.abs(spec[hi])
    near = np.clip(np.round(pos).astype(int), 0, spec.shape[0] - 1)
    ang = np.angle(spec)
    omega = 2 * np.pi * _HOP * np.arange(spec.shape[0]) / _N_FFT  # bin-centre phase advance per hop
    dphi = np.diff(ang, axis=1) - omega[:, None]
    inst = omega[:, None] + (dphi - 2 * np.pi * np.round(dphi / (2 * np.pi)))  # rad per hop
    hz_per = sample_rate / (2 * np.pi * _HOP)
    warped = vtlp_warp(np.clip(inst[near] * hz_per, 0, sample_rate / 2), alpha, sample_rate / 2) / hz_per
    phase = np.concatenate([ang[near, :1], ang[near, :1] + np.cumsum(warped, axis=1)], axis=1)
    return _istft(mag * np.exp(1j * phase), audio.size)


def simulated_rir(rng: np.random.Generator, sample_rate: int = 16000, rt60: tuple[float, float] = (0.2, 0.8),
                  drr_db: tuple[float, float] = (0.0, 12.0)) -> np.ndarray:
    """A room impulse response: a direct-path impulse plus an exponentially decaying Gaussian
    tail (Polack's statistical model) with a random RT60 and direct-to-reverberant ratio."""
    rt = float(rng.uniform(*rt60))
    if not 0.05 <= rt <= 2.0:
        raise ValueError(f"RT60 must be in [0.05, 2] s, got {rt}")
    n = int(rt * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-3 * np.log(10) * t / rt)  # -60 dB at t = rt
    tail[0] = 0.0
    pre = int(rng.integers(int(0.002 * sample_rate), int(0.01 * sample_rate)))  # first reflections' delay
    tail = np.concatenate([np.zeros(pre), tail])[:n]
    drr = 10 ** (float(rng.uniform(*drr_db)) / 10)
    tail *= np.sqrt(1.0 / (drr * max(float(np.sum(tail**2)), 1e-12)))
    tail[0] = 1.0  # direct path (energy 1; tail energy 1 / DRR)
    return tail.astype(np.float32)


def reverberate(audio: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve with ``rir`` (aligned on its direct path at sample 0), same length and RMS."""
    if audio.size == 0:
        return audio.astype(np.float32, copy=False)
    wet = fftconvolve(audio.astype(np.float64), rir.astype(np.float64))[: audio.size]
    rms_in, rms_out = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2))), float(np.sqrt(np.mean(wet**2)))
    if rms_out > 0:
        wet *= rms_in / rms_out
    return wet.astype(np.float32)


def telephone(audio: np.ndarray, sample_rate: int = 16000, band: tuple[float, float] = (300.0, 3400.0),
              mu_law: bool = True) -> np.ndarray:
    """Narrowband telephone channel: 8 kHz, a 300-3400 Hz band-pass and (optionally) 8-bit
    G.711 mu-law coding, back at ``sample_rate`` with the same length."""
    if audio.size == 0:
        return audio.astype(np.float32, copy=False)
    g = np.gcd(int(sample_rate), 8000)
    narrow = resample_poly(audio.astype(np.float64), 8000 // g, int(sample_rate) // g)
    sos = butter(4, band, btype="bandpass", fs=8000, output="sos")
    narrow = sosfilt(sos, narrow)
    if mu_law:
        peak = float(np.max(np.abs(narrow))) or 1.0
        x = np.clip(narrow / peak, -1.0, 1.0)
        code = np.round(np.sign(x) * np.log1p(255 * np.abs(x)) / np.log(256) * 127)  # 8 bits
        y = code / 127
        narrow = np.sign(y) * np.expm1(np.abs(y) * np.log(256)) / 255 * peak
    return _fit_length(resample_poly(narrow, int(sample_rate) // g, 8000 // g), audio.size)


class WaveAugment:
    """Per utterance: speed, then (each with its own probability, off by default) pitch shift,
    VTLP, room reverberation, additive noise at a random SNR, and the telephone band last (a
    channel after the room and the noise). With the new probabilities at 0 the random draws,
    and so the output, are those of the speed + noise augmenter this class used to be."""

    def __init__(self, speeds: Sequence[float] = SPEEDS, snr_db: tuple[float, float] = (5.0, 40.0),
                 noise_prob: float = 0.7, kinds: Sequence[str] = NOISE_KINDS,
                 babble_sources: Sequence[np.ndarray] = (), pitch_prob: float = 0.0,
                 pitch_semitones: tuple[float, float] = (-2.0, 2.0), vtlp_prob: float = 0.0,
                 vtlp_alpha: tuple[float, float] = (0.9, 1.1), reverb_prob: float = 0.0,
                 rt60: tuple[float, float] = (0.2, 0.8), telephone_prob: float = 0.0,
                 sample_rate: int = 16000) -> None:
        bad = [k for k in kinds if k not in NOISE_KINDS]
        if bad:
            raise ValueError(f"unknown noise kind(s) {bad} (choose from {NOISE_KINDS})")
        for name, p in (("noise_prob", noise_prob), ("pitch_prob", pitch_prob), ("vtlp_prob", vtlp_prob),
                        ("reverb_prob", reverb_prob), ("telephone_prob", telephone_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.speeds, self.snr_db, self.noise_prob = tuple(speeds), snr_db, noise_prob
        self.babble_sources = list(babble_sources)
        self.kinds = [k for k in kinds if k != "babble" or self.babble_sources]
        self.pitch_prob, self.pitch_semitones = pitch_prob, pitch_semitones
        self.vtlp_prob, self.vtlp_alpha = vtlp_prob, vtlp_alpha
        self.reverb_prob, self.rt60 = reverb_prob, rt60
        self.telephone_prob, self.sample_rate = telephone_prob, sample_rate
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
        # each optional step draws only when switched on, so old configurations replay exactly
        if self.pitch_prob and rng.random() < self.pitch_prob:
            audio = pitch_shift(audio, float(rng.uniform(*self.pitch_semitones)))
        if self.vtlp_prob and rng.random() < self.vtlp_prob:
            audio = vtlp(audio, float(rng.uniform(*self.vtlp_alpha)), self.sample_rate)
        if self.reverb_prob and rng.random() < self.reverb_prob:
            audio = reverberate(audio, simulated_rir(rng, self.sample_rate, self.rt60))
        if self.kinds and rng.random() < self.noise_prob:
            kind = self.kinds[int(rng.integers(len(self.kinds)))]
            n = audio.size
            if kind in ("white", "pink"):
                noise = self._segment(kind, n, rng)
            else:
                noise = make_babble(self.babble_sources, n, rng)
            audio = add_noise(audio, noise, float(rng.uniform(*self.snr_db)))
        if self.telephone_prob and rng.random() < self.telephone_prob:
            audio = telephone(audio, self.sample_rate)
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


#: effects the corpus builder can bake into a share of the training audio (``--augment``); all
#: keep the length, so a wake word's end time stays exact
CORPUS_EFFECTS = ("pitch", "vtlp", "reverb", "noise", "telephone")


def apply_effect(name: str, audio: np.ndarray, rng: np.random.Generator, sample_rate: int = 16000) -> np.ndarray:
    """One named effect with the same random ranges as :class:`WaveAugment`'s defaults
    (pitch +-2 semitones, VTLP 0.9-1.1, RT60 0.2-0.8 s, white or pink noise at 5-40 dB SNR)."""
    if name == "pitch":
        return pitch_shift(audio, float(rng.uniform(-2.0, 2.0)))
    if name == "vtlp":
        return vtlp(audio, float(rng.uniform(0.9, 1.1)), sample_rate)
    if name == "reverb":
        return reverberate(audio, simulated_rir(rng, sample_rate))
    if name == "noise":
        gen = white_noise if rng.random() < 0.5 else pink_noise
        return add_noise(audio, gen(audio.size, rng), float(rng.uniform(5.0, 40.0)))
    if name == "telephone":
        return telephone(audio, sample_rate)
    raise ValueError(f"unknown effect {name!r} (choose from {', '.join(CORPUS_EFFECTS)})")

"""Log-mel front end shared by training, evaluation and the streaming runtime.

``torch.stft`` with ``center=False``: frame ``t`` covers samples ``[t*hop, t*hop + n_fft)``, so
features never depend on future padding, and computing them chunk by chunk (keeping the
``n_fft - hop`` sample overlap, see :class:`StreamingLogMel`) gives exactly the offline result.

Mel filterbank: HTK mel scale (``mel = 2595 log10(1 + f/700)``), triangles between ``f_min``
and ``f_max`` (default 0 .. sample_rate/2) on the linear FFT-bin axis, peak 1, no area
normalisation. Output is ``log(mel_power + 1e-6)``. An optional fixed global mean/std (from
the train set, :func:`compute_stats`) is stored as buffers and applied inside ``forward``, so
it travels with the model and needs no look-ahead.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

LOG_EPS = 1e-6


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (m / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0, f_max: float | None = None) -> torch.Tensor:
    """HTK-style triangular filters, shape ``[n_fft//2 + 1, n_mels]`` (float32)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {f_min}, {f_max}")
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    mels = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    f = freqs[:, None]
    up = (f - lo) / (mid - lo)
    down = (hi - f) / (hi - mid)
    return torch.clamp(torch.minimum(up, down), min=0.0).to(torch.float32)


def num_frames(n_samples: torch.Tensor | int, n_fft: int, hop_length: int) -> torch.Tensor:
    """Frames produced from ``n_samples`` with center=False (0 when shorter than one window)."""
    n = torch.as_tensor(n_samples, dtype=torch.int64)
    return torch.where(n >= n_fft, (n - n_fft) // hop_length + 1, torch.zeros_like(n))


def frames_needed(n_frames: int, n_fft: int = 400, hop_length: int = 160) -> int:
    """Samples needed to produce ``n_frames`` frames (the inverse of :func:`num_frames`)."""
    return 0 if n_frames <= 0 else n_fft + (n_frames - 1) * hop_length


class LogMel(nn.Module):
    """``(wave [B,S], lengths [B]) -> (feats [B,T,n_mels], frame_lengths [B])``."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float | None = None) -> None:
        super().__init__()
        if hop_length < 1 or hop_length > n_fft:
            raise ValueError(f"hop_length must be in [1, n_fft], got {hop_length}")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        self.register_buffer("fbank", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max), persistent=False)
        # global normalisation (identity until set_stats is called); saved in the state dict
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Fix the global feature mean/std (from the train set); applied in every forward."""
        if mean.shape != (self.n_mels,) or std.shape != (self.n_mels,):
            raise ValueError(f"stats must have shape ({self.n_mels},)")
        self.mean.copy_(mean)
        self.std.copy_(std.clamp_min(1e-5))

    def raw(self, wave: torch.Tensor) -> torch.Tensor:
        """Un-normalised log-mel of every full window in ``wave`` [B,S] -> [B,T,n_mels]."""
        if wave.dim() != 2:
            raise ValueError(f"wave must be [B, S], got shape {tuple(wave.shape)}")
        b, s = wave.shape
        if s < self.n_fft:
            return wave.new_zeros(b, 0, self.n_mels)
        spec = torch.stft(wave.float(), self.n_fft, self.hop_length, window=self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [B, F, T]
        mel = torch.matmul(power.transpose(1, 2), self.fbank)
        return torch.log(mel + LOG_EPS)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.mean) / self.std

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[-1], dtype=torch.int64)
        frame_lengths = num_frames(lengths.to("cpu"), self.n_fft, self.hop_length).to(wave.device)
        feats = self.normalize(self.raw(wave))
        t = feats.shape[1]
        mask = torch.arange(t, device=wave.device)[None, :] < frame_lengths[:, None]
        return feats * mask[..., None], frame_lengths

    def streaming(self) -> StreamingLogMel:
        return StreamingLogMel(self)


class StreamingLogMel:
    """Chunk-by-chunk features equal to the offline ones (single stream).

    Keeps the ``< n_fft`` unconsumed tail of the signal between calls; ``push`` returns the new
    frames ``[T_new, n_mels]`` (possibly none). The concatenation of all pushes equals
    ``LogMel(wave)`` for the whole signal.
    """

    def __init__(self, frontend: LogMel) -> None:
        self.frontend = frontend
        self.reset()

    def reset(self) -> None:
        self._buf = torch.zeros(0)
        self.frames_out = 0

    @torch.no_grad()
    def push(self, chunk: torch.Tensor) -> torch.Tensor:
        fe = self.frontend
        buf = torch.cat([self._buf, chunk.reshape(-1).float().cpu()])
        n = int(num_frames(buf.numel(), fe.n_fft, fe.hop_length))
        if n == 0:
            self._buf = buf
            return torch.zeros(0, fe.n_mels)
        used = frames_needed(n, fe.n_fft, fe.hop_length)
        feats = fe.normalize(fe.raw(buf[None, :used].to(fe.window.device)))[0]
        self._buf = buf[n * fe.hop_length :]
        self.frames_out += n
        return feats


@torch.no_grad()
def compute_stats(feats: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Global per-bin mean and std over frames ``[T, F]`` (float64 accumulation)."""
    total, sq, count = None, None, 0
    for f in feats:
        f = f.reshape(-1, f.shape[-1]).double()
        if total is None:
            total, sq = torch.zeros(f.shape[1], dtype=torch.float64), torch.zeros(f.shape[1], dtype=torch.float64)
        total += f.sum(0)
        sq += f.square().sum(0)
        count += f.shape[0]
    if total is None or count == 0:
        raise ValueError("compute_stats: no frames")
    mean = total / count
    var = (sq / count - mean.square()).clamp_min(0)
    if not math.isfinite(float(var.sum())):
        raise ValueError("compute_stats: non-finite features")
    return mean.float(), var.sqrt().float().clamp_min(1e-5)

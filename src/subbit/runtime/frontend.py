"""NumPy log-mel frontend for streaming: the same numbers as :class:`subbit.asr.features.LogMel`.

The runtime must not pull torch into the process (it would dominate resident memory), so the
STFT + mel filterbank is re-done here with ``numpy.fft.rfft``. Framing is ``center=False``:
frame ``i`` covers samples ``[i * hop, i * hop + n_fft)``, so feeding audio in pieces gives the
same frames as one call on the whole signal; samples not yet covered by a full frame wait in
a buffer. tests/runtime/test_session.py checks parity with the torch frontend.
"""

from __future__ import annotations

import numpy as np

from subbit.export.manifest import SubbitFormatError


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> np.ndarray:
    """``[n_fft // 2 + 1, n_mels]`` triangular HTK filters (peak 1), float32."""
    f_max = sample_rate / 2 if f_max is None else f_max
    freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, ctr, hi = pts[:-2], pts[1:-1], pts[2:]
    up = (freqs[:, None] - lo[None]) / (ctr - lo)[None]
    down = (hi[None] - freqs[:, None]) / (hi - ctr)[None]
    return np.maximum(0.0, np.minimum(up, down)).astype(np.float32)


class StreamingLogMel:
    """Audio pieces in, complete log-mel frames ``[t, n_mels]`` out."""

    def __init__(self, sample_rate: int = 16000, n_fft: int = 400, hop_length: int = 160,
                 n_mels: int = 80, log_offset: float = 1e-6, fbank: np.ndarray | None = None,
                 window: np.ndarray | None = None, mean: np.ndarray | None = None,
                 std: np.ndarray | None = None) -> None:
        if hop_length < 1 or n_fft < hop_length:
            raise ValueError(f"need 1 <= hop_length <= n_fft, got hop_length={hop_length}, n_fft={n_fft}")
        self.sample_rate, self.n_fft, self.hop, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.log_offset = np.float32(log_offset)
        if window is None:  # periodic Hann, as torch.hann_window
            window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
        self.window = np.asarray(window, dtype=np.float32)
        self.fbank = mel_filterbank(sample_rate, n_fft, n_mels) if fbank is None else np.asarray(fbank, np.float32)
        if self.fbank.shape != (n_fft // 2 + 1, n_mels):
            raise ValueError(f"fbank must be [{n_fft // 2 + 1}, {n_mels}], got {self.fbank.shape}")
        # fixed global normalisation (LogMel.set_stats); identity when absent
        self.mean = None if mean is None else np.asarray(mean, np.float32).reshape(n_mels)
        self.std = None if std is None else np.maximum(np.asarray(std, np.float32).reshape(n_mels), 1e-5)
        self.reset()

    def reset(self) -> None:
        self.buf = np.zeros(0, dtype=np.float32)

    def _sparse_bank(self) -> tuple[np.ndarray, np.ndarray]:
        """Each filter's nonzero FFT bins as a padded ``[n_mels, width]`` index and weight table."""
        nz = [np.flatnonzero(self.fbank[:, m]) for m in range(self.n_mels)]
        width = max(1, max(len(k) for k in nz))
        idx = np.zeros((self.n_mels, width), np.intp)
        wts = np.zeros((self.n_mels, width), np.float32)  # padding: weight 0 on bin 0 adds +0.0
        for m, k in enumerate(nz):
            idx[m, : len(k)] = k
            wts[m, : len(k)] = self.fbank[k, m]
        return idx, wts

    def _mel(self, power: np.ndarray) -> np.ndarray:
        """``power @ fbank`` summed in a fixed order with elementwise IEEE float32 ops.

        A BLAS matmul picks its kernel (and so its summation order) by the number of rows, so
        one frame computed alone and the same frame computed among many could differ in the
        last bit. Here frame ``t``'s energies are a fixed sequence of correctly rounded
        multiplies and adds over that frame only: the same bits whatever the chunking, on
        every CPU. The filters are triangles a few bins wide, so this is also cheaper.
        """
        if not hasattr(self, "_bank"):
            self._bank = self._sparse_bank()
        idx, wts = self._bank
        terms = power[:, idx] * wts  # [t, n_mels, width]
        acc = terms[:, :, 0].copy()
        for j in range(1, terms.shape[2]):
            acc += terms[:, :, j]
        return acc

    def frames(self, wave: np.ndarray) -> np.ndarray:
        """Log-mel of a whole signal (no state)."""
        n = 0 if wave.shape[0] < self.n_fft else 1 + (wave.shape[0] - self.n_fft) // self.hop
        if n == 0:
            return np.zeros((0, self.n_mels), np.float32)
        idx = np.arange(self.n_fft)[None, :] + self.hop * np.arange(n)[:, None]
        spec = np.fft.rfft(wave[idx] * self.window, axis=1)
        power = (spec.real * spec.real + spec.imag * spec.imag).astype(np.float32)
        feats = np.log(self._mel(power) + self.log_offset).astype(np.float32)
        if self.mean is not None:
            feats = feats - self.mean
        if self.std is not None:
            feats = feats / self.std
        return feats

    def accept(self, samples: np.ndarray) -> np.ndarray:
        """Append samples; return every frame they complete."""
        self.buf = np.concatenate([self.buf, np.asarray(samples, dtype=np.float32)])
        out = self.frames(self.buf)
        self.buf = self.buf[out.shape[0] * self.hop :]
        return out


#: ranges of the log-mel settings in ``extra.features`` (docs/format.md, "Runtime limits"):
#: n_fft drives the window and filterbank allocations, so it is checked before either exists
FEATURE_LIMITS: dict[str, tuple[int, int]] = {
    "sample_rate": (1000, 192000), "n_fft": (16, 8192), "hop_length": (1, 8192), "n_mels": (1, 512),
}  # fmt: skip
#: most frames one sample may fall in (n_fft / hop_length); real front ends use 2-4
MAX_OVERLAP = 16


def _features_error(msg: str) -> ValueError:
    return SubbitFormatError(msg)


def _feature_int(feats: dict, key: str) -> int:
    if key not in feats:
        raise _features_error(f"manifest extra.features: no field {key!r}")
    v = feats[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise _features_error(f"manifest extra.features.{key}: must be an integer, got {v!r:.40}")
    lo, hi = FEATURE_LIMITS[key]
    if not lo <= int(v) <= hi:
        raise _features_error(f"manifest extra.features.{key}: {int(v)} outside [{lo}, {hi}]")
    return int(v)


def _feature_vector(feats: dict, key: str, n_mels: int, positive: bool) -> np.ndarray | None:
    v = feats.get(key)
    if v is None:
        return None
    if not isinstance(v, list) or len(v) != n_mels:
        got = f"{len(v)} values" if isinstance(v, list) else type(v).__name__
        raise _features_error(f"manifest extra.features.{key}: expected a list of n_mels={n_mels} numbers, got {got}")
    if any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in v):
        raise _features_error(f"manifest extra.features.{key}: every value must be a number")
    try:
        arr = np.asarray(v, dtype=np.float64)
    except OverflowError:  # an integer beyond float range
        raise _features_error(f"manifest extra.features.{key}: values must be finite") from None
    if not np.all(np.isfinite(arr)) or np.any(np.abs(arr) > 1e30) or (positive and np.any(arr <= 0)):
        raise _features_error(f"manifest extra.features.{key}: values must be finite{' and > 0' if positive else ''}")
    return arr.astype(np.float32)


def frontend_from_manifest(manifest: dict | None, n_mels: int) -> StreamingLogMel:
    """The frontend a ``.subbit`` file was trained with: ``manifest["extra"]["features"]``
    (written by ``subbit export`` from the run's config: log-mel settings and the global
    mean/std), else the default log-mel without normalisation.

    Every field is range-checked (:data:`FEATURE_LIMITS`, mean/std of length n_mels, finite,
    std > 0) before anything is allocated; a bad one raises ``SubbitFormatError`` naming it."""
    extra = (manifest or {}).get("extra") if isinstance(manifest, dict) else None
    feats = extra.get("features") if isinstance(extra, dict) else None
    if not feats:
        return StreamingLogMel(n_mels=n_mels)
    if not isinstance(feats, dict) or feats.get("kind") != "logmel":
        raise _features_error(f"manifest extra.features: kind {feats.get('kind') if isinstance(feats, dict) else feats!r:.40} "
                              "is not supported (expected 'logmel')")  # fmt: skip
    sample_rate, n_fft = _feature_int(feats, "sample_rate"), _feature_int(feats, "n_fft")
    hop, mels = _feature_int(feats, "hop_length"), _feature_int(feats, "n_mels")
    if hop > n_fft:
        raise _features_error(f"manifest extra.features.hop_length: {hop} > n_fft={n_fft}")
    if n_fft > MAX_OVERLAP * hop:  # memory and time per audio second grow with n_fft / hop
        raise _features_error(f"manifest extra.features.hop_length: {hop} < n_fft / {MAX_OVERLAP} = "
                              f"{n_fft / MAX_OVERLAP:g} (frames would overlap more than {MAX_OVERLAP}-fold)")
    if mels != n_mels:
        raise _features_error(f"manifest extra.features.n_mels={mels} but the model expects {n_mels}")
    mean = _feature_vector(feats, "mean", mels, positive=False)
    std = _feature_vector(feats, "std", mels, positive=True)
    return StreamingLogMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=mels, mean=mean, std=std)

"""Log-mel front end: shapes, filterbank, streaming == offline; augmentation modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from subbit.asr.augment import SpecAugment, WaveAugment, add_noise, make_babble, pink_noise, speed_perturb
from subbit.asr.features import LogMel, compute_stats, frames_needed, hz_to_mel, mel_filterbank, num_frames

torch.set_num_threads(1)


def test_shapes_and_frame_lengths():
    fe = LogMel()
    wave = torch.randn(3, 16000)
    lengths = torch.tensor([16000, 8000, 300])
    feats, flen = fe(wave, lengths)
    assert feats.shape == (3, 98, 80)
    assert flen.tolist() == [98, 48, 0]  # 1 + (S - 400) // 160, 0 when shorter than a window
    assert torch.all(feats[1, 48:] == 0) and torch.all(feats[2] == 0)


def test_padding_does_not_change_valid_frames():
    fe = LogMel()
    x = torch.randn(1, 9000)
    alone, n = fe(x, torch.tensor([9000]))
    padded, m = fe(torch.cat([x, torch.randn(1, 5000)], 1), torch.tensor([9000]))
    assert n == m
    torch.testing.assert_close(padded[:, : int(n)], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [0, 1, 2, 17])
def test_frames_needed_inverts_num_frames(n):
    s = frames_needed(n)
    assert int(num_frames(s, 400, 160)) == n
    if n:
        assert int(num_frames(s - 1, 400, 160)) == n - 1


@pytest.mark.parametrize("chunk", [160, 333, 1000, 4001])
def test_streaming_equals_offline(chunk):
    fe = LogMel(n_mels=40)
    fe.set_stats(torch.linspace(-3, 3, 40), torch.linspace(0.5, 2, 40))
    x = torch.randn(12345)
    offline, n = fe(x[None], torch.tensor([x.numel()]))
    st = fe.streaming()
    parts = [st.push(x[i : i + chunk]) for i in range(0, x.numel(), chunk)]
    online = torch.cat(parts)
    assert online.shape[0] == int(n) == st.frames_out
    torch.testing.assert_close(online, offline[0], rtol=1e-4, atol=1e-4)


def test_filterbank_htk_triangles():
    fb = mel_filterbank(16000, 400, 80)
    assert fb.shape == (201, 80) and torch.all(fb >= 0) and torch.all(fb <= 1)
    assert torch.all(fb.sum(0) > 0)  # no empty filter at 80 mels / 400-point FFT
    peaks = fb.argmax(0)
    assert torch.all(peaks[1:] >= peaks[:-1])
    assert float(hz_to_mel(1000.0)) == pytest.approx(999.99, abs=0.1)  # HTK: 1 kHz ~ 1000 mel
    with pytest.raises(ValueError, match="f_max"):
        mel_filterbank(16000, 400, 80, f_max=9000)


def test_tone_lands_in_matching_mel_band():
    fe = LogMel()
    t = torch.arange(16000) / 16000
    for hz in (300.0, 2000.0, 6000.0):
        feats, _ = fe(torch.sin(2 * torch.pi * hz * t)[None])
        band = int(feats[0].mean(0).argmax())
        fb = mel_filterbank(16000, 400, 80)
        expected = int(fb[round(hz / 40)].argmax())  # FFT bin width is 16000/400 = 40 Hz
        assert abs(band - expected) <= 1


def test_global_stats_normalise():
    fe = LogMel(n_mels=16)
    waves = [torch.randn(1, 8000) * s for s in (0.1, 1.0, 3.0)]
    mean, std = compute_stats(fe.raw(w)[0] for w in waves)
    fe.set_stats(mean, std)
    allf = torch.cat([fe(w)[0][0] for w in waves])
    torch.testing.assert_close(allf.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(allf.std(0, unbiased=False), torch.ones(16), atol=1e-3, rtol=0)
    state = fe.state_dict()
    assert set(state) == {"mean", "std"}
    with pytest.raises(ValueError, match="no frames"):
        compute_stats([])


# ----------------------------------------------------------------------------- augmentation
@pytest.mark.slow
def test_specaugment_only_in_train_mode():
    sa = SpecAugment(freq_masks=2, freq_width=10, time_masks=2, time_width=20, max_time_ratio=0.5, seed=1)
    x = torch.randn(2, 100, 40) + 5
    sa.eval()
    assert torch.equal(sa(x), x)
    sa.train()
    y = sa(x, torch.tensor([100, 60]))
    assert not torch.equal(y, x)
    assert torch.all(y[1, 60:] == x[1, 60:])  # masks stay inside each item's own length
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(sa(x, generator=g1), sa(x, generator=g2))


def test_speed_perturb_lengths():
    x = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    assert speed_perturb(x, 1.0) is x or np.array_equal(speed_perturb(x, 1.0), x)
    assert abs(speed_perturb(x, 1.1).size - 16000 / 1.1) <= 2
    assert abs(speed_perturb(x, 0.9).size - 16000 / 0.9) <= 2
    with pytest.raises(ValueError, match="speed"):
        speed_perturb(x, 3.0)


@pytest.mark.parametrize("snr", [0.0, 10.0, 30.0])
def test_add_noise_hits_requested_snr(snr):
    rng = np.random.default_rng(1)
    x = np.sin(np.arange(16000) / 5).astype(np.float32)
    noise = pink_noise(16000, rng)
    y = add_noise(x, noise, snr)
    measured = 10 * np.log10(np.mean(x**2) / np.mean((y - x) ** 2))
    assert measured == pytest.approx(snr, abs=0.05)


def test_pink_noise_has_falling_spectrum():
    n = pink_noise(1 << 15, np.random.default_rng(2))
    p = np.abs(np.fft.rfft(n)) ** 2
    low, high = p[10:200].mean(), p[-2000:].mean()
    assert low > 20 * high


def test_wave_augment_is_seeded():
    src = [np.sin(np.arange(4000) / 3).astype(np.float32)]
    aug = WaveAugment(babble_sources=src, noise_prob=1.0)
    x = np.random.default_rng(0).standard_normal(8000).astype(np.float32)
    a = aug(x, np.random.default_rng(42))
    b = aug(x, np.random.default_rng(42))
    c = aug(x, np.random.default_rng(43))
    assert np.array_equal(a, b)
    assert a.shape != c.shape or not np.array_equal(a, c)
    assert make_babble(src, 1000, np.random.default_rng(0)).shape == (1000,)

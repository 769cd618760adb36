"""Tiny synthetic corpora and batches for tests.

Real speech is far too slow for unit tests, so the dummy corpus "speaks" a five-word language
in which every word is a short chord of sine tones. A model can learn it in a few hundred steps,
yet a test that only needs the pipeline to run finishes in seconds. Manifests use the same JSONL
schema as :mod:`subbit.asr.data` (``id, audio, text, duration, speaker``; audio relative to the
manifest's directory), written here directly so this module depends on nothing else in subbit.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

#: the dummy language; every word gets its own two-tone chord (Hz)
WORDS: tuple[str, ...] = ("go", "stop", "left", "right", "up")
_CHORDS: dict[str, tuple[float, float]] = {
    "go": (300.0, 900.0),
    "stop": (450.0, 1400.0),
    "left": (600.0, 2000.0),
    "right": (800.0, 1150.0),
    "up": (1000.0, 2600.0),
}
SPLITS: tuple[str, ...] = ("train", "dev", "test_seen", "test_heldout")


def synth_words(
    words: list[str],
    rng: np.random.Generator,
    sample_rate: int = 16000,
    pitch: float = 1.0,
    word_sec: float = 0.22,
    gap_sec: float = 0.06,
    noise: float = 0.01,
) -> np.ndarray:
    """Render ``words`` as consecutive tone chords with short gaps (float32 mono in [-1, 1])."""
    unknown = [w for w in words if w not in _CHORDS]
    if unknown:
        raise ValueError(f"words not in the dummy vocabulary {WORDS}: {unknown}")
    pieces = [np.zeros(int(gap_sec * sample_rate), np.float32)]
    for w in words:
        n = int(word_sec * sample_rate * rng.uniform(0.85, 1.15))
        t = np.arange(n) / sample_rate
        env = np.sin(np.pi * np.arange(n) / n) ** 2  # smooth onset/offset
        f1, f2 = (f * pitch for f in _CHORDS[w])
        tone = 0.5 * np.sin(2 * np.pi * f1 * t) + 0.3 * np.sin(2 * np.pi * f2 * t)
        pieces.append((env * tone).astype(np.float32))
        pieces.append(np.zeros(int(gap_sec * sample_rate * rng.uniform(0.5, 1.5)), np.float32))
    wave = np.concatenate(pieces)
    wave += noise * rng.standard_normal(wave.shape[0]).astype(np.float32)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def make_dummy_corpus(
    root: str | Path,
    n_train: int = 24,
    n_eval: int = 6,
    seed: int = 0,
    sample_rate: int = 16000,
    max_words: int = 4,
) -> Path:
    """Write a tiny corpus to ``root``: wavs plus ``{train,dev,test_seen,test_heldout}.jsonl``.

    Train, dev and test_seen use "voices" (pitch factors) 0.95-1.05; test_heldout uses pitch
    0.9 and 1.1, mirroring the real corpus's held-out-voice split. Returns ``root``.
    """
    import soundfile as sf

    if n_train < 1 or n_eval < 1:
        raise ValueError(f"n_train and n_eval must be >= 1, got {n_train}, {n_eval}")
    if not 1 <= max_words <= 8:
        raise ValueError(f"max_words must be in 1..8, got {max_words}")
    root = Path(root)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seen_voices = {"v0": 0.95, "v1": 1.0, "v2": 1.05}
    heldout_voices = {"h0": 0.9, "h1": 1.1}
    counts = {"train": n_train, "dev": n_eval, "test_seen": n_eval, "test_heldout": n_eval}
    for split in SPLITS:
        voices = heldout_voices if split == "test_heldout" else seen_voices
        names = sorted(voices)
        lines = []
        for i in range(counts[split]):
            words = [WORDS[j] for j in rng.integers(0, len(WORDS), rng.integers(1, max_words + 1))]
            speaker = names[i % len(names)]
            wave = synth_words(words, rng, sample_rate, pitch=voices[speaker])
            uid = f"{split}-{i:04d}"
            rel = f"wav/{uid}.wav"
            sf.write(root / rel, wave, sample_rate, subtype="PCM_16")
            lines.append(
                json.dumps(
                    {
                        "id": uid,
                        "audio": rel,
                        "text": " ".join(words),
                        "duration": round(len(wave) / sample_rate, 4),
                        "speaker": speaker,
                    }
                )
            )
        (root / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return root


def dummy_batch(
    batch_size: int = 2,
    frames: int = 40,
    n_mels: int = 80,
    vocab_size: int = 8,
    max_target: int = 5,
    seed: int = 0,
) -> dict[str, object]:
    """A random batch in the collate layout (feats, feat_lens, targets, target_lens, texts, ids)."""
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2 (blank + one token), got {vocab_size}")
    g = torch.Generator().manual_seed(seed)
    feat_lens = torch.randint(frames // 2, frames + 1, (batch_size,), generator=g)
    feat_lens[0] = frames
    target_lens = torch.randint(1, max_target + 1, (batch_size,), generator=g)
    targets = torch.zeros(batch_size, int(target_lens.max()), dtype=torch.int64)
    for b in range(batch_size):
        n = int(target_lens[b])
        targets[b, :n] = torch.randint(1, vocab_size, (n,), generator=g)
    return {
        "feats": torch.randn(batch_size, frames, n_mels, generator=g),
        "feat_lens": feat_lens.to(torch.int64),
        "targets": targets,
        "target_lens": target_lens.to(torch.int64),
        "texts": ["" for _ in range(batch_size)],
        "ids": [f"dummy-{b}" for b in range(batch_size)],
    }

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
    # local: the corpus helpers above must stay usable without the rest of subbit
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


# -- models, runs and files for tests --------------------------------------------------------------
# The builders below import the rest of subbit inside the functions: the corpus and batch helpers
# above must stay usable without it (their module depends on nothing else in subbit).
class DummyNet(torch.nn.Module):
    """Named layers applied in order: Embedding on token ids, Conv1d over time ([B, T, C] in and
    out), RNNs keep their output sequence; anything else is applied as is."""

    def __init__(self, layers: list[tuple[str, torch.nn.Module]]) -> None:
        super().__init__()
        if not layers:
            raise ValueError("dummy_net needs at least one layer")
        self._order = [name for name, _ in layers]
        for name, module in layers:
            self.add_module(name, module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            m = getattr(self, name)
            if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d)):
                x = m(x.transpose(1, 2)).transpose(1, 2)
            elif isinstance(m, torch.nn.RNNBase):
                x = m(x)[0]
            else:
                x = m(x)
        return x


def dummy_net(*layers: tuple[str, torch.nn.Module], seed: int | None = 0) -> DummyNet:
    """A small network of the layer kinds the quantizers cover, for quant/export tests.

    With no ``layers``: Embedding(30, 64) -> Conv1d(64, 64, 3) -> LSTM(64, 64) -> LayerNorm ->
    Linear(64, 30), named ``emb, conv, lstm, norm, out``. ``seed`` (None: leave the RNG alone) is
    set before the layers are built, so a seed gives the same weights.
    """
    if seed is not None:
        torch.manual_seed(seed)
    if not layers:
        nn = torch.nn
        layers = (("emb", nn.Embedding(30, 64)), ("conv", nn.Conv1d(64, 64, 3, padding=1)),
                  ("lstm", nn.LSTM(64, 64, batch_first=True)), ("norm", nn.LayerNorm(64)),
                  ("out", nn.Linear(64, 30)))  # fmt: skip
    return DummyNet(list(layers))


class TiedLM(torch.nn.Module):
    """Embedding tied to the output projection (the usual language-model tie), a Linear between."""

    def __init__(self, vocab: int = 16, dim: int = 8) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.mix = torch.nn.Linear(dim, dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.emb(x))))


def dummy_tied_lm(vocab: int = 16, dim: int = 8, seed: int | None = 0) -> TiedLM:
    """A :class:`TiedLM` (one Parameter owned by ``emb`` and ``head``), for tied-weight tests;
    ``seed`` as in :func:`dummy_net`."""
    if seed is not None:
        torch.manual_seed(seed)
    return TiedLM(vocab, dim)


def dummy_transducer(arch: str = "rnnt", *, vocab_size: int = 12, n_mels: int = 80, quant: dict | None = None,
                     seed: int = 0, **overrides: object) -> torch.nn.Module:  # fmt: skip
    """The ``tiny`` preset of ``arch`` in eval mode; with ``quant`` (a QuantConfig dict) prepared and
    converted, i.e. the hard model an export writes."""
    # local: the corpus helpers above must stay usable without the rest of subbit
    import subbit.quant as sq
    from subbit.asr.models import build_model

    torch.manual_seed(seed)
    model = build_model(arch, "tiny", vocab_size=vocab_size, n_mels=n_mels, **overrides).eval()
    if quant is not None:
        sq.prepare(model, sq.QuantConfig.from_dict(quant))
        sq.convert(model)
    return model.eval()


def dummy_run(run_dir: str | Path, arch: str = "rnnt", quant: dict | None = None, *, seed: int = 0) -> torch.nn.Module:
    """A finished run directory (config.json, char tokenizer "abc ", final.pt) holding the tiny
    ``arch`` transducer (16 mels), prepared with ``quant`` (default 4-bit GQ) and converted.
    Returns the model, in eval mode, as written."""
    # local: the corpus helpers above must stay usable without the rest of subbit
    from subbit.asr.tokenizer import Tokenizer
    from subbit.runs import write_run

    run_dir = Path(run_dir)
    if run_dir.exists():
        raise FileExistsError(f"dummy_run: {run_dir} exists")
    quant = {"default": {"bits": 4}} if quant is None else quant
    tok = Tokenizer("char", chars=list("abc "))
    model = dummy_transducer(arch, vocab_size=tok.vocab_size, n_mels=16, quant=quant, seed=seed)
    write_run(run_dir, model, tok, quant=quant, train_args={}, data_dir=str(run_dir))
    return model


def dummy_subbit_file(out_dir: str | Path, arch: str = "rnnt", *, bits: int = 4, rules: dict | None = None,
                      tokenizer_bytes: bytes | None = None, blank_bias: float | None = None, vocab_size: int = 12,
                      seed: int = 0, **overrides: object) -> Path:  # fmt: skip
    """``OUT_DIR/ARCH.subbit``: the tiny ``arch`` transducer (80 mels) at ``bits``-bit GQ (``rules``
    as in a QuantConfig), exported. ``blank_bias``: the joiner's logits are sharpened (x3) and the
    blank's bias raised by it first, so greedy decoding emits a few tokens and ties are rare.
    ``overrides``: preset hyperparameters to change (wider layers, say)."""
    # local: the corpus helpers above must stay usable without the rest of subbit
    import subbit.quant as sq
    from subbit.asr.models import build_model
    from subbit.export import export_model

    torch.manual_seed(seed)
    model = build_model(arch, "tiny", vocab_size=vocab_size, **overrides).eval()
    if blank_bias is not None:
        with torch.no_grad():
            model.joiner.out.weight.mul_(3.0)
            model.joiner.out.bias[0] += blank_bias
    quant: dict = {"default": {"method": "gq", "bits": bits}}
    if rules:
        quant["rules"] = rules
    sq.prepare(model, sq.QuantConfig.from_dict(quant))
    sq.convert(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{arch}.subbit"
    export_model(model, path, arch=model.config, tokenizer_bytes=tokenizer_bytes)
    return path


def large_subbit_file(path: str | Path, mib: int, *, layers: int = 1, seed: int = 0) -> int:
    """A ``.subbit`` file with about ``mib`` MiB of packed 4-bit indices, for measuring what loading
    costs: ``layers`` tensors ``layer{i}.weight`` of K = 4096 (a multiple of 8: no padding to
    check) with float biases, plus ``small``, a 3-bit tensor whose rows are padded: the shape of a
    real model's file, scaled up. Returns the file's size in bytes."""
    # local: the corpus helpers above must stay usable without the rest of subbit
    from subbit.export.bitpack import PackedTensor, row_bytes
    from subbit.export.container import write_packed

    rng = np.random.default_rng(seed)
    k = 4096
    n = (mib << 20) // row_bytes(k, 4) // layers
    packed = {f"layer{i}.weight": PackedTensor(4, (n, k), rng.integers(0, 256, (n, row_bytes(k, 4)), dtype=np.uint8),
                                               rng.normal(size=(1, 16)).astype(np.float32), 1, method="gq")
              for i in range(layers)}  # fmt: skip
    packed["small"] = PackedTensor.from_indices(rng.integers(0, 8, (5, 13)), rng.normal(size=(1, 8)), 3)
    floats = {f"layer{i}.bias": ("F32", rng.normal(size=n).astype(np.float32)) for i in range(layers)}
    write_packed(path, packed, floats, arch={"arch": "large"}, tokenizer_bytes=b"t")
    return Path(path).stat().st_size

"""Torch dataset, collate function and a resumable, length-bucketed batch sampler.

Determinism: every item's randomness (speed, noise, SpecAugment) comes from a generator seeded
with ``(seed, epoch, index)``, so results do not depend on worker count or order. The batch
sampler yields keys ``(index, epoch, batch_no)``; :func:`collate` reports
``batch["position"] = (epoch, batch_no + 1)``.

Resuming mid-epoch: save ``batch["position"]`` of the last batch you trained on, then
``loader.batch_sampler.load_state_dict({"epoch": e, "index": i})``; the next iteration starts at
batch ``i`` of epoch ``e`` with the same batches as the uninterrupted run. (The sampler's own
``state_dict()`` counts batches *handed to* the DataLoader, which with workers runs ahead of
those trained on; prefer ``batch["position"]``.)
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from subbit.asr.augment import SpecAugment, WaveAugment
from subbit.asr.data import SAMPLE_RATE, Utterance, load_audio
from subbit.asr.features import LogMel, compute_stats
from subbit.asr.tokenizer import Tokenizer
from subbit.runtime.models import wake_frames

Key = tuple[int, int, int]  # (utterance index, epoch, batch number)


def _item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


class AsrDataset(Dataset):
    """Utterances -> features and token ids (with optional augmentation)."""

    def __init__(self, utts: Sequence[Utterance], tokenizer: Tokenizer, frontend: LogMel | None = None,
                 augment: bool = False, seed: int = 0, spec_augment: SpecAugment | None = None,
                 wave_augment: WaveAugment | None = None, babble_sources: int = 16) -> None:
        self.utts = list(utts)
        self.tokenizer = tokenizer
        self.frontend = frontend if frontend is not None else LogMel()
        self.augment = augment
        self.seed = seed
        self.spec_augment = spec_augment if spec_augment is not None else SpecAugment()
        self.spec_augment.train(True)
        self._wave_augment = wave_augment
        self._n_babble = babble_sources

    def __len__(self) -> int:
        return len(self.utts)

    @property
    def wave_augment(self) -> WaveAugment:
        """Built lazily: babble sources are loaded from the corpus itself, once per process."""
        if self._wave_augment is None:
            rng = random.Random(self.seed)
            picks = rng.sample(range(len(self.utts)), min(self._n_babble, len(self.utts)))
            self._wave_augment = WaveAugment(babble_sources=[load_audio(self.utts[i].audio) for i in picks])
        return self._wave_augment

    def __getitem__(self, key: int | Key) -> dict:
        index, epoch = (key, 0) if isinstance(key, int) else (int(key[0]), int(key[1]))
        batch_no = -1 if isinstance(key, int) else int(key[2])
        utt = self.utts[index]
        audio = load_audio(utt.audio, SAMPLE_RATE)
        rng = _item_rng(self.seed, epoch, index)
        n_clean = len(audio)
        if self.augment:
            audio = self.wave_augment(audio, rng)
        wave = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))[None]
        with torch.no_grad():
            feats, flen = self.frontend(wave, torch.tensor([wave.shape[1]]))
            if self.augment:
                g = torch.Generator().manual_seed(int(rng.integers(2**62)))
                feats = self.spec_augment(feats, flen, generator=g)
        targets = self.tokenizer.encode(utt.text)
        item = {"feats": feats[0, : int(flen[0])], "targets": torch.tensor(targets, dtype=torch.int64),
                "text": utt.text, "id": utt.id, "position": (epoch, batch_no + 1)}
        wake_end = getattr(utt, "wake_end", None)
        if wake_end is not None:  # bifocal: frames inside the wake word (speed perturbation rescales it)
            fe = self.frontend
            item["wake_frames"] = wake_frames(wake_end * len(audio) / max(n_clean, 1), fe.sample_rate,
                                              fe.n_fft, fe.hop_length)
        return item


def collate(batch: list[dict]) -> dict:
    """Pad to the longest item: feats with 0.0, targets with 0 (the blank id)."""
    if not batch:
        raise ValueError("collate: empty batch")
    b = len(batch)
    t_max = max(x["feats"].shape[0] for x in batch)
    u_max = max(x["targets"].shape[0] for x in batch)
    n_feat = batch[0]["feats"].shape[1]
    feats = torch.zeros(b, t_max, n_feat)
    targets = torch.zeros(b, u_max, dtype=torch.int64)
    for i, x in enumerate(batch):
        feats[i, : x["feats"].shape[0]] = x["feats"]
        targets[i, : x["targets"].shape[0]] = x["targets"]
    return {
        "feats": feats,
        "feat_lens": torch.tensor([x["feats"].shape[0] for x in batch], dtype=torch.int64),
        "targets": targets,
        "target_lens": torch.tensor([x["targets"].shape[0] for x in batch], dtype=torch.int64),
        "texts": [x["text"] for x in batch],
        "ids": [x["id"] for x in batch],
        "position": batch[0].get("position", (0, 0)),
        **_pathway_mask(batch, t_max),
    }


def _pathway_mask(batch: list[dict], t_max: int) -> dict:
    """``{"pathway_mask": bool [B, T]}`` (per feature frame, True = inside the wake word, the
    bifocal encoder's small pathway) when some item has a wake word; ``{}`` otherwise."""
    if all(x.get("wake_frames") is None for x in batch):
        return {}
    mask = torch.zeros(len(batch), t_max, dtype=torch.bool)
    for i, x in enumerate(batch):
        mask[i, : x.get("wake_frames") or 0] = True
    return {"pathway_mask": mask}


class BucketBatchSampler(Sampler[list[Key]]):
    """Length-bucketed batches, reshuffled per epoch, resumable.

    Per epoch: shuffle indices (seeded by ``seed + epoch``), cut them into chunks of
    ``bucket_batches`` batches, sort each chunk by duration and cut it into batches of
    ``batch_size`` items (or, with ``max_frames``, as many as fit ``count * longest <= max_frames``
    at 100 frames/s); finally shuffle the batch order. Without ``shuffle`` the order is fixed
    (sorted by duration for efficient evaluation).
    """

    def __init__(self, durations: Sequence[float], batch_size: int, shuffle: bool = True, seed: int = 0,
                 max_frames: int | None = None, bucket_batches: int = 50, drop_last: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if max_frames is not None and max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        self.durations = [float(d) for d in durations]
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.max_frames, self.bucket_batches, self.drop_last = max_frames, bucket_batches, drop_last
        self.epoch, self.index = 0, 0

    def _split(self, order: list[int]) -> list[list[int]]:
        batches: list[list[int]] = []
        cur: list[int] = []
        longest = 0.0
        for i in order:
            frames = max(longest, self.durations[i] * 100) * (len(cur) + 1)
            full = len(cur) >= self.batch_size or (self.max_frames is not None and cur and frames > self.max_frames)
            if full:
                batches.append(cur)
                cur, longest = [], 0.0
            cur.append(i)
            longest = max(longest, self.durations[i] * 100)
        if cur and not (self.drop_last and len(cur) < self.batch_size and self.max_frames is None):
            batches.append(cur)
        return batches

    def batches(self, epoch: int) -> list[list[int]]:
        """The batches of ``epoch`` (pure function of seed, epoch and durations)."""
        n = len(self.durations)
        if not self.shuffle:
            return self._split(sorted(range(n), key=lambda i: (self.durations[i], i)))
        rng = random.Random(self.seed * 1_000_003 + epoch)
        order = list(range(n))
        rng.shuffle(order)
        chunk = self.batch_size * self.bucket_batches
        out: list[list[int]] = []
        for s in range(0, n, chunk):
            part = sorted(order[s : s + chunk], key=lambda i: self.durations[i])
            out += self._split(part)
        rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[list[Key]]:
        epoch = self.epoch
        all_batches = self.batches(epoch)
        while self.index < len(all_batches):
            b = self.index
            self.index += 1
            yield [(i, epoch, b) for i in all_batches[b]]
        self.epoch, self.index = epoch + 1, 0

    def __len__(self) -> int:
        return len(self.batches(self.epoch))

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler seed {self.seed} != saved seed {state['seed']}")


def make_loader(utts: Sequence[Utterance], tokenizer: Tokenizer, batch_size: int, shuffle: bool, augment: bool,
                seed: int = 0, num_workers: int = 0, max_frames: int | None = None,
                frontend: LogMel | None = None) -> DataLoader:
    """DataLoader over :class:`AsrDataset` with a :class:`BucketBatchSampler` (``loader.batch_sampler``)."""
    ds = AsrDataset(utts, tokenizer, frontend=frontend, augment=augment, seed=seed)
    sampler = BucketBatchSampler([u.duration for u in utts], batch_size, shuffle=shuffle, seed=seed, max_frames=max_frames)
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)


@torch.no_grad()
def frontend_stats(utts: Sequence[Utterance], frontend: LogMel, max_utts: int = 300, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mean/std of un-normalised log-mels over (a seeded sample of) ``utts``."""
    picks = list(range(len(utts)))
    random.Random(seed).shuffle(picks)
    def gen() -> Iterator[torch.Tensor]:
        for i in picks[:max_utts]:
            wave = torch.from_numpy(load_audio(utts[i].audio))[None]
            yield frontend.raw(wave)[0]
    return compute_stats(gen())

"""The batch stream (endless, resumable, sharded) and the RNG state a checkpoint restores.

Resuming at (epoch, batch index) with the RNG states of the moment makes the next step's loss
identical to an uninterrupted run's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader


class BatchStream:
    """Endless, resumable, sharded iteration over a loader's bucketed batches.

    Each epoch's batch list comes from the loader's batch sampler (deterministic given the seed
    and epoch), is truncated to a multiple of ``world`` and sharded ``[rank::world]``; batches
    are then built directly with the dataset and collate function, so resuming at (epoch, index)
    skips the earlier batches without loading their audio. With ``num_workers > 0`` the rest of
    each epoch is loaded ahead by a DataLoader over that batch list (items are seeded by their
    key, so workers change nothing but speed); the position counts batches consumed, not loaded.
    """

    def __init__(self, loader: Any, rank: int = 0, world: int = 1, num_workers: int = 0,
                 sortagrad_epochs: int = 0) -> None:
        self.loader = loader
        self.rank, self.world = rank, world
        self.num_workers = num_workers
        self.sortagrad_epochs = sortagrad_epochs
        self.epoch, self.index = 0, 0
        self._batches: list[list[Any]] | None = None
        self._it: Iterator[dict[str, Any]] | None = None

    def _epoch_batches(self) -> list[list[Any]]:
        sampler = self.loader.batch_sampler
        if hasattr(sampler, "batches"):  # subbit's BucketBatchSampler: a pure function of the epoch
            batches = [list(b) for b in sampler.batches(self.epoch)]
        else:
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
            batches = [list(b) for b in sampler]
        durations = getattr(sampler, "durations", None)
        if self.epoch < self.sortagrad_epochs and durations is not None:
            # curriculum ("SortaGrad", Deep Speech 2): shortest batches first; alignment is
            # learnt on short commands before long sentences
            batches.sort(key=lambda b: max(durations[i] for i in b))
        n = len(batches) // self.world * self.world
        if n == 0:
            raise ValueError(f"too few training batches ({len(batches)}) for {self.world} processes")
        mine = list(range(n))[self.rank :: self.world]
        if hasattr(sampler, "batches"):
            # dataset keys (index, epoch, batch_no): augmentation is seeded per (seed, epoch, index)
            return [[(i, self.epoch, b) for i in batches[b]] for b in mine]
        return [batches[b] for b in mine]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def _epoch_iter(self) -> Iterator[dict[str, Any]]:
        assert self._batches is not None
        remaining = self._batches[self.index :]
        ds, collate = self.loader.dataset, self.loader.collate_fn
        if self.num_workers > 0:
            # a private generator: the loader's worker seed must not consume the global torch RNG
            # (that would shift dropout masks and break resume parity)
            gen = torch.Generator().manual_seed(self.epoch)
            return iter(DataLoader(ds, batch_sampler=remaining, collate_fn=collate, num_workers=self.num_workers,
                                   generator=gen))
        return (collate([ds[i] for i in b]) for b in remaining)

    def __next__(self) -> dict[str, Any]:
        if self._batches is None:
            self._batches, self._it = self._epoch_batches(), None
        if self.index >= len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches, self._it = self._epoch_batches(), None
        if self._it is None:
            self._it = self._epoch_iter()
        batch = next(self._it)
        self.index += 1
        return batch

    def mean_batch_seconds(self) -> float | None:
        """Mean audio seconds per batch over an epoch (None when the sampler has no durations)."""
        sampler = self.loader.batch_sampler
        durations = getattr(sampler, "durations", None)
        if durations is None or not hasattr(sampler, "batches"):
            return None
        batches = sampler.batches(self.epoch)
        return sum(durations[i] for b in batches for i in b) / max(1, len(batches))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, d: dict[str, int]) -> None:
        self.epoch, self.index = int(d["epoch"]), int(d["index"])
        self._batches, self._it = None, None


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        {
            "bit_generator": n["bit_generator"],
            "state": {"key": n["key"].cpu().numpy().astype(np.uint32), "pos": n["pos"]},
            "has_gauss": n["has_gauss"],
            "gauss": n["gauss"],
        }
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)

"""Multi-process training: batch sharding, and a 2-process CPU (gloo) smoke run via torchrun."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from subbit.asr.checkpoint import RunPaths, load_checkpoint
from subbit.asr.train import BatchStream, read_log
from subbit.testing.dummies import make_dummy_corpus

torch.set_num_threads(1)


class _Sampler:
    """Stands in for BucketBatchSampler: batches are a pure function of the epoch."""

    def batches(self, epoch: int) -> list[list[int]]:
        return [[10 * epoch + b, 10 * epoch + b + 100] for b in range(5)]


class _Loader:
    batch_sampler = _Sampler()
    dataset = {(i, e, b): (i, e, b) for e in range(3) for b in range(5) for i in range(400)}

    @staticmethod
    def collate_fn(items):
        return items


def test_sharding_is_disjoint_and_balanced() -> None:
    seen = []
    for rank in range(2):
        stream = BatchStream(_Loader(), rank=rank, world=2)
        seen.append([next(stream) for _ in range(4)])  # 2 batches per epoch per rank (5 -> 4 kept)
    flat = [tuple(x[0] for x in batch) for rank in seen for batch in rank]
    assert len(flat) == len(set(flat)) == 8  # no batch trained twice in the same epoch
    assert {b[1][1] for b in seen[0]} == {0, 1}  # keys carry the epoch (augmentation seeding)


def test_stream_state_round_trip() -> None:
    a = BatchStream(_Loader())
    for _ in range(7):
        next(a)
    b = BatchStream(_Loader())
    b.load_state_dict(a.state_dict())
    assert [next(a) for _ in range(4)] == [next(b) for _ in range(4)]


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path) -> None:
    corpus = make_dummy_corpus(tmp_path / "corpus", n_train=12, n_eval=2)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "subbit.cli", "train", "--model", "rnnt", "--preset", "tiny", "--data", str(corpus),
           "--out", str(out), "--steps", "4", "--batch-size", "2", "--tokenizer", "char",
           "--ckpt-every", "2", "--threads", "1", "--no-progress"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    paths = RunPaths(out)
    rows = read_log(paths.log)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]  # one writer: rank 0
    ckpt = load_checkpoint(paths.last)
    assert ckpt["world_size"] == 2 and ckpt["step"] == 4
    assert paths.final.is_file()
    # each rank took half of the 6 batches of an epoch: 4 steps cross into epoch 1
    assert int(rows[-1]["epoch"]) == 1


class _DurSampler(_Sampler):
    durations = [float(400 - i) for i in range(400)]  # later indices are shorter


class _DurLoader(_Loader):
    batch_sampler = _DurSampler()


def test_sortagrad_orders_the_first_epochs_by_length() -> None:
    stream = BatchStream(_DurLoader(), sortagrad_epochs=1)
    first = [next(stream) for _ in range(5)]
    longest = [max(_DurSampler.durations[k[0]] for k in b) for b in first]
    assert longest == sorted(longest)
    second = [next(stream) for _ in range(5)]  # epoch 1: the sampler's own order
    assert [b[0][0] for b in second] == [10 + b for b in range(5)]

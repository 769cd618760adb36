"""AsrDataset, collate padding and the resumable bucketed batch sampler."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from subbit.asr.data import Utterance
from subbit.asr.dataset import AsrDataset, BucketBatchSampler, collate, frontend_stats, make_loader
from subbit.asr.features import LogMel
from subbit.asr.tokenizer import train_tokenizer

torch.set_num_threads(1)

WORDS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@pytest.fixture(scope="module")
def utts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ds")
    rng = np.random.default_rng(0)
    out = []
    for i in range(12):
        n = int(16000 * (0.3 + 0.05 * i))
        path = root / f"u{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal(n)).astype(np.float32), 16000)
        text = " ".join(WORDS[(i + k) % 9] for k in range(1 + i % 4))
        out.append(Utterance(f"u{i}", str(path), text, n / 16000, f"s{i % 3}"))
    return out


@pytest.fixture(scope="module")
def tok(utts):
    return train_tokenizer([u.text for u in utts], "char")


def test_item_matches_frontend_and_tokens(utts, tok):
    ds = AsrDataset(utts, tok, LogMel(n_mels=20), augment=False)
    item = ds[3]
    assert item["feats"].shape == (1 + (len(sf.read(utts[3].audio)[0]) - 400) // 160, 20)
    assert tok.decode(item["targets"].tolist()) == utts[3].text
    assert item["id"] == "u3" and item["text"] == utts[3].text


def test_collate_pads_with_zero(utts, tok):
    ds = AsrDataset(utts, tok, LogMel(n_mels=20))
    items = [ds[0], ds[7], ds[3]]
    b = collate(items)
    assert b["feats"].shape == (3, max(x["feats"].shape[0] for x in items), 20)
    assert b["feat_lens"].dtype == torch.int64 and b["targets"].dtype == torch.int64
    for i, x in enumerate(items):
        t, u = x["feats"].shape[0], x["targets"].numel()
        assert int(b["feat_lens"][i]) == t and int(b["target_lens"][i]) == u
        assert torch.equal(b["feats"][i, :t], x["feats"]) and torch.all(b["feats"][i, t:] == 0)
        assert torch.equal(b["targets"][i, :u], x["targets"]) and torch.all(b["targets"][i, u:] == 0)
    assert b["ids"] == ["u0", "u7", "u3"] and b["texts"][1] == utts[7].text
    with pytest.raises(ValueError, match="empty"):
        collate([])


def test_augmentation_seeded_per_epoch_and_index(utts, tok):
    ds = AsrDataset(utts, tok, LogMel(n_mels=20), augment=True, seed=5)
    a, b = ds[(2, 0, 0)], ds[(2, 0, 0)]
    assert torch.equal(a["feats"], b["feats"])
    c = ds[(2, 1, 0)]
    assert c["feats"].shape != a["feats"].shape or not torch.equal(a["feats"], c["feats"])
    clean = AsrDataset(utts, tok, LogMel(n_mels=20), augment=False)[(2, 0, 0)]
    assert a["feats"].shape != clean["feats"].shape or not torch.equal(a["feats"], clean["feats"])


def test_sampler_covers_every_item_once_and_buckets():
    durs = [float(x) for x in np.random.default_rng(1).uniform(0.5, 10, 200)]
    s = BucketBatchSampler(durs, batch_size=8, shuffle=True, seed=3, bucket_batches=5)
    batches = s.batches(0)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(200))
    assert all(len(b) <= 8 for b in batches)
    # bucketing: spread within a batch is far below the spread of a random batch
    spread = np.mean([max(durs[i] for i in b) - min(durs[i] for i in b) for b in batches])
    assert spread < 3.0
    assert s.batches(0) == batches and s.batches(1) != batches
    fixed = BucketBatchSampler(durs, 8, shuffle=False).batches(0)
    assert [durs[b[0]] for b in fixed] == sorted(durs[b[0]] for b in fixed)


def test_max_frames_limits_batch_size():
    durs = [1.0] * 10 + [5.0] * 10
    s = BucketBatchSampler(durs, batch_size=100, shuffle=False, max_frames=1000)
    for b in s.batches(0):
        assert len(b) * max(durs[i] for i in b) * 100 <= 1000 or len(b) == 1
    assert sorted(i for b in s.batches(0) for i in b) == list(range(20))


def test_loader_resume_mid_epoch(utts, tok):
    def make():
        return make_loader(utts, tok, batch_size=3, shuffle=True, augment=True, seed=9, frontend=LogMel(n_mels=20))

    full = []
    loader = make()
    for _ in range(2):  # two epochs
        full += [(b["ids"], b["position"], b["feats"]) for b in loader]
    n_epoch = len(full) // 2
    cut = n_epoch + 1  # stop after the second batch of epoch 1
    epoch, index = full[cut][1]
    resumed = make()
    resumed.batch_sampler.load_state_dict({"epoch": epoch, "index": index, "seed": 9})
    rest = [(b["ids"], b["position"], b["feats"]) for b in resumed]
    assert [r[0] for r in rest] == [f[0] for f in full[cut + 1 :]]
    assert all(torch.equal(r[2], f[2]) for r, f in zip(rest, full[cut + 1 :]))
    assert resumed.batch_sampler.state_dict() == {"epoch": 2, "index": 0, "seed": 9}
    with pytest.raises(ValueError, match="seed"):
        resumed.batch_sampler.load_state_dict({"epoch": 0, "index": 0, "seed": 1})


def test_loader_with_worker_matches_in_process(utts, tok):
    kw = dict(batch_size=4, shuffle=True, augment=True, seed=2, frontend=LogMel(n_mels=20))
    a = [b["feats"] for b in make_loader(utts, tok, num_workers=0, **kw)]
    b = [b["feats"] for b in make_loader(utts, tok, num_workers=1, **kw)]
    assert len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_frontend_stats_normalise_features(utts, tok):
    fe = LogMel(n_mels=20)
    mean, std = frontend_stats(utts, fe, max_utts=12)
    fe.set_stats(mean, std)
    batch = next(iter(make_loader(utts, tok, batch_size=12, shuffle=False, augment=False, frontend=fe)))
    valid = torch.cat([batch["feats"][i, : int(n)] for i, n in enumerate(batch["feat_lens"])])
    torch.testing.assert_close(valid.mean(0), torch.zeros(20), atol=1e-3, rtol=0)

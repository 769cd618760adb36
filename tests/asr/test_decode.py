"""Greedy and modified beam search: batching invariance, beam=1 == greedy, exactness vs brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from subbit.asr.decode import decode_batch, greedy_search, modified_beam_search
from subbit.asr.models import Transducer, build_model

torch.set_num_threads(1)
ARCHS = ("rnnt", "conformer")


def _model(arch: str, vocab: int = 8, seed: int = 0, blank_bias: float = -1.0) -> Transducer:
    """Random tiny model whose joiner is nudged away from blank so tokens get emitted."""
    torch.manual_seed(seed)
    m = build_model(arch, "tiny", vocab_size=vocab).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        m.joiner.out.bias[m.blank] += blank_bias
    return m


def _enc(m: Transducer, b: int = 3, t: int = 48, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, t, 80, generator=g)
    lens = torch.tensor([t - 9 * i for i in range(b)])
    with torch.no_grad():
        enc, enc_lens = m.encoder(feats, lens)
    return feats, lens, enc, enc_lens


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_is_batch_independent_and_emits(arch: str) -> None:
    m = _model(arch)
    _, _, enc, enc_lens = _enc(m)
    hyps = greedy_search(m, enc, enc_lens)
    assert sum(len(h) for h in hyps) > 0
    assert all(0 < tok < m.vocab_size for h in hyps for tok in h)
    for b in range(enc.size(0)):
        n = int(enc_lens[b])
        assert greedy_search(m, enc[b : b + 1, :n], enc_lens[b : b + 1]) == [hyps[b]]
        assert len(hyps[b]) <= 3 * n


def test_max_symbols_per_frame_is_respected() -> None:
    m = _model("rnnt", blank_bias=-20.0)  # blank almost never wins
    _, _, enc, enc_lens = _enc(m, b=1)
    for k in (1, 2):
        assert len(greedy_search(m, enc, enc_lens, max_symbols_per_frame=k)[0]) == k * int(enc_lens[0])


@pytest.mark.parametrize("arch", ARCHS)
def test_beam_one_equals_greedy_one_symbol(arch: str) -> None:
    m = _model(arch, seed=2)
    _, _, enc, enc_lens = _enc(m)
    assert modified_beam_search(m, enc, enc_lens, beam=1) == greedy_search(m, enc, enc_lens, 1)


def _exhaustive(m: Transducer, enc: torch.Tensor) -> list[int]:
    """Most probable token sequence under one-symbol-per-frame decoding, all paths summed."""
    v, blank = m.vocab_size, m.blank
    seqs: dict[tuple[int, ...], list[float]] = {}
    with torch.no_grad():
        for path in itertools.product(range(v), repeat=enc.size(0)):
            toks: list[int] = []
            score = 0.0
            for t, k in enumerate(path):
                pred = m.predictor(torch.tensor([toks], dtype=torch.long))[:, -1]
                score += float(torch.log_softmax(m.joiner(enc[t][None], pred), -1)[0, k])
                if k != blank:
                    toks.append(k)
            seqs.setdefault(tuple(toks), []).append(score)
    best = max(seqs.items(), key=lambda kv: math.log(sum(math.exp(s) for s in kv[1])))
    return list(best[0])


@pytest.mark.parametrize("seed", [3, 4, 10])
def test_beam_search_is_exact_with_a_wide_beam(seed: int) -> None:
    m = _model("rnnt", vocab=3, seed=seed, blank_bias=0.0)
    _, _, enc, enc_lens = _enc(m, b=1, t=16)  # 4 encoder frames -> 3**4 paths
    assert enc.size(1) == 4
    want = _exhaustive(m, enc[0])
    assert modified_beam_search(m, enc, enc_lens, beam=3**4) == [want]
    assert modified_beam_search(m, enc, enc_lens, beam=1) != [want]  # a case greedy gets wrong


@pytest.mark.slow
@pytest.mark.parametrize("method", ["greedy", "beam"])
def test_decode_batch_restores_mode_and_matches(method: str) -> None:
    m = _model("conformer", seed=4)
    feats, lens, enc, enc_lens = _enc(m)
    m.train()
    hyps = decode_batch(m, feats, lens, method=method, beam=2)
    assert m.training
    want = greedy_search(m, enc, enc_lens) if method == "greedy" else modified_beam_search(m, enc, enc_lens, 2)
    assert hyps == want
    with pytest.raises(ValueError, match="method"):
        decode_batch(m, feats, lens, method="viterbi")
    with pytest.raises(ValueError, match="beam"):
        modified_beam_search(m, enc, enc_lens, beam=0)

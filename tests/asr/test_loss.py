"""RNN-T loss against brute-force enumeration of alignments, gradients, and the from-parts variant."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from subbit.asr.loss import rnnt_loss, rnnt_loss_from_parts
from subbit.asr.models.transducer import Joiner

torch.set_num_threads(1)


def _brute_nll(logits: torch.Tensor, y: list[int], t_len: int, blank: int) -> float:
    """-log sum over every alignment (U labels and T blanks, the last symbol a blank)."""
    lp = torch.log_softmax(logits.double(), -1)
    u_len = len(y)
    total = []
    n = t_len + u_len - 1  # symbols before the final blank
    for label_slots in itertools.combinations(range(n), u_len):
        t = u = 0
        s = 0.0
        for i in range(n):
            if i in label_slots:
                s += float(lp[t, u, y[u]])
                u += 1
            else:
                s += float(lp[t, u, blank])
                t += 1
        s += float(lp[t, u, blank])
        assert t == t_len - 1 and u == u_len
        total.append(s)
    m = max(total)
    return -(m + math.log(sum(math.exp(v - m) for v in total)))


def _case(seed: int = 0, b: int = 3, t: int = 4, u: int = 3, v: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, u + 1, v, generator=g) * 2
    targets = torch.randint(1, v, (b, u), generator=g)
    t_lens = torch.tensor([t, max(t - 1, 1), max(t - 3, 1)][:b])
    u_lens = torch.tensor([u, max(u - 1, 0), 0][:b])
    return logits, targets, t_lens, u_lens


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("blank", [0, 2])
def test_matches_brute_force_with_variable_lengths(seed: int, blank: int) -> None:
    logits, targets, t_lens, u_lens = _case(seed)
    targets[targets == blank] = 1 if blank != 1 else 3
    nll = rnnt_loss(logits, targets, t_lens, u_lens, blank=blank, reduction="none")
    for b in range(logits.size(0)):
        want = _brute_nll(logits[b], targets[b, : int(u_lens[b])].tolist(), int(t_lens[b]), blank)
        assert abs(float(nll[b]) - want) < 1e-4, (b, float(nll[b]), want)


def test_padding_beyond_lengths_is_ignored() -> None:
    logits, targets, t_lens, u_lens = _case(3)
    a = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none")
    noisy = logits.clone()
    noisy[1, int(t_lens[1]) :] += 50.0
    noisy[1, :, int(u_lens[1]) + 1 :] -= 50.0
    t2 = targets.clone()
    t2[1, int(u_lens[1]) :] = 4
    b = rnnt_loss(noisy, t2, t_lens, u_lens, reduction="none")
    torch.testing.assert_close(a, b)


def test_reductions() -> None:
    logits, targets, t_lens, u_lens = _case(4)
    none = rnnt_loss(logits, targets, t_lens, u_lens, reduction="none")
    torch.testing.assert_close(rnnt_loss(logits, targets, t_lens, u_lens, reduction="sum"), none.sum())
    torch.testing.assert_close(rnnt_loss(logits, targets, t_lens, u_lens), none.mean())


def test_gradcheck_float64() -> None:
    logits, targets, t_lens, u_lens = _case(5, b=3, t=4, u=2, v=3)  # incl. T_b=1, U_b=0
    x = logits.double().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: rnnt_loss(z, targets, t_lens, u_lens, reduction="sum"), (x,))


def test_gradient_of_probabilities_sums_to_zero_per_cell() -> None:
    # d loss / d logits sums to zero over the vocabulary (softmax invariance to a shift)
    logits, targets, t_lens, u_lens = _case(6)
    x = logits.clone().requires_grad_(True)
    rnnt_loss(x, targets, t_lens, u_lens, reduction="sum").backward()
    torch.testing.assert_close(x.grad.sum(-1), torch.zeros_like(x.grad.sum(-1)), atol=1e-5, rtol=0)


def test_from_parts_equals_full_logits() -> None:
    torch.manual_seed(0)
    b, t, u, v = 3, 9, 4, 7
    joiner = Joiner(6, 5, 8, v)
    enc = torch.randn(b, t, 6, requires_grad=True)
    pred = torch.randn(b, u + 1, 5, requires_grad=True)
    targets = torch.randint(1, v, (b, u))
    t_lens, u_lens = torch.tensor([9, 7, 2]), torch.tensor([4, 2, 0])
    full = rnnt_loss(joiner(enc[:, :, None], pred[:, None]), targets, t_lens, u_lens, reduction="sum")
    g_full = torch.autograd.grad(full, [enc, pred, joiner.out.weight])
    parts = rnnt_loss_from_parts(enc, pred, joiner, targets, t_lens, u_lens, reduction="sum", frames_per_chunk=4)
    g_parts = torch.autograd.grad(parts, [enc, pred, joiner.out.weight])
    torch.testing.assert_close(parts, full)
    for a, c in zip(g_full, g_parts):
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_bad_input_names_the_field() -> None:
    logits, targets, t_lens, u_lens = _case(7)
    with pytest.raises(ValueError, match="logit_lens"):
        rnnt_loss(logits, targets, t_lens + 10, u_lens)
    with pytest.raises(ValueError, match="target_lens"):
        rnnt_loss(logits, targets, t_lens, u_lens + 10)
    with pytest.raises(ValueError, match="targets"):
        rnnt_loss(logits, targets + 100, t_lens, u_lens)
    with pytest.raises(ValueError, match="reduction"):
        rnnt_loss(logits, targets, t_lens, u_lens, reduction="avg")
    with pytest.raises(ValueError, match="logits"):
        rnnt_loss(logits[0], targets, t_lens, u_lens)

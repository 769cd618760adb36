"""RNN-T loss in pure PyTorch (torchaudio is unusable here; autograd provides the backward).

Forward variable ``alpha[t, u]`` = log-prob of having emitted ``u`` labels by frame ``t``:
``alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + label[t, u-1])``.
We loop over frames; inside a frame the recursion over ``u`` is linear in probability space,
so it is solved in closed form: with ``c[u] = sum_{k<u} label[t, k]`` and ``a[u]`` the
contribution from the previous frame, ``alpha[t, u] = c[u] + logcumsumexp(a - c)[u]``.
Only the blank and label log-probs are kept ([B, T, U+1] and [B, T, U]), never [B, T, U+1, V]
beyond the one log-softmax (``rnnt_loss_from_parts`` avoids even that).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

REDUCTIONS = ("mean", "sum", "none")


def _check(t_max: int, u: int, targets: Tensor, logit_lens: Tensor, target_lens: Tensor,
           vocab: int, blank: int, reduction: str) -> None:
    b = targets.size(0)
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if targets.dim() != 2 or targets.size(1) != u:
        raise ValueError(f"targets must be [B, U] with U={u}, got {tuple(targets.shape)}")
    if logit_lens.shape != (b,) or target_lens.shape != (b,):
        raise ValueError(f"logit_lens and target_lens must be [B={b}], got "
                         f"{tuple(logit_lens.shape)} and {tuple(target_lens.shape)}")
    if b and (int(logit_lens.min()) < 1 or int(logit_lens.max()) > t_max):
        raise ValueError(f"logit_lens must be in 1..T={t_max}, got min {int(logit_lens.min())}, "
                         f"max {int(logit_lens.max())}")
    if b and (int(target_lens.min()) < 0 or int(target_lens.max()) > u):
        raise ValueError(f"target_lens must be in 0..U={u}, got {target_lens.tolist()}")
    if targets.numel() and (int(targets.min()) < 0 or int(targets.max()) >= vocab):
        raise ValueError(f"targets must be token ids in 0..{vocab - 1}")
    if not 0 <= blank < vocab:
        raise ValueError(f"blank={blank} is outside the vocabulary of {vocab}")


def _gather_lp(logits: Tensor, targets: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """log_softmax once, keep ``blank [B, T, U+1]`` and ``label [B, T, U]`` log-probs."""
    lp = torch.log_softmax(logits, dim=-1)
    b, t, u1, _ = lp.shape
    blank_lp = lp[..., blank]
    idx = targets[:, None, :, None].expand(b, t, u1 - 1, 1)
    label_lp = lp[:, :, : u1 - 1].gather(-1, idx).squeeze(-1)
    return blank_lp, label_lp


def rnnt_nll_from_logprobs(blank_lp: Tensor, label_lp: Tensor, logit_lens: Tensor, target_lens: Tensor) -> Tensor:
    """Per-utterance negative log-likelihood ``[B]`` from gathered log-probs."""
    b, t_max, u1 = blank_lp.shape
    neg = torch.finfo(blank_lp.dtype).min / 4  # "log 0" that keeps gradients finite
    a = torch.full((b, u1), neg, dtype=blank_lp.dtype, device=blank_lp.device)
    a[:, 0] = 0.0
    zero = blank_lp.new_zeros(b, 1)
    alphas = []
    alpha = a
    for t in range(t_max):
        if t > 0:
            a = alpha + blank_lp[:, t - 1]
        c = torch.cat([zero, torch.cumsum(label_lp[:, t], dim=-1)], dim=-1)
        alpha = c + torch.logcumsumexp(a - c, dim=-1)
        alphas.append(alpha)
    all_alpha = torch.stack(alphas, dim=1)  # [B, T, U+1]
    rows = torch.arange(b, device=blank_lp.device)
    t_last = (logit_lens - 1).long()
    u_last = target_lens.long()
    return -(all_alpha[rows, t_last, u_last] + blank_lp[rows, t_last, u_last])


def _reduce(nll: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return nll.mean()
    if reduction == "sum":
        return nll.sum()
    return nll


def rnnt_loss(logits: Tensor, targets: Tensor, logit_lens: Tensor, target_lens: Tensor,
              blank: int = 0, reduction: str = "mean") -> Tensor:
    """RNN-T negative log-likelihood.

    ``logits [B, T, U+1, V]`` (unnormalised), ``targets [B, U]`` (padding ignored),
    ``logit_lens [B]`` in 1..T, ``target_lens [B]`` in 0..U. ``reduction="mean"`` averages the
    per-utterance NLL over the batch, ``"sum"`` adds it, ``"none"`` returns ``[B]``.
    """
    if logits.dim() != 4:
        raise ValueError(f"logits must be [B, T, U+1, V], got {tuple(logits.shape)}")
    b, t_max, u1, v = logits.shape
    _check(t_max, u1 - 1, targets, logit_lens, target_lens, v, blank, reduction)
    blank_lp, label_lp = _gather_lp(logits, targets, blank)
    return _reduce(rnnt_nll_from_logprobs(blank_lp, label_lp, logit_lens, target_lens), reduction)


def rnnt_loss_from_parts(enc: Tensor, pred: Tensor, joiner: Callable[[Tensor, Tensor], Tensor],
                         targets: Tensor, enc_lens: Tensor, target_lens: Tensor, blank: int = 0,
                         reduction: str = "mean", frames_per_chunk: int = 16) -> Tensor:
    """Same loss from ``enc [B, T, D]``, ``pred [B, U+1, P]`` and ``joiner(enc, pred) -> logits``.

    Logits are built ``frames_per_chunk`` frames at a time under activation checkpointing, so
    peak memory holds one chunk's ``[B, chunk, U+1, V]`` instead of the whole lattice (for large
    vocabularies); the chunk is recomputed in backward.
    """
    if enc.dim() != 3 or pred.dim() != 3 or enc.size(0) != pred.size(0):
        raise ValueError(f"enc must be [B, T, D] and pred [B, U+1, P], got {tuple(enc.shape)}, {tuple(pred.shape)}")
    if frames_per_chunk < 1:
        raise ValueError(f"frames_per_chunk must be >= 1, got {frames_per_chunk}")
    t_max, u1 = enc.size(1), pred.size(1)

    def piece(e: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return _gather_lp(joiner(e.unsqueeze(2), p.unsqueeze(1)), targets, blank)

    blanks, labels = [], []
    for t0 in range(0, t_max, frames_per_chunk):
        e = enc[:, t0 : t0 + frames_per_chunk]
        if t0 == 0:  # the vocabulary size is only known from the joiner's output
            first = joiner(e[:1, :1].unsqueeze(2), pred[:1, :1].unsqueeze(1))
            _check(t_max, u1 - 1, targets, enc_lens, target_lens, first.size(-1), blank, reduction)
        if torch.is_grad_enabled():
            bl, la = checkpoint(piece, e, pred, use_reentrant=False)
        else:
            bl, la = piece(e, pred)
        blanks.append(bl)
        labels.append(la)
    nll = rnnt_nll_from_logprobs(torch.cat(blanks, 1), torch.cat(labels, 1), enc_lens, target_lens)
    return _reduce(nll, reduction)

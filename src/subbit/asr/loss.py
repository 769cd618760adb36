"""RNN-T loss in pure PyTorch (torchaudio cannot be imported with torch 2.13 on CPU).

Forward variable ``alpha[t, u]`` = log-prob of having emitted ``u`` labels by frame ``t``:
``alpha[t, u] = logaddexp(alpha[t-1, u] + blank[t-1, u], alpha[t, u-1] + label[t, u-1])``.
We loop over frames; inside a frame the recursion over ``u`` is linear in probability space,
so it is solved in closed form: with ``c[u] = sum_{k<u} label[t, k]`` and ``a[u]`` the
contribution from the previous frame, ``alpha[t, u] = c[u] + logcumsumexp(a - c)[u]``.
The backward is analytic (backward variables beta, same trick reversed over ``u``), and only
the blank and label log-probs ([B, T, U+1] and [B, T, U]) are ever formed: the log-softmax over
the vocabulary is not materialised (``rnnt_loss_from_parts`` also avoids keeping the logits).
"""

from __future__ import annotations

from typing import Any, Callable

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


class _GatherLogProbs(torch.autograd.Function):
    """``log_softmax(logits)`` gathered at ``idx`` without materialising the log-softmax.

    Forward keeps only ``logsumexp`` ([B, T, U+1]); backward writes the logits gradient in one
    pass: ``-softmax * sum(grad) + scatter(grad)``. Autograd's version would allocate several
    [B, T, U+1, V] tensors (log-softmax, two zero-filled scatter targets, their sum).
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, idx: Tensor) -> Tensor:
        lse = torch.logsumexp(logits, dim=-1, keepdim=True)
        ctx.save_for_backward(logits, lse, idx)
        return logits.gather(-1, idx) - lse

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        logits, lse, idx = ctx.saved_tensors
        g = torch.sub(logits, lse).exp_()
        g.mul_(-grad.sum(-1, keepdim=True))
        g.scatter_add_(-1, idx, grad)
        return g, None


def _gather_lp(logits: Tensor, targets: Tensor, blank: int) -> tuple[Tensor, Tensor]:
    """Blank log-probs ``[B, T, U+1]`` and label log-probs ``[B, T, U]`` from logits."""
    b, t, u1, _ = logits.shape
    lab = torch.cat([targets, targets.new_full((b, 1), blank)], dim=1)  # last column unused
    idx = torch.stack([torch.full_like(lab, blank), lab], dim=-1)[:, None].expand(b, t, u1, 2)
    lp = _GatherLogProbs.apply(logits, idx.contiguous())
    return lp[..., 0], lp[:, :, : u1 - 1, 1]


def _log_zero(dtype: torch.dtype, steps: int) -> float:
    """A "log 0" that stays finite even when added up ``steps`` times (no inf - inf = NaN)."""
    return torch.finfo(dtype).min / (4.0 * (steps + 2))


class _Alpha(torch.autograd.Function):
    """Forward variables by the frame loop; backward from the backward variables (beta).

    ``d nll / d blank[t, u] = -exp(alpha[t, u] + blank[t, u] + beta[t+1, u] - logZ)`` and
    ``d nll / d label[t, u] = -exp(alpha[t, u] + label[t, u] + beta[t, u+1] - logZ)``; beta is
    solved per frame like alpha (reversed over u). Per frame this is ~5 tensor ops each way,
    instead of an autograd graph through every frame's ops.
    """

    @staticmethod
    def forward(ctx: Any, blank_lp: Tensor, label_lp: Tensor, t_lens: Tensor, u_lens: Tensor) -> Tensor:
        b, t_max, u1 = blank_lp.shape
        neg = _log_zero(blank_lp.dtype, t_max + u1)
        # c[t, u] = sum_{k<u} label[t, k]: alpha[t] = c + logcumsumexp(a - c) with a from frame t-1
        c = torch.cat([blank_lp.new_zeros(b, t_max, 1), torch.cumsum(label_lp, dim=2)], dim=2)
        alphas = blank_lp.new_empty(b, t_max, u1)
        a = torch.full((b, u1), neg, dtype=blank_lp.dtype, device=blank_lp.device)
        a[:, 0] = 0.0
        for t in range(t_max):
            if t > 0:
                a = alphas[:, t - 1] + blank_lp[:, t - 1]
            torch.add(c[:, t], torch.logcumsumexp(a - c[:, t], dim=1), out=alphas[:, t])
        rows = torch.arange(b, device=blank_lp.device)
        t_last, u_last = t_lens.long() - 1, u_lens.long()
        log_z = alphas[rows, t_last, u_last] + blank_lp[rows, t_last, u_last]
        ctx.save_for_backward(blank_lp, label_lp, t_lens, u_lens, alphas, log_z)
        return -log_z

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None, None]:
        blank_lp, label_lp, t_lens, u_lens, alphas, log_z = ctx.saved_tensors
        b, t_max, u1 = blank_lp.shape
        u_max = u1 - 1
        dt, dev = blank_lp.dtype, blank_lp.device
        neg = _log_zero(dt, t_max + u1)
        t_lens, u_lens = t_lens.long(), u_lens.long()
        t_idx = torch.arange(t_max, device=dev)[None, :, None]
        u_idx = torch.arange(u1, device=dev)[None, None, :]
        tl, ul = t_lens[:, None, None], u_lens[:, None, None]
        u_ok = u_idx <= ul  # [B, 1, U+1]
        lab_ok = (u_idx[..., :u_max] < ul) & (t_idx < tl)  # [B, T, U]
        # beta[t+1] enters frame t as keep * beta_next + over: the end state after frame T_b - 1
        # is log 1 at u = U_b, and every frame from T_b - 1 on ignores what comes after it.
        keep = (t_idx < tl - 1).to(dt)  # [B, T, 1]
        over = torch.full((b, t_max, u1), neg, dtype=dt, device=dev)
        over.masked_fill_(((t_idx == tl - 1) & (u_idx == ul)) | (t_idx < tl - 1), 0.0)
        blank_m = blank_lp.masked_fill(~u_ok, neg)
        label_m = label_lp.masked_fill(~lab_ok, 0.0)
        # reversed over u: d_r[t, j] = sum of labels from u = U - j to U - 1
        d_r = torch.cat([blank_lp.new_zeros(b, t_max, 1), torch.cumsum(torch.flip(label_m, [2]), 2)], 2)
        blank_r, over_r = torch.flip(blank_m, [2]), torch.flip(over, [2])
        betas_r = torch.empty_like(blank_lp)
        bvecs_r = torch.empty_like(blank_lp)
        beta_next = blank_lp.new_zeros(b, u1)
        for t in range(t_max - 1, -1, -1):
            bn = torch.addcmul(over_r[:, t], beta_next, keep[:, t])
            torch.add(blank_r[:, t], bn, out=bvecs_r[:, t])
            dt_ = d_r[:, t]
            torch.add(dt_, torch.logcumsumexp(bvecs_r[:, t] - dt_, dim=1), out=betas_r[:, t])
            beta_next = betas_r[:, t]
        bvecs, betas = torch.flip(bvecs_r, [2]), torch.flip(betas_r, [2])
        scale = (-grad)[:, None, None]
        nz = log_z[:, None, None]
        live = (t_idx < tl) & u_ok
        g_blank = torch.where(live, torch.exp(alphas + bvecs - nz), 0.0) * scale
        g_label = torch.where(lab_ok, torch.exp(alphas[..., :u_max] + label_lp + betas[..., 1:] - nz), 0.0) * scale
        return g_blank, g_label, None, None


def rnnt_nll_from_logprobs(blank_lp: Tensor, label_lp: Tensor, logit_lens: Tensor, target_lens: Tensor) -> Tensor:
    """Per-utterance negative log-likelihood ``[B]`` from gathered log-probs."""
    return _Alpha.apply(blank_lp, label_lp, logit_lens, target_lens)


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
    if t_max == 0:
        raise ValueError("enc has no frames (T=0)")

    def piece(e: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        return _gather_lp(joiner(e.unsqueeze(2), p.unsqueeze(1)), targets, blank)

    blanks, labels = [], []
    for t0 in range(0, t_max, frames_per_chunk):
        e = enc[:, t0 : t0 + frames_per_chunk]
        if t0 == 0:  # the vocabulary size is only known from the joiner's output
            with torch.no_grad():
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

"""Transducer decoding: batched greedy search, modified beam search, streaming greedy decoding.

The decoders only use ``model.predictor.{init_state, step}`` and
``model.joiner.{project_enc, project_pred, join}``, so they work with any encoder and stay
valid when quantization wraps the layers. Each encoder frame and each new token is projected
into the joiner space once.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from .models.transducer import state_index, state_select

METHODS = ("greedy", "beam")


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Decode without dropout, then give the model back in the mode it came in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class _Greedy:
    """Batched greedy state: predictor output/state per row and the tokens emitted so far."""

    def __init__(self, model: nn.Module, batch: int, max_symbols_per_frame: int) -> None:
        if max_symbols_per_frame < 1:
            raise ValueError(f"max_symbols_per_frame must be >= 1, got {max_symbols_per_frame}")
        self.model = model
        self.blank = int(model.blank)
        self.max_symbols = max_symbols_per_frame
        dev = next(model.parameters()).device
        start = torch.full((batch,), self.blank, dtype=torch.long, device=dev)
        out, self.state = model.predictor.step(start, model.predictor.init_state(batch))
        self.pred_p = model.joiner.project_pred(out)
        self.hyps: list[list[int]] = [[] for _ in range(batch)]

    def advance(self, enc: Tensor, active: Tensor | None = None) -> None:
        """Consume encoder frames ``enc [B, T, D]``; ``active [B, T]`` marks frames inside each length."""
        joiner, predictor = self.model.joiner, self.model.predictor
        enc_p = joiner.project_enc(enc)
        for t in range(enc_p.size(1)):
            frame = enc_p[:, t]
            live = None if active is None else active[:, t]
            for _ in range(self.max_symbols):
                tok = joiner.join(frame, self.pred_p).argmax(dim=-1)
                emit = tok != self.blank
                if live is not None:
                    emit = emit & live
                if not bool(emit.any()):
                    break
                for b in emit.nonzero().flatten().tolist():
                    self.hyps[b].append(int(tok[b]))
                out, new_state = predictor.step(tok, self.state)
                self.state = state_select(emit, new_state, self.state)
                self.pred_p = torch.where(emit[:, None], joiner.project_pred(out), self.pred_p)


def _check_enc(enc: Tensor, enc_lens: Tensor) -> None:
    if enc.dim() != 3:
        raise ValueError(f"enc must be [B, T, D], got {tuple(enc.shape)}")
    if enc_lens.shape != (enc.size(0),):
        raise ValueError(f"enc_lens must be [B={enc.size(0)}], got {tuple(enc_lens.shape)}")


@torch.no_grad()
def greedy_search(model: nn.Module, enc: Tensor, enc_lens: Tensor, max_symbols_per_frame: int = 3) -> list[list[int]]:
    """Best token per step; up to ``max_symbols_per_frame`` non-blank tokens per frame."""
    _check_enc(enc, enc_lens)
    with _eval_mode(model):
        g = _Greedy(model, enc.size(0), max_symbols_per_frame)
        active = torch.arange(enc.size(1), device=enc.device)[None, :] < enc_lens[:, None]
        g.advance(enc, active)
    return g.hyps


@torch.no_grad()
def modified_beam_search(model: nn.Module, enc: Tensor, enc_lens: Tensor, beam: int = 4) -> list[list[int]]:
    """Beam search with at most one symbol per frame; hypotheses with equal tokens are merged
    (their probabilities added). Returns the highest-scoring token sequence per utterance."""
    _check_enc(enc, enc_lens)
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    with _eval_mode(model):
        return [_beam_one(model, enc[b, : int(enc_lens[b])], beam) for b in range(enc.size(0))]


def _beam_one(model: nn.Module, enc: Tensor, beam: int) -> list[int]:
    joiner, predictor, blank = model.joiner, model.predictor, int(model.blank)
    enc_p = joiner.project_enc(enc)  # [T, J]
    start = torch.full((1,), blank, dtype=torch.long, device=enc.device)
    out, state = predictor.step(start, predictor.init_state(1))
    # hyps: tokens -> (log score, pred_p [J], state with batch 1)
    hyps: dict[tuple[int, ...], tuple[float, Tensor, Any]] = {(): (0.0, joiner.project_pred(out)[0], state)}
    for t in range(enc_p.size(0)):
        keys = list(hyps)
        scores = torch.tensor([hyps[k][0] for k in keys], dtype=enc_p.dtype, device=enc.device)
        pred_p = torch.stack([hyps[k][1] for k in keys])
        logp = torch.log_softmax(joiner.join(enc_p[t][None], pred_p), dim=-1)
        total = (scores[:, None] + logp).flatten()
        vocab = logp.size(1)
        top = torch.topk(total, min(beam, total.numel()))
        new: dict[tuple[int, ...], list[Any]] = {}
        expand: list[tuple[tuple[int, ...], int, int]] = []
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            i, tok = divmod(flat, vocab)
            key = keys[i] if tok == blank else keys[i] + (tok,)
            if key in new:
                new[key][0] = _logaddexp(new[key][0], score)
            elif tok == blank or key in hyps:  # same tokens -> same predictor output
                src = hyps[key]
                new[key] = [score, src[1], src[2]]
            else:
                new[key] = [score, None, None]
                expand.append((key, i, tok))
        if expand:
            toks = torch.tensor([tok for _, _, tok in expand], device=enc.device)
            batch_state = _stack_states([hyps[keys[i]][2] for _, i, _ in expand])
            out, new_state = predictor.step(toks, batch_state)
            proj = joiner.project_pred(out)
            for j, (key, _, _) in enumerate(expand):
                new[key][1] = proj[j]
                new[key][2] = state_index(new_state, torch.tensor([j], device=enc.device))
        hyps = {k: (v[0], v[1], v[2]) for k, v in new.items()}
    best = max(hyps.items(), key=lambda kv: kv[1][0])
    return list(best[0])


def _logaddexp(a: float, b: float) -> float:
    m = max(a, b)
    return m + math.log(math.exp(a - m) + math.exp(b - m))


def _stack_states(states: list[Any]) -> Any:
    """Concatenate batch-1 state trees along the batch dimension."""
    first = states[0]
    if isinstance(first, Tensor):
        return torch.cat(states, dim=0)
    if isinstance(first, dict):
        return {k: _stack_states([s[k] for s in states]) for k in first}
    if isinstance(first, (list, tuple)):
        return type(first)(_stack_states(list(items)) for items in zip(*states))
    return first


class StreamingGreedyDecoder:
    """Greedy decoding of one utterance fed chunk by chunk (batch 1).

    ``accept_features`` may get any number of frames; the encoder buffers what it cannot use yet
    (a partial stack, or a partial attention chunk for the Conformer). The result equals
    ``greedy_search`` on the whole utterance.
    """

    def __init__(self, model: nn.Module, max_symbols_per_frame: int = 3) -> None:
        self.model = model
        self.max_symbols = max_symbols_per_frame
        self.reset()

    def reset(self) -> None:
        self.enc_state = self.model.encoder.init_state(1)
        with torch.no_grad(), _eval_mode(self.model):
            self.greedy = _Greedy(self.model, 1, self.max_symbols)
        self.finished = False

    @torch.no_grad()
    def accept_features(self, chunk_feats: Tensor, pathway_mask: Tensor | None = None) -> list[int]:
        """Feed ``[1, t, F]`` features; returns the tokens decoded so far (partial result).
        ``pathway_mask [1, t]``: bifocal encoders only (True = small pathway)."""
        if self.finished:
            raise ValueError("accept_features after finalize(); call reset() to start a new utterance")
        if chunk_feats.dim() != 3 or chunk_feats.size(0) != 1:
            raise ValueError(f"chunk_feats must be [1, t, F], got {tuple(chunk_feats.shape)}")
        with _eval_mode(self.model):
            enc, self.enc_state = (self.model.encoder.step(chunk_feats, self.enc_state) if pathway_mask is None
                                   else self.model.encoder.step(chunk_feats, self.enc_state, pathway_mask))
            if enc.size(1):
                self.greedy.advance(enc)
        return list(self.greedy.hyps[0])

    @torch.no_grad()
    def finalize(self) -> list[int]:
        """End of utterance: decode what the encoder still holds; returns the final tokens."""
        if not self.finished:
            with _eval_mode(self.model):
                enc, self.enc_state = self.model.encoder.flush(self.enc_state)
                if enc.size(1):
                    self.greedy.advance(enc)
            self.finished = True
        return list(self.greedy.hyps[0])


@torch.no_grad()
def decode_batch(model: nn.Module, feats: Tensor, feat_lens: Tensor, method: str = "greedy",
                 beam: int = 4, max_symbols_per_frame: int = 3,
                 pathway_mask: Tensor | None = None) -> list[list[int]]:
    """Encode a padded batch and decode it (``method`` = "greedy" or "beam"); ``pathway_mask``
    ``[B, T]`` only for encoders with a per-frame pathway choice (bifocal)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    with _eval_mode(model):
        enc, enc_lens = (model.encoder(feats, feat_lens) if pathway_mask is None
                         else model.encoder(feats, feat_lens, pathway_mask=pathway_mask))
    if method == "greedy":
        return greedy_search(model, enc, enc_lens, max_symbols_per_frame)
    return modified_beam_search(model, enc, enc_lens, beam)
